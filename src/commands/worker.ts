/** `sam worker`: take images from a `sam queue` and run `sam auto`'s code on each, until stopped. */
import { availableParallelism } from 'node:os';
import { resolve } from 'node:path';
import type { Command } from 'commander';
import { parseRedisUrl } from '../queue/redis.js';
import { checkQueueName } from '../queue/queue.js';
import { runWorker } from '../queue/worker.js';
import { addEngineOptions, type EngineCliOptions } from './auto-options.js';
import { parseIntOption } from './common.js';
import { EXIT, reportError } from './exit.js';
import { addWhereOptions } from './queue.js';

type WorkerOptions = EngineCliOptions & {
  redis: string;
  queue: string;
  model: string;
  out?: string;
  inputRoot?: string;
  jobs: number;
  threads?: number;
  lockDuration: number;
  stalledInterval: number;
  exitWhenEmpty?: boolean;
  quiet?: boolean;
};

export function registerWorker(program: Command, setExit: (code: number) => void): void {
  const cmd = program
    .command('worker')
    .description("process a queue's images (sam queue add) with sam auto's code until stopped; SIGTERM/SIGINT finish the images in progress and exit 0");
  addWhereOptions(cmd)
    .requiredOption('-m, --model <dir>', "model folder or pulled model name; must be the queue's model (same id)")
    .option('-o, --out <dir>', "this machine's path of the queue's output folder (default: the one stored with the queue)")
    .option('--input-root <dir>', "this machine's path of the queue's input folder (default: the one stored with the queue)")
    .option('-j, --jobs <n>', 'images in flight at once', parseIntOption('--jobs', 1, 64), 1)
    .option('-t, --threads <n>', 'onnxruntime threads per session (default: cores / jobs)', parseIntOption('--threads', 1, 1024));
  addEngineOptions(cmd)
    .option('--exit-when-empty', 'exit 0 once nothing is waiting, delayed or in progress (batch jobs: Kubernetes Job, Slurm)')
    .option('--lock-duration <ms>', "BullMQ lockDuration: a job whose worker stops renewing its lock this long is taken again", parseIntOption('--lock-duration', 1000), 30_000)
    .option('--stalled-interval <ms>', 'BullMQ stalledInterval: how often this worker looks for such jobs', parseIntOption('--stalled-interval', 100), 30_000)
    .option('-q, --quiet', 'no line per image (errors, failures and Redis outages still print)')
    .addHelpText(
      'after',
      [
        '',
        'Outputs are those of sam auto on the same images (byte for byte). A killed worker loses nothing: its',
        'images run again on another worker after --lock-duration. A bad image fails at once and is listed by',
        "'sam queue failed'; other errors are retried with backoff (5 tries).",
        '',
        'Examples:',
        '  sam worker --redis redis://10.0.0.5:6379 --model models/sam_vit_b',
        '  sam worker --redis redis://10.0.0.5:6379 --queue coco-train --model sam_vit_b --jobs 2 --threads 4',
        '',
      ].join('\n'),
    )
    .action(async (opts: WorkerOptions) => setExit(await worker(opts)));
}

async function worker(opts: WorkerOptions): Promise<number> {
  const target = parseRedisUrl(opts.redis);
  checkQueueName(opts.queue);
  const threads = opts.threads ?? Math.max(1, Math.floor(availableParallelism() / opts.jobs));
  const summary = await runWorker({
    target,
    queue: opts.queue,
    model: opts.model,
    outDir: opts.out ? resolve(opts.out) : undefined,
    inputRoot: opts.inputRoot ? resolve(opts.inputRoot) : undefined,
    jobs: opts.jobs,
    threads,
    decoder: opts.decoder,
    pipeline: opts.pipeline,
    lockDuration: opts.lockDuration,
    stalledInterval: opts.stalledInterval,
    exitWhenEmpty: opts.exitWhenEmpty ?? false,
    quiet: opts.quiet ?? false,
    log: (line) => process.stderr.write(`${line}\n`),
  });
  process.stderr.write(`sam worker: ${summary.done} done, ${summary.skipped} skipped, ${summary.failed} failed in ${summary.seconds.toFixed(1)} s\n`);
  // Failed images are the queue's record (sam queue failed), not this worker's failure.
  return summary.stopError ? reportError(summary.stopError) : EXIT.ok;
}
