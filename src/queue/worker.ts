/**
 * `sam worker`: a BullMQ Worker on this thread (Redis, job locks, states, retries) and the model
 * in a job thread (job-thread.ts), so the generator's CPU work never delays lock renewal.
 *
 * Delivery is at least once: a job whose worker died (lock expired) is put back by another
 * worker's stalled-job check and runs again. Outputs are atomic (temp + rename) and a job whose
 * outputs are already complete is a cheap skip, so running twice writes nothing twice.
 */
import { stat } from 'node:fs/promises';
import { DelayedError, UnrecoverableError, Worker, type Job } from 'bullmq';
import type { DecoderChoice } from '../engine/model.js';
import { openModel } from '../hub/resolve.js';
import { SamError, errorMessage, modelError, usageError } from '../util/errors.js';
import type { ImageOutcome } from './job-protocol.js';
import { JobThread } from './job-thread-client.js';
import { SamQueue } from './queue.js';
import { connectForever, type RedisTarget } from './redis.js';
import { imagePathOf, settingsDigest, type ImageJobData } from './settings.js';

export interface WorkerRunOptions {
  target: RedisTarget;
  queue: string;
  model: string;
  /** This machine's path of the queue's output folder (default: the one stored). */
  outDir?: string;
  /** This machine's path of the queue's input root (default: the one stored). */
  inputRoot?: string;
  jobs: number;
  threads: number;
  decoder: DecoderChoice;
  pipeline: boolean;
  /** BullMQ's lockDuration and stalledInterval (ms): how soon a dead worker's job runs again. */
  lockDuration: number;
  stalledInterval: number;
  /** Exit 0 once nothing is waiting, delayed or active. */
  exitWhenEmpty: boolean;
  quiet: boolean;
  log: (line: string) => void;
}

export interface WorkerSummary {
  done: number;
  skipped: number;
  failed: number;
  seconds: number;
  /** Why the worker stopped early (queue recreated, job thread died), as an error; undefined on a clean stop. */
  stopError?: Error;
}

/** A job whose worker died this many times fails (it may be what kills them, e.g. memory). */
const MAX_STALLED_COUNT = 2;

async function checkFolder(path: string, what: string, flag: string): Promise<void> {
  const st = await stat(path).catch(() => undefined);
  if (!st?.isDirectory()) throw usageError(`the queue's ${what} ${path} does not exist on this machine; mount the shared folder there or pass ${flag} with its path here`);
}

export async function runWorker(o: WorkerRunOptions): Promise<WorkerSummary> {
  const client = await connectForever(o.target);
  const q = await SamQueue.open(o.target, o.queue, client);
  let thread: JobThread | undefined;
  try {
    const settings = await q.requireSettings();
    const model = await openModel(o.model, { threads: o.threads });
    const id = await model.id();
    if (id !== settings.modelId) {
      throw modelError(
        `queue '${o.queue}' holds jobs for model ${settings.modelId} (${settings.model}) but --model ${o.model} is ${id}; start the worker with that model, or add the images to another --queue with this one`,
      );
    }
    const inputRoot = o.inputRoot ?? settings.inputRoot;
    await checkFolder(inputRoot, 'input folder', '--input-root');
    const outDir = o.outDir ?? settings.outDir;
    const digest = settingsDigest(settings);

    let stopping: Promise<void> | undefined;
    let stopError: Error | undefined;
    let worker: Worker<ImageJobData, ImageOutcome> | undefined;
    const stop = (why?: Error): Promise<void> => {
      if (why && !stopError) stopError = why;
      // BullMQ's close waits for the images in progress; their results are saved first.
      stopping ??= (async () => {
        await worker?.close();
        await thread?.close();
      })();
      return stopping;
    };

    thread = await JobThread.start({ modelDir: model.dir, threads: o.threads, decoder: o.decoder, pipeline: o.pipeline, settings, outDir }, (err) => {
      o.log(`sam worker: ${errorMessage(err)}; stopping (its jobs run again on another worker)`);
      void stop(err);
    });
    const jobThread = thread;

    const summary: WorkerSummary = { done: 0, skipped: 0, failed: 0, seconds: 0 };
    const started = performance.now();
    const processor = async (job: Job<ImageJobData, ImageOutcome>, token?: string): Promise<ImageOutcome> => {
      if (job.data.settings !== digest) {
        // The queue was cleaned and created again with other settings: leave the job to workers started for them.
        await job.moveToDelayed(Date.now() + 5000, token);
        void stop(usageError(`queue '${o.queue}' was created again with other settings while this worker ran; start the worker again`));
        throw new DelayedError();
      }
      try {
        return await jobThread.run(job.data.key, imagePathOf(job.data, inputRoot), job.attemptsStarted > 1);
      } catch (err) {
        // A bad image fails at once, with its message; anything else (I/O, a full disk) is retried with backoff.
        if (err instanceof SamError && err.kind === 'input') throw new UnrecoverableError(err.message);
        throw err;
      }
    };

    worker = new Worker<ImageJobData, ImageOutcome>(o.queue, processor, {
      connection: client,
      prefix: 'bull',
      concurrency: o.jobs,
      lockDuration: o.lockDuration,
      stalledInterval: o.stalledInterval,
      maxStalledCount: MAX_STALLED_COUNT,
      autorun: false,
    });

    const quietLog = (line: string) => {
      if (!o.quiet) o.log(line);
    };
    worker.on('completed', (job, r) => {
      summary[r.status]++;
      quietLog(`${r.status} ${job.data.key} (${r.masks} masks, ${(r.ms / 1000).toFixed(2)} s)`);
    });
    worker.on('failed', (job, err) => {
      if (err instanceof DelayedError || err.name === 'DelayedError') return;
      const final = !job || err instanceof UnrecoverableError || err.name === 'UnrecoverableError' || job.attemptsMade >= (job.opts.attempts ?? 1);
      if (final) summary.failed++;
      const what = job ? `${job.data.key}` : 'a job';
      o.log(final ? `failed ${what}: ${err.message}` : `retrying ${what} (attempt ${job!.attemptsMade} failed: ${err.message})`);
    });
    worker.on('stalled', (jobId) => quietLog(`sam worker: job ${jobId} stalled (its worker stopped or lost Redis); it runs again`));

    // Redis outages: one line when it goes, one when it is back; BullMQ and ioredis reconnect.
    let down = false;
    const lost = (err: unknown) => {
      if (down || stopping) return;
      down = true;
      o.log(`sam worker: lost Redis at ${o.target.shown} (${errorMessage(err) || 'connection closed'}); reconnecting, images in progress carry on`);
    };
    client.on('error', lost);
    worker.on('error', lost);
    client.on('ready', () => {
      if (!down) return;
      down = false;
      o.log(`sam worker: Redis at ${o.target.shown} is back; carrying on`);
    });

    const onSignal = (signal: NodeJS.Signals) => {
      if (stopping) {
        o.log(`sam worker: ${signal} again; exiting now (the images in progress run again on another worker)`);
        process.exit(130);
      }
      o.log(`sam worker: ${signal}: taking no more jobs, finishing the images in progress`);
      void stop();
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);

    let emptyTimer: NodeJS.Timeout | undefined;
    if (o.exitWhenEmpty) {
      const check = async () => {
        if (stopping) return;
        try {
          const c = await q.counts();
          if (c.waiting + c.delayed + c.active + c.prioritized === 0) {
            quietLog('sam worker: the queue is empty; exiting');
            void stop();
            return;
          }
        } catch {
          // Redis away: the outage is reported by the client; try again.
        }
        emptyTimer = setTimeout(() => void check(), 1000);
      };
      emptyTimer = setTimeout(() => void check(), 1000);
    }

    const counts = await q.counts();
    o.log(
      `sam worker: queue '${o.queue}' on ${o.target.shown}: ${counts.waiting + counts.prioritized} waiting, ${counts.active} active, ${counts.completed} completed, ${counts.failed} failed; ` +
        `model ${id}, --jobs ${o.jobs} --threads ${o.threads}`,
    );
    const running = worker.run();
    await running.catch((err: unknown) => stop(err instanceof Error ? err : new Error(String(err))));
    await stop();
    if (emptyTimer) clearTimeout(emptyTimer);
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
    summary.seconds = (performance.now() - started) / 1000;
    summary.stopError = stopError;
    return summary;
  } finally {
    await thread?.close();
    await q.close();
  }
}
