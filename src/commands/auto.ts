import { isFile } from '../util/fs.js';
import { availableParallelism } from 'node:os';
import { Option, type Command } from 'commander';
import { openModel } from '../hub/resolve.js';
import { AMG_DEFAULTS, PROMPT_STRATEGIES, type AmgOptions } from '../amg/generator.js';
import { STAGES, StageTimes } from '../core/timings.js';
import { SamError, errorMessage, usageError } from '../util/errors.js';
import { OUTPUT_MODES, type OutputMode } from '../output/records.js';
import { autoImage, autoSetup, cleanStaleOutputs, writeAutoCoco } from '../pipeline/auto.js';
import { readPointGrids } from '../io/point-grids.js';
import { collectInputs, type InputImage } from '../io/inputs.js';
import { SamModel, type DecoderChoice } from '../engine/model.js';
import { AmgWorker } from '../engine/amg-worker-client.js';
import { finishBatch, parseFloatOption, parseIntOption, runBatch } from './common.js';

/** What commander hands the action: amg.py's options under the generator's names, plus the run's own. */
type AutoOptions = Omit<AmgOptions, 'pointsPerSide' | 'pointGrids'> & {
  model: string;
  out: string;
  pointsPerSide: number;
  /** --point-grids FILE (read into AmgOptions.pointGrids). */
  pointGrids?: string;
  outputMode: OutputMode | 'binary_mask';
  convertToRle?: boolean;
  coco?: string;
  overlay?: string;
  embeddings?: string;
  jobs: number;
  threads?: number;
  shard?: Shard;
  force?: boolean;
  quiet?: boolean;
  decoder: DecoderChoice;
  /** --no-pipeline sets it false. */
  pipeline: boolean;
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
  const d = AMG_DEFAULTS;
  program
    .command('auto')
    .description('automatic mask generation ("segment everything") over images, folders or globs; COCO RLE JSON per image')
    .argument('<inputs...>', 'image files, folders (walked recursively) or quoted glob patterns ("data/**/*.jpg")')
    .requiredOption('-m, --model <dir>', 'model folder (encoder + decoder .onnx, optional manifest.json) or the name of a pulled model')
    .requiredOption('-o, --out <dir>', 'output folder: <out>/<relative path without extension>.json (or a folder in png mode)')
    .option('--points-per-side <n>', 'points sampled along one side of the image (grid of n*n prompts)', parseIntOption('--points-per-side', 1, 1024), d.pointsPerSide!)
    .option('--points-per-batch <n>', "amg.py's batch size; accepted for compatibility, results do not depend on it (decoder calls take up to 4 prompts, see README)", parseIntOption('--points-per-batch', 1, 65536), d.pointsPerBatch)
    .option('--pred-iou-thresh <x>', "keep masks whose predicted IoU is above this (0 keeps all)", parseFloatOption('--pred-iou-thresh', 0, 1), d.predIouThresh)
    .option('--stability-score-thresh <x>', 'keep masks whose stability score is at least this', parseFloatOption('--stability-score-thresh', 0, 1), d.stabilityScoreThresh)
    .option('--stability-score-offset <x>', 'logit offset used for the stability score', parseFloatOption('--stability-score-offset', 0, 1e6), d.stabilityScoreOffset)
    .option('--box-nms-thresh <x>', 'box IoU above which the lower-scoring duplicate mask is removed', parseFloatOption('--box-nms-thresh', 0, 1), d.boxNmsThresh)
    .option('--crop-n-layers <n>', 'extra layers of image crops (layer i has 2^i x 2^i crops); finds smaller objects', parseIntOption('--crop-n-layers', 0, 8), d.cropNLayers)
    .option('--crop-nms-thresh <x>', 'box IoU for removing duplicates between crops', parseFloatOption('--crop-nms-thresh', 0, 1), d.cropNmsThresh)
    .addOption(
      new Option('--crop-overlap-ratio <x>', 'overlap of neighbouring crops, as a fraction of the crop side')
        .argParser(parseFloatOption('--crop-overlap-ratio', 0, 0.999))
        .default(d.cropOverlapRatio, '512/1500'),
    )
    .option(
      '--crop-n-points-downscale-factor <n>',
      'points per side in crop layer i are points-per-side / factor^i',
      parseIntOption('--crop-n-points-downscale-factor', 1, 1024),
      d.cropNPointsDownscaleFactor,
    )
    .option('--min-mask-region-area <n>', 'fill holes and remove islands smaller than this many pixels (0: off)', parseIntOption('--min-mask-region-area', 0), d.minMaskRegionArea)
    .option('--point-grids <file>', 'JSON array of point grids, one per crop layer, each [[x,y],...] in 0..1 (replaces --points-per-side)')
    .addOption(
      new Option(
        '--prompt-strategy <which>',
        "grid: every grid point is a prompt (amg.py); hierarchical: TinySAM's hierarchical segment everything, per crop a sparse subset of the grid first, then only the grid points its confident masks do not cover (fewer decoder prompts)",
      )
        .choices([...PROMPT_STRATEGIES])
        .default(d.promptStrategy),
    )
    .option('--high-score-thresh <x>', 'hierarchical only: logits above this in a kept first-round mask cover their pixels (TinySAM high_score_thresh)', parseFloatOption('--high-score-thresh', -1e6, 1e6), d.highScoreThresh)
    .option('--sparse-stride <n>', 'hierarchical only: the first round prompts every n-th row and column of the grid', parseIntOption('--sparse-stride', 2, 1024), d.sparseStride)
    .option('--no-pipeline', 'run the model on the main thread, taking turns with post-processing (default: the model runs in a worker thread and decodes the next batch while this one is post-processed; same outputs)')
    .addOption(
      new Option('--decoder <which>', "auto: the model's split decoder, else its batched one; split: image side once per crop, masks only for prompts above --pred-iou-thresh; batched: one call per batch of prompts; single: the official decoder, one prompt per call (same masks on every path)")
        .choices(['auto', 'single', 'batched', 'split'])
        .default('auto'),
    )
    .addOption(
      new Option('--output-mode <mode>', 'coco_rle: COCO RLE JSON; uncompressed_rle: run lengths as numbers; png (or binary_mask, amg.py\'s name for it): <out>/<name>/<i>.png + metadata.csv')
        .choices([...OUTPUT_MODES, 'binary_mask'])
        .default('coco_rle'),
    )
    .addOption(new Option('--convert-to-rle', "amg.py's flag; coco_rle is already the default").hideHelp().conflicts('outputMode'))
    .option('--coco <file>', 'also write one COCO dataset JSON for all images of the run (built from the per-image outputs)')
    .option('--overlay <dir>', 'also write <dir>/<name>.png: the masks drawn over the image')
    .option('--embeddings <dir>', "reuse 'sam embed' files <dir>/<name>.safetensors for the whole-image crop (missing ones are computed)")
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

/** --point-grids FILE, checked against --points-per-side and --crop-n-layers; null without it. */
async function pointGridsOption(opts: AutoOptions, cmd: Command): Promise<Float64Array[] | null> {
  if (opts.promptStrategy !== 'hierarchical') {
    for (const [key, flag] of [['highScoreThresh', '--high-score-thresh'], ['sparseStride', '--sparse-stride']] as const) {
      if (cmd.getOptionValueSource(key) === 'cli') throw usageError(`${flag} applies to --prompt-strategy hierarchical only; add --prompt-strategy hierarchical or drop ${flag}`);
    }
  }
  if (!opts.pointGrids) return null;
  if (opts.promptStrategy === 'hierarchical') {
    throw usageError('--prompt-strategy hierarchical needs the square grid of --points-per-side; drop --point-grids, or keep it with --prompt-strategy grid');
  }
  if (cmd.getOptionValueSource('pointsPerSide') === 'cli') throw usageError('give either --points-per-side or --point-grids, not both');
  const pointGrids = await readPointGrids(opts.pointGrids);
  if (pointGrids.length !== opts.cropNLayers + 1) {
    throw usageError(
      `--point-grids ${opts.pointGrids} has ${pointGrids.length} grid(s) but --crop-n-layers ${opts.cropNLayers} needs ${opts.cropNLayers + 1} (one per layer)`,
    );
  }
  return pointGrids;
}

/** The whole run: inputs → model → every image through pipeline/auto.ts → COCO → summary; returns the exit code. */
async function runAuto(inputs: string[], opts: AutoOptions, cmd: Command): Promise<number> {
  const pointGrids = await pointGridsOption(opts, cmd);
  if (opts.embeddings && (await isFile(opts.embeddings))) {
    throw usageError(`--embeddings ${opts.embeddings} is a file; give the folder 'sam embed --out' wrote (one file per image is 'sam segment --embedding FILE')`);
  }
  const outputMode: OutputMode = opts.outputMode === 'binary_mask' ? 'png' : opts.outputMode;
  const jobs = opts.jobs;
  const threads = opts.threads ?? Math.max(1, Math.floor(availableParallelism() / jobs));

  const items = selectShard(await collectInputs(inputs), opts.shard);
  const model = await openModel(opts.model, { threads });
  // Load the sessions now so a bad model fails once, not once per image.
  const loadEncoder = !opts.embeddings || opts.cropNLayers > 0;
  let engine: AmgWorker | undefined;
  if (opts.pipeline) {
    engine = await AmgWorker.start({ modelDir: model.dir, threads, decoder: opts.decoder, encoder: loadEncoder });
  } else {
    await model.amgDecoder(opts.decoder);
    if (loadEncoder) await model.encoder();
  }
  try {
    return await runImages(items, opts, model, engine, pointGrids, outputMode, jobs);
  } finally {
    await engine?.close();
  }
}

async function runImages(
  items: InputImage[],
  opts: AutoOptions,
  model: SamModel,
  engine: AmgWorker | undefined,
  pointGrids: Float64Array[] | null,
  outputMode: OutputMode,
  jobs: number,
): Promise<number> {
  const setup = autoSetup({
    model,
    amg: {
      pointsPerSide: pointGrids ? null : opts.pointsPerSide,
      pointGrids,
      pointsPerBatch: opts.pointsPerBatch,
      predIouThresh: opts.predIouThresh,
      stabilityScoreThresh: opts.stabilityScoreThresh,
      stabilityScoreOffset: opts.stabilityScoreOffset,
      boxNmsThresh: opts.boxNmsThresh,
      cropNLayers: opts.cropNLayers,
      cropNmsThresh: opts.cropNmsThresh,
      cropOverlapRatio: opts.cropOverlapRatio,
      cropNPointsDownscaleFactor: opts.cropNPointsDownscaleFactor,
      minMaskRegionArea: opts.minMaskRegionArea,
      promptStrategy: opts.promptStrategy,
      highScoreThresh: opts.highScoreThresh,
      sparseStride: opts.sparseStride,
    },
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
        description: 'automatic masks from sam auto (Segment Anything)',
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
