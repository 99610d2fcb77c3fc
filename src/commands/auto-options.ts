/**
 * The options `sam auto` and `sam queue add` share: amg.py's generator options and the outputs
 * per image (what decides the bytes written), read into the pipeline's AutoSetup fields; and the
 * engine options `sam auto` and `sam worker` share (how the model runs; same outputs either way).
 */
import { Option, type Command } from 'commander';
import { AMG_DEFAULTS, PROMPT_STRATEGIES, SAM2_AMG_DEFAULTS, type AmgOptions } from '../amg/generator.js';
import type { DecoderChoice } from '../engine/model.js';
import { readPointGrids } from '../io/point-grids.js';
import { OUTPUT_MODES, type OutputMode } from '../output/records.js';
import { isFile } from '../util/fs.js';
import { usageError } from '../util/errors.js';
import { parseFloatOption, parseIntOption } from './common.js';

/** What commander hands the action for addAmgOptions: amg.py's options under the generator's names, plus the outputs. */
export type AmgCliOptions = Omit<AmgOptions, 'pointsPerSide' | 'pointGrids'> & {
  pointsPerSide: number;
  /** --point-grids FILE (read into AmgOptions.pointGrids). */
  pointGrids?: string;
  outputMode: OutputMode | 'binary_mask';
  convertToRle?: boolean;
  overlay?: string;
  embeddings?: string;
};

/** --decoder and --no-pipeline. */
export interface EngineCliOptions {
  decoder: DecoderChoice;
  /** --no-pipeline sets it false. */
  pipeline: boolean;
}

/** amg.py's options, --output-mode, --overlay and --embeddings. */
export function addAmgOptions(cmd: Command): Command {
  const d = AMG_DEFAULTS;
  return cmd
    .option('--points-per-side <n>', 'points sampled along one side of the image (grid of n*n prompts)', parseIntOption('--points-per-side', 1, 1024), d.pointsPerSide!)
    .option('--points-per-batch <n>', "amg.py's batch size; accepted for compatibility, results do not depend on it (decoder calls take up to 4 prompts, see README)", parseIntOption('--points-per-batch', 1, 65536), d.pointsPerBatch)
    .option('--pred-iou-thresh <x>', `keep masks whose predicted IoU is above this (0 keeps all; SAM 2 models: default ${SAM2_AMG_DEFAULTS.predIouThresh})`, parseFloatOption('--pred-iou-thresh', 0, 1), d.predIouThresh)
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
    .option('--min-mask-region-area <n>', 'SAM: fill holes and remove islands smaller than this many pixels after NMS; SAM 2: fill holes and remove sprinkles of at most this many low-res (256x256) pixels before upscaling, as its predictor does (0: off)', parseIntOption('--min-mask-region-area', 0), d.minMaskRegionArea)
    .option('--use-m2m', "SAM 2 models only: refine every candidate mask once, prompted with its own point and its own low-res mask (SAM2AutomaticMaskGenerator's use_m2m)")
    .option('--mask-threshold <x>', 'SAM 2 models only: logits above this are mask (default 0)', parseFloatOption('--mask-threshold', -1e6, 1e6))
    .option('--no-multimask-output', "SAM 2 models only: one mask per point from the single-mask decoder instead of 3 (SAM 2's multimask_output=False)")
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
    .addOption(
      new Option('--output-mode <mode>', 'coco_rle: COCO RLE JSON; uncompressed_rle: run lengths as numbers; png (or binary_mask, amg.py\'s name for it): <out>/<name>/<i>.png + metadata.csv')
        .choices([...OUTPUT_MODES, 'binary_mask'])
        .default('coco_rle'),
    )
    .addOption(new Option('--convert-to-rle', "amg.py's flag; coco_rle is already the default").hideHelp().conflicts('outputMode'))
    .option('--overlay <dir>', 'also write <dir>/<name>.png: the masks drawn over the image')
    .option('--embeddings <dir>', "reuse 'sam embed' files <dir>/<name>.safetensors for the whole-image crop (missing ones are computed)");
}

export function addEngineOptions(cmd: Command): Command {
  return cmd
    .option('--no-pipeline', 'run the model on the main thread, taking turns with post-processing (default: the model runs in a worker thread and decodes the next batch while this one is post-processed; same outputs)')
    .addOption(
      new Option('--decoder <which>', "auto: the model's split decoder, else its batched one; split: image side once per crop, masks only for prompts above --pred-iou-thresh; batched: one call per batch of prompts; single: the official decoder, one prompt per call (same masks on every path)")
        .choices(['auto', 'single', 'batched', 'split'])
        .default('auto'),
    );
}

export const outputModeOf = (opts: AmgCliOptions): OutputMode => (opts.outputMode === 'binary_mask' ? 'png' : opts.outputMode);

/** --point-grids FILE, checked against --points-per-side and --crop-n-layers; null without it. */
async function pointGridsOption(opts: AmgCliOptions, cmd: Command): Promise<Float64Array[] | null> {
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

/** SAM 2's options, for messages. */
const SAM2_ONLY = [
  ['useM2m', '--use-m2m'],
  ['maskThreshold', '--mask-threshold'],
  ['multimaskOutput', '--no-multimask-output'],
] as const;

/**
 * The generator's options from the command line (checked; --point-grids read) for a model of
 * `family`: SAM 2's defaults and options for 'sam2', SAM's for 'sam'. `v1Why` ends the message
 * refusing a SAM 2 option (why the model is taken as SAM v1).
 */
export async function amgOptionsFrom(
  opts: AmgCliOptions,
  cmd: Command,
  family: 'sam' | 'sam2' = 'sam',
  v1Why = 'this command runs SAM (v1) and MobileSAM models only',
): Promise<Partial<AmgOptions>> {
  const given = (key: string): boolean => cmd.getOptionValueSource(key) === 'cli';
  const sam2 = family === 'sam2';
  if (!sam2) {
    for (const [key, flag] of SAM2_ONLY) {
      if (given(key)) throw usageError(`${flag} applies to SAM 2 models only (an option of SAM 2's generator); ${v1Why}: drop ${flag}`);
    }
  }
  const pointGrids = await pointGridsOption(opts, cmd);
  if (opts.embeddings && (await isFile(opts.embeddings))) {
    throw usageError(`--embeddings ${opts.embeddings} is a file; give the folder 'sam embed --out' wrote (one file per image is 'sam segment --embedding FILE')`);
  }
  return {
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
    ...(sam2
      ? {
          family: 'sam2' as const,
          predIouThresh: given('predIouThresh') ? opts.predIouThresh : SAM2_AMG_DEFAULTS.predIouThresh!,
          maskThreshold: opts.maskThreshold ?? SAM2_AMG_DEFAULTS.maskThreshold!,
          useM2m: opts.useM2m ?? false,
          multimaskOutput: opts.multimaskOutput !== false,
        }
      : {}),
  };
}
