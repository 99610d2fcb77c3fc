import { availableParallelism } from 'node:os';
import type { Command } from 'commander';
import { openModel } from '../hub/resolve.js';
import type { AmgOptions } from '../amg/generator.js';
import { STAGES, StageTimes } from '../core/timings.js';
import { SamError, errorMessage, usageError } from '../util/errors.js';
import type { OutputMode } from '../output/records.js';
import { AUTO_COCO_DESCRIPTION, autoImage, autoSetup, cleanStaleOutputs, writeAutoCoco } from '../pipeline/auto.js';
import { collectInputs, type InputImage } from '../io/inputs.js';
import type { SamModel } from '../engine/model.js';
import { AmgWorker } from '../engine/amg-worker-client.js';
import { sam2AmgDecoder } from '../engine/sam2-amg-predictor.js';
import { finishBatch, parseIntOption, runBatch } from './common.js';
import { addAmgOptions, addEngineOptions, amgOptionsFrom, outputModeOf, type AmgCliOptions, type EngineCliOptions } from './auto-options.js';

/** What commander hands the action: the shared generator and engine options, plus the run's own. */
type AutoOptions = AmgCliOptions &
  EngineCliOptions & {
    model: string;
    out: string;
    coco?: string;
    jobs: number;
    threads?: number;
    shard?: Shard;
    force?: boolean;
    quiet?: boolean;
  };

export interface Shard {
  index: number;
  count: number;
}

export function parseShard(value: string): Shard {
  const m = /^(\d+)\/(\d+)$/.exec(value.trim());
  const index = m ? Number(m[1]) : NaN;
  const count = m ? Number(m[2]) : NaN;
  if (!m || count < 1 || index >= count) {
    throw usageError(`--shard ${value}: expected i/n with 0 <= i < n, e.g. --shard 0/4 on the first of four machines`);
  }
  return { index, count };
}

/**
 * The images of shard i/n: position in the key-sorted input list modulo n, so every machine
 * given the same inputs (in any argument order) picks a disjoint share and together they cover
 * all. Processing order stays the input order.
 */
export function selectShard(items: readonly InputImage[], shard: Shard | undefined): InputImage[] {
  if (!shard) return [...items];
  const sorted = [...items].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  const mine = new Set(sorted.filter((_, i) => i % shard.count === shard.index));
  return items.filter((item) => mine.has(item));
}

const seconds = (ms: number): string => `${(ms / 1000).toFixed(2)} s`;

export function registerAuto(program: Command, setExit: (code: number) => void): void {
  const cmd = program
    .command('auto')
    .description('automatic mask generation ("segment everything") over images, folders or globs; COCO RLE JSON per image')
    .argument('<inputs...>', 'image files, folders (walked recursively) or quoted glob patterns ("data/**/*.jpg")')
    .requiredOption('-m, --model <dir>', 'model folder (encoder + decoder .onnx, optional manifest.json) or the name of a pulled model')
    .requiredOption('-o, --out <dir>', 'output folder: <out>/<relative path without extension>.json (or a folder in png mode)');
  addEngineOptions(addAmgOptions(cmd))
    .option('--coco <file>', 'also write one COCO dataset JSON for all images of the run (built from the per-image outputs)')
    .option('-j, --jobs <n>', 'images in flight at once', parseIntOption('--jobs', 1, 64), 1)
    .option('-t, --threads <n>', 'onnxruntime threads per session (default: cores / jobs)', parseIntOption('--threads', 1, 1024))
    .option('--shard <i/n>', 'process only share i of n of the inputs (for splitting a folder across machines)', parseShard)
    .option('-f, --force', 'redo images whose outputs already exist')
    .option('-q, --quiet', 'no progress output')
    .addHelpText(
      'after',
      [
        '',
        "Options and defaults are those of SAM's scripts/amg.py. A rerun skips images whose output is complete;",
        'a broken image is reported and the run carries on (exit code 5 when any image failed).',
        '',
        'Examples:',
        '  sam auto photos/ --model models/sam_vit_b --out masks/',
        '  sam auto "data/**/*.jpg" --model models/sam_vit_b --out masks/ --coco masks/dataset.json --jobs 2',
        '  sam auto photos/ --model models/sam_vit_b --out masks/ --crop-n-layers 1 --min-mask-region-area 100',
        '',
      ].join('\n'),
    )
    .action(async (inputs: string[], opts: AutoOptions, cmd: Command) => setExit(await runAuto(inputs, opts, cmd)));
}

/** The whole run: inputs → model → every image through pipeline/auto.ts → COCO → summary; returns the exit code. */
async function runAuto(inputs: string[], opts: AutoOptions, cmd: Command): Promise<number> {
  const outputMode = outputModeOf(opts);
  const jobs = opts.jobs;
  const threads = opts.threads ?? Math.max(1, Math.floor(availableParallelism() / jobs));

  const items = selectShard(await collectInputs(inputs), opts.shard);
  const model = await openModel(opts.model, { threads });
  const sam2 = model.family === 'sam2';
  const amg = await amgOptionsFrom(opts, cmd, model.family, `${opts.model} is a SAM (v1) model`);
  if (sam2 && opts.decoder !== 'auto') {
    throw usageError(`--decoder ${opts.decoder} applies to SAM (v1) models only: SAM 2's generator always takes the folder's split decoder when it has one, else its multimask graph; drop --decoder`);
  }
  // Load the sessions now so a bad model fails once, not once per image.
  const loadEncoder = !opts.embeddings || opts.cropNLayers > 0;
  let engine: AmgWorker | undefined;
  if (sam2) {
    // SAM 2 runs on this thread (pipeline/auto.ts); its decoders load here.
    await sam2AmgDecoder(model, amg.multimaskOutput !== false);
    if (amg.useM2m) await model.sam2Decoder(false);
    if (loadEncoder) await model.encoder();
  } else if (opts.pipeline) {
    engine = await AmgWorker.start({ modelDir: model.dir, threads, decoder: opts.decoder, encoder: loadEncoder });
  } else {
    await model.amgDecoder(opts.decoder);
    if (loadEncoder) await model.encoder();
  }
  try {
    return await runImages(items, opts, model, engine, amg, outputMode, jobs);
  } finally {
    await engine?.close();
  }
}

async function runImages(
  items: InputImage[],
  opts: AutoOptions,
  model: SamModel,
  engine: AmgWorker | undefined,
  amg: Partial<AmgOptions>,
  outputMode: OutputMode,
  jobs: number,
): Promise<number> {
  const setup = autoSetup({
    model,
    amg,
    outDir: opts.out,
    outputMode,
    overlayDir: opts.overlay,
    embeddingsDir: opts.embeddings,
    coco: opts.coco !== undefined,
    force: opts.force ?? false,
    decoder: opts.decoder,
    engine,
  });
  const stale = await cleanStaleOutputs(setup, opts.coco);
  const log = (line: string) => {
    if (!opts.quiet) process.stderr.write(`${line}\n`);
  };
  if (stale > 0) log(`sam: removed ${stale} unfinished temp file(s) of an interrupted run`);

  const total = new StageTimes();
  let masks = 0;
  const hierarchical = opts.promptStrategy === 'hierarchical';
  const prompts = { run: 0, grid: 0 };
  const promptsText = (p: { run: number; grid: number }) => `${p.run} of ${p.grid} prompts`;
  const summary = await runBatch(
    items,
    async (item) => {
      const times = new StageTimes();
      const r = await autoImage(setup, item, times);
      total.merge(times);
      masks += r.masks;
      if (r.prompts) {
        prompts.run += r.prompts.run;
        prompts.grid += r.prompts.grid;
      }
      if (r.status !== 'done') return { status: r.status };
      const detail = hierarchical && r.prompts ? `${r.masks} masks, ${promptsText(r.prompts)}` : `${r.masks} masks`;
      return { status: r.status, detail };
    },
    { jobs, quiet: opts.quiet ?? false },
  );
  if (summary.done > 0) log(`sam: time by stage: ${STAGES.map((s) => `${s} ${seconds(total.ms[s])}`).join(', ')}`);
  if (opts.coco) {
    const failed = new Set(summary.failed.map((f) => f.item.path));
    try {
      const res = await writeAutoCoco(setup, items.filter((i) => !failed.has(i.path)), opts.coco, {
        description: AUTO_COCO_DESCRIPTION,
        model: await model.id(),
      });
      log(`sam: COCO dataset ${opts.coco}: ${res.images} images, ${res.annotations} annotations`);
    } catch (err) {
      if (err instanceof SamError) throw err;
      throw new SamError('output', `--coco ${opts.coco}: cannot write the COCO dataset (${errorMessage(err)}); check the folder and free space`, { cause: err });
    }
  }
  return finishBatch(summary, hierarchical ? `, ${masks} masks, ${promptsText(prompts)}` : `, ${masks} masks`);
}
