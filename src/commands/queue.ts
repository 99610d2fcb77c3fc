/**
 * `sam queue add|status|failed|retry-failed|collect|clean`: a run of `sam auto` spread over
 * `sam worker` processes through a BullMQ queue in Redis (src/queue).
 */
import { resolve } from 'node:path';
import cliProgress from 'cli-progress';
import type { Command } from 'commander';
import { resolveAmgOptions } from '../amg/generator.js';
import { openModel } from '../hub/resolve.js';
import { collectInputs } from '../io/inputs.js';
import { AUTO_COCO_DESCRIPTION, writeAutoCoco } from '../pipeline/auto.js';
import { DEFAULT_QUEUE, SamQueue, checkQueueName, type JobCounts } from '../queue/queue.js';
import { parseRedisUrl, type RedisTarget } from '../queue/redis.js';
import { SETTINGS_VERSION, storeAmgOptions } from '../queue/settings.js';
import { SamError, errorMessage, modelError, usageError } from '../util/errors.js';
import { formatDuration } from '../util/format.js';
import { addAmgOptions, amgOptionsFrom, outputModeOf, type AmgCliOptions } from './auto-options.js';
import { parseFloatOption } from './common.js';

interface Where {
  redis: string;
  queue: string;
}

const REDIS_HELP = 'Redis server, e.g. redis://127.0.0.1:6379 or redis://:PASSWORD@HOST:6379/0';

/** --redis and --queue, on every queue command and on `sam worker`. */
export function addWhereOptions(cmd: Command): Command {
  return cmd.requiredOption('--redis <url>', REDIS_HELP).option('--queue <name>', 'queue name (one per run of settings)', DEFAULT_QUEUE);
}

/** Parse --redis/--queue, open the queue, run `f`, close. */
async function withQueue<T>(w: Where, f: (q: SamQueue, target: RedisTarget) => Promise<T>): Promise<T> {
  const target = parseRedisUrl(w.redis);
  checkQueueName(w.queue);
  const q = await SamQueue.open(target, w.queue);
  try {
    return await f(q, target);
  } finally {
    await q.close();
  }
}

const say = (line: string) => process.stderr.write(`${line}\n`);

export function registerQueue(program: Command): void {
  const queue = program
    .command('queue')
    .description('spread `sam auto` over many machines: a BullMQ queue in Redis, one job per image, run by `sam worker`')
    .addHelpText(
      'after',
      [
        '',
        'Examples:',
        '  sam queue add photos/ --redis redis://10.0.0.5:6379 --model models/sam_vit_b --out /shared/masks',
        '  sam worker --redis redis://10.0.0.5:6379 --model models/sam_vit_b     # on every machine',
        '  sam queue status --redis redis://10.0.0.5:6379 --watch',
        '  sam queue collect --redis redis://10.0.0.5:6379 --coco /shared/masks/dataset.json',
        '',
      ].join('\n'),
    );
  registerAdd(queue);
  registerStatus(queue);
  registerFailed(queue);
  registerRetryFailed(queue);
  registerCollect(queue);
  registerClean(queue);
}

// ---------------------------------------------------------------------------------------------
// sam queue add

type AddOptions = AmgCliOptions & Where & { model: string; out: string; quiet?: boolean };

function registerAdd(queue: Command): void {
  const cmd = queue
    .command('add')
    .description('add one job per image (job id = the image key, so adding a folder again adds only new images); the settings are stored with the queue')
    .argument('<inputs...>', 'image files, folders (walked recursively) or quoted glob patterns, as for sam auto');
  addWhereOptions(cmd)
    .requiredOption('-m, --model <dir>', 'the model the workers must run (its id is stored; workers with another model are refused)')
    .requiredOption('-o, --out <dir>', 'output folder, as for sam auto (on a filesystem the workers share)');
  addAmgOptions(cmd)
    .option('-q, --quiet', 'no summary line')
    .addHelpText(
      'after',
      [
        '',
        'Every sam auto option that decides the outputs is accepted and stored once with the queue; adding with',
        'other settings to a queue that has jobs is refused.',
        '',
        'Examples:',
        '  sam queue add photos/ --redis redis://127.0.0.1:6379 --model models/sam_vit_b --out masks/',
        '  sam queue add "data/**/*.jpg" --redis redis://10.0.0.5:6379 --queue coco-train --model sam_vit_b --out /shared/masks --crop-n-layers 1',
        '',
      ].join('\n'),
    )
    .action(async (inputs: string[], opts: AddOptions, c: Command) => queueAdd(inputs, opts, c));
}

async function queueAdd(inputs: string[], opts: AddOptions, cmd: Command): Promise<void> {
  const target = parseRedisUrl(opts.redis);
  checkQueueName(opts.queue);
  const model = await openModel(opts.model);
  // The family picks the generator's defaults and options, as in sam auto (SAM 2: pred_iou_thresh 0.8, --use-m2m, ...).
  const amg = resolveAmgOptions(await amgOptionsFrom(opts, cmd, model.family, `${opts.model} is a SAM (v1) model`));
  if ((amg.useM2m || amg.multimaskOutput === false) && !model.hasSam2SingleMaskDecoder) {
    // Refused here, not by every worker at start: the workers' model is this one.
    throw modelError(
      `${opts.model} has no SAM 2 single-mask decoder (samexporter exports only the multimask one), which ${amg.useM2m ? '--use-m2m' : '--no-multimask-output'} runs; convert the checkpoint with 'sam models convert' to get it, or drop the option`,
    );
  }
  const items = await collectInputs(inputs);
  const modelId = await model.id();
  await withQueue(opts, async (q) => {
    const settings = await q.adoptSettings(
      {
        version: SETTINGS_VERSION,
        modelId,
        model: opts.model,
        amg: storeAmgOptions(amg),
        outputMode: outputModeOf(opts),
        outDir: resolve(opts.out),
        overlayDir: opts.overlay ? resolve(opts.overlay) : null,
        embeddingsDir: opts.embeddings ? resolve(opts.embeddings) : null,
      },
      items.map((i) => i.path),
    );
    const { added, existing } = await q.addImages(items, settings);
    if (!opts.quiet) {
      say(`sam queue: added ${added} image(s) to queue '${q.name}' on ${target.shown}${existing > 0 ? `; ${existing} were already queued` : ''}`);
      if (added > 0) say(`sam queue: run them with: sam worker --redis ${target.shown} --queue ${q.name} --model ${opts.model}`);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// sam queue status

interface StatusOptions extends Where {
  json?: boolean;
  watch?: boolean;
  interval: number;
}

export interface QueueStatus extends JobCounts {
  queue: string;
  total: number;
  workers: number;
  /** Images per second over the last completed jobs (null when none finished in the last minute). */
  throughput: number | null;
  /** Seconds until waiting + active + delayed are done at that throughput. */
  etaSeconds: number | null;
}

/** Finishes this far apart count as one burst of work; older ones say nothing of today's speed. */
const THROUGHPUT_WINDOW = 50;

async function readStatus(q: SamQueue): Promise<QueueStatus> {
  const [counts, workers, finishes] = await Promise.all([q.counts(), q.workers(), q.recentFinishes(THROUGHPUT_WINDOW)]);
  const total = counts.waiting + counts.active + counts.delayed + counts.completed + counts.failed + counts.prioritized;
  const remaining = counts.waiting + counts.active + counts.delayed + counts.prioritized;
  let throughput: number | null = null;
  if (finishes.length >= 2 && Date.now() - finishes[0] < 60_000) {
    const span = (finishes[0] - finishes[finishes.length - 1]) / 1000;
    if (span > 0) throughput = (finishes.length - 1) / span;
  }
  const etaSeconds = throughput ? remaining / throughput : remaining === 0 ? 0 : null;
  return { queue: q.name, ...counts, total, workers, throughput, etaSeconds };
}

function statusLine(s: QueueStatus, target: RedisTarget): string {
  const speed = s.throughput ? `${s.throughput.toFixed(2)} images/s, ETA ${formatDuration(s.etaSeconds ?? 0)}` : 'no recent completions';
  return (
    `queue '${s.queue}' on ${target.shown}: ${s.waiting + s.prioritized} waiting, ${s.active} active, ${s.delayed} delayed, ` +
    `${s.completed} completed, ${s.failed} failed (of ${s.total}); ${s.workers} worker connection(s); ${speed}`
  );
}

function registerStatus(queue: Command): void {
  addWhereOptions(queue.command('status').description('job counts (waiting, active, delayed, completed, failed), throughput and ETA'))
    .option('--json', 'print one JSON object (with --watch: one per line)')
    .option('-w, --watch', 'keep printing until nothing is waiting, active or delayed (a progress bar on a terminal)')
    .option('--interval <s>', 'seconds between updates with --watch', parseFloatOption('--interval', 0.1, 3600), 2)
    .addHelpText('after', '\nExamples:\n  sam queue status --redis redis://127.0.0.1:6379\n  sam queue status --redis redis://127.0.0.1:6379 --json\n  sam queue status --redis redis://127.0.0.1:6379 --watch\n')
    .action(async (opts: StatusOptions) => queueStatus(opts));
}

async function queueStatus(opts: StatusOptions): Promise<void> {
  await withQueue(opts, async (q, target) => {
    await q.requireSettings();
    const print = (s: QueueStatus) => process.stdout.write(`${opts.json ? JSON.stringify(s) : statusLine(s, target)}\n`);
    if (!opts.watch) {
      print(await readStatus(q));
      return;
    }
    const tty = process.stderr.isTTY && !opts.json;
    let bar: cliProgress.SingleBar | undefined;
    for (;;) {
      const s = await readStatus(q);
      const finished = s.completed + s.failed;
      if (tty) {
        bar ??= new cliProgress.SingleBar(
          { stream: process.stderr, format: '{bar} {value}/{total} images | {active} active, {failed} failed | {rate} images/s | ETA {eta}', hideCursor: true },
          cliProgress.Presets.shades_classic,
        );
        const payload = { active: s.active, failed: s.failed, rate: s.throughput?.toFixed(2) ?? '-', eta: s.etaSeconds === null ? '-' : formatDuration(s.etaSeconds) };
        if (!bar.isActive) bar.start(s.total, finished, payload);
        bar.setTotal(s.total);
        bar.update(finished, payload);
      } else {
        print(s);
      }
      if (s.waiting + s.active + s.delayed + s.prioritized === 0) break;
      await new Promise((r) => setTimeout(r, opts.interval * 1000));
    }
    if (bar) {
      bar.stop();
      print(await readStatus(q));
    }
  });
}

// ---------------------------------------------------------------------------------------------
// sam queue failed / retry-failed

function registerFailed(queue: Command): void {
  addWhereOptions(queue.command('failed').description('list the failed images with their errors'))
    .option('--json', 'print a JSON array of {key, path, error, attempts}')
    .addHelpText('after', '\nExamples:\n  sam queue failed --redis redis://127.0.0.1:6379\n')
    .action(async (opts: Where & { json?: boolean }) =>
      withQueue(opts, async (q) => {
        const settings = await q.requireSettings();
        const all = [];
        // Failures are few (bad files); listing them whole keeps --json one document.
        for await (const f of q.failed(settings)) {
          if (opts.json) all.push(f);
          else process.stdout.write(`${f.error.startsWith(f.path) ? f.error : `${f.path}: ${f.error}`} (attempts: ${f.attempts})\n`);
        }
        if (opts.json) process.stdout.write(`${JSON.stringify(all)}\n`);
      }),
    );
}

function registerRetryFailed(queue: Command): void {
  addWhereOptions(queue.command('retry-failed').description('move every failed image back to waiting (after fixing the files or the disk)'))
    .addHelpText('after', '\nExamples:\n  sam queue retry-failed --redis redis://127.0.0.1:6379\n')
    .action(async (opts: Where) =>
      withQueue(opts, async (q) => {
        await q.requireSettings();
        const n = await q.retryFailed();
        say(n > 0 ? `sam queue: ${n} failed image(s) moved back to waiting; running workers take them` : 'sam queue: no failed images');
      }),
    );
}

// ---------------------------------------------------------------------------------------------
// sam queue collect

interface CollectOptions extends Where {
  coco: string;
  out?: string;
}

function registerCollect(queue: Command): void {
  addWhereOptions(queue.command('collect').description('write the COCO dataset of the completed images, as sam auto --coco does (in the order they were added)'))
    .requiredOption('--coco <file>', 'COCO dataset JSON to write')
    .option('-o, --out <dir>', "this machine's path of the queue's output folder (default: the one stored with the queue)")
    .addHelpText('after', '\nExamples:\n  sam queue collect --redis redis://127.0.0.1:6379 --coco masks/dataset.json\n')
    .action(async (opts: CollectOptions) =>
      withQueue(opts, async (q) => {
        const settings = await q.requireSettings();
        const counts = await q.counts();
        let res;
        try {
          res = await writeAutoCoco({ outDir: opts.out ? resolve(opts.out) : settings.outDir, outputMode: settings.outputMode }, q.imagesInOrder(settings), opts.coco, {
            description: AUTO_COCO_DESCRIPTION,
            model: settings.modelId,
          });
        } catch (err) {
          if (err instanceof SamError) throw err;
          throw new SamError('output', `--coco ${opts.coco}: cannot write the COCO dataset (${errorMessage(err)}); check the folder and free space`, { cause: err });
        }
        const pending = counts.waiting + counts.active + counts.delayed + counts.prioritized;
        say(
          `sam queue: COCO dataset ${opts.coco}: ${res.images} images, ${res.annotations} annotations` +
            (pending + counts.failed > 0 ? ` (left out: ${pending} not done yet, ${counts.failed} failed)` : ''),
        );
      }),
    );
}

// ---------------------------------------------------------------------------------------------
// sam queue clean

function registerClean(queue: Command): void {
  addWhereOptions(queue.command('clean').description('remove the queue: its jobs, states and settings (outputs on disk stay)'))
    .option('--force', 'also when workers are processing images (they then fail to record them)')
    .addHelpText('after', '\nExamples:\n  sam queue clean --redis redis://127.0.0.1:6379 --queue coco-train\n')
    .action(async (opts: Where & { force?: boolean }) =>
      withQueue(opts, async (q, target) => {
        const settings = await q.settings();
        const c = await q.counts();
        const jobs = Object.values(c).reduce((a, b) => a + b, 0);
        if (!settings && jobs === 0) {
          say(`sam queue: queue '${q.name}' on ${target.shown} does not exist; nothing to remove`);
          return;
        }
        if (c.active > 0 && !opts.force) {
          throw usageError(`queue '${q.name}' has ${c.active} image(s) in progress; stop its workers first (SIGTERM lets them finish) or add --force`);
        }
        await q.obliterate(opts.force ?? false);
        say(`sam queue: removed queue '${q.name}' on ${target.shown} (${jobs} jobs); the outputs${settings ? ` in ${settings.outDir}` : ''} stay`);
      }),
    );
}

