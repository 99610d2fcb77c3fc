import { availableParallelism } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { rm } from 'node:fs/promises';
import { STAGES, StageTimes } from '../core/timings.js';
import { SamError, errorMessage, usageError } from '../util/errors.js';
import { collectInputs } from '../io/inputs.js';
import { matchPromptImages, readPrompts, type PromptedImage } from '../io/prompts.js';
import type { PromptDecoderChoice, SamModel } from '../engine/model.js';
import type { Sam2MaskFill } from '../engine/sam2-predictor.js';
import { openModel } from '../hub/resolve.js';
import { sam2PromptDecoders, type PromptDecoder } from '../engine/prompt-decoder.js';
import { PROMPTED_COCO_DESCRIPTION, cleanStalePromptedOutputs, segmentPromptedImage, writePromptedCoco } from '../pipeline/prompted.js';
import { removeStaleTemps } from '../util/atomic.js';
import { selectShard, type Shard } from './auto.js';
import { finishBatch, runBatch } from './common.js';
import { EXIT } from './exit.js';

export interface PromptsRunOptions {
  model: string;
  prompts: string;
  out?: string;
  coco?: string;
  cocoImages?: string;
  scoreThresh?: number;
  names?: string;
  embeddings?: string;
  decoder: PromptDecoderChoice;
  maxHoleArea: number;
  maxSprinkleArea: number;
  single?: boolean;
  multimask?: boolean;
  jobs: number;
  threads?: number;
  shard?: Shard;
  force?: boolean;
  quiet?: boolean;
}

/**
 * --max-hole-area / --max-sprinkle-area: SAM2ImagePredictor's options, for SAM 2 models only
 * (SAM's predictor has none; its automatic generator's cleanup is `sam auto --min-mask-region-area`).
 */
export function sam2MaskFill(opts: { maxHoleArea: number; maxSprinkleArea: number; model: string }, model: SamModel): Sam2MaskFill | undefined {
  if (opts.maxHoleArea <= 0 && opts.maxSprinkleArea <= 0) return undefined;
  if (model.family !== 'sam2') {
    const flag = opts.maxHoleArea > 0 ? '--max-hole-area' : '--max-sprinkle-area';
    throw usageError(`${flag} applies to SAM 2 models only (an option of SAM2ImagePredictor); ${opts.model} is a SAM (v1) model: drop ${flag} (for automatic masks, 'sam auto --min-mask-region-area' cleans up small regions)`);
  }
  return { maxHoleArea: opts.maxHoleArea, maxSprinkleArea: opts.maxSprinkleArea };
}

const seconds = (ms: number): string => `${(ms / 1000).toFixed(2)} s`;

/** Where per-image files go when only --coco is given: a hidden folder beside it, kept until the dataset is complete (resume). */
const partsDirFor = (cocoFile: string): string => join(dirname(cocoFile), `.${basename(cocoFile)}.parts`);

/** `sam segment --prompts FILE inputs...`: one mask per prompt, per-image files and/or a COCO dataset; returns the exit code. */
export async function runPromptedSegment(inputs: string[], opts: PromptsRunOptions): Promise<number> {
  if (!opts.out && !opts.coco) throw usageError('--prompts needs --out DIR (one JSON file of annotations per image) and/or --coco FILE (one COCO dataset)');
  if (inputs.length === 0) throw usageError('--prompts needs the images: give the image files or folders the prompt file refers to');
  const log = (line: string) => {
    if (!opts.quiet) process.stderr.write(`${line}\n`);
  };
  const set = await readPrompts(opts.prompts, { cocoImages: opts.cocoImages, scoreThresh: opts.scoreThresh, names: opts.names });
  const all = await collectInputs(inputs);
  const { matched, problems: matchProblems } = matchPromptImages(set, all);
  const mine = new Set(selectShard(matched.map((m) => m.input), opts.shard));
  const work = matched.filter((m) => mine.has(m.input));
  const problems = [...set.problems, ...matchProblems];
  const promptCount = work.reduce((s, m) => s + m.image.prompts.length, 0);
  log(
    `sam: ${opts.prompts} (${set.format}): ${promptCount} prompts on ${work.length} images` +
      (set.filtered > 0 ? `, ${set.filtered} below --score-thresh left out` : '') +
      (problems.length > 0 ? `, ${problems.length} problem(s) (listed at the end)` : ''),
  );

  const threads = opts.threads ?? Math.max(1, Math.floor(availableParallelism() / opts.jobs));
  const model = await openModel(opts.model, { threads });
  const fill = sam2MaskFill(opts, model);
  const multimask = opts.multimask ? true : opts.single ? false : undefined;
  const sam2 = model.family === 'sam2';
  // Load the sessions now so a bad model fails once, not once per image.
  let decoder: PromptDecoder;
  if (sam2) {
    const d = await sam2PromptDecoders(model, multimask, opts.decoder);
    if (multimask !== true && !d.single && !d.split) {
      process.stderr.write(
        `sam: warning: ${model.dir} has no SAM 2 single-mask decoder; prompts other than a lone point get the best of its 3 masks by predicted IoU. Convert the checkpoint with 'sam models convert' for SAM 2's own single-mask output, or pass --multimask\n`,
      );
    }
    decoder = d;
  } else {
    decoder = await model.promptDecoder(opts.decoder);
  }
  if (!opts.embeddings) await model.encoder();

  const outDir = opts.out ?? partsDirFor(opts.coco!);
  const stale = (await cleanStalePromptedOutputs(outDir)) + (opts.coco ? await removeStaleTemps(dirname(opts.coco), { recursive: false, prefix: `.${basename(opts.coco)}.` }) : 0);
  if (stale > 0) log(`sam: removed ${stale} unfinished temp file(s) of an interrupted run`);
  const setup = {
    model,
    decoder,
    outDir,
    categories: set.categories,
    embeddingsDir: opts.embeddings,
    multimask,
    chunk: opts.decoder === 'single' ? 1 : undefined,
    fill,
    force: opts.force ?? false,
  };
  const byInput = new Map(work.map((m) => [m.input, m] as const));
  const total = new StageTimes();
  let masks = 0;
  const summary = await runBatch(
    work.map((m) => m.input),
    async (input) => {
      const times = new StageTimes();
      const r = await segmentPromptedImage(setup, byInput.get(input)!, times);
      total.merge(times);
      masks += r.masks;
      problems.push(...r.problems);
      if (r.status !== 'done') return { status: r.status };
      return { status: r.status, detail: `${r.masks} masks${r.problems.length > 0 ? `, ${r.problems.length} prompt(s) left out` : ''}` };
    },
    { jobs: opts.jobs, quiet: opts.quiet ?? false },
  );
  if (summary.done > 0) log(`sam: time by stage: ${STAGES.filter((s) => total.ms[s] > 0).map((s) => `${s} ${seconds(total.ms[s])}`).join(', ')}`);
  if (opts.coco) {
    const failed = new Set(summary.failed.map((f) => f.item));
    const done: PromptedImage[] = work.filter((m) => !failed.has(m.input));
    try {
      const res = await writePromptedCoco(outDir, done, set.format === 'coco' || set.format === 'coco-results', opts.coco, {
        info: { description: PROMPTED_COCO_DESCRIPTION, model: await model.id(), prompts: opts.prompts },
        categories: set.categories,
      });
      log(`sam: COCO dataset ${opts.coco}: ${res.images} images, ${res.annotations} annotations`);
    } catch (err) {
      if (err instanceof SamError) throw err;
      throw new SamError('output', `--coco ${opts.coco}: cannot write the COCO dataset (${errorMessage(err)}); check the folder and free space`, { cause: err });
    }
    // The hidden per-image files served resume only: once every image is in the dataset they go.
    if (!opts.out && summary.failed.length === 0) await rm(outDir, { recursive: true, force: true });
  }
  if (problems.length > 0) {
    const shown = problems.slice(0, 50);
    process.stderr.write(`sam: ${problems.length} prompt problem(s):\n${shown.map((p) => `  ${p}`).join('\n')}\n${problems.length > shown.length ? `  ... and ${problems.length - shown.length} more\n` : ''}`);
  }
  const code = finishBatch(summary, `, ${masks} masks`);
  return code === EXIT.ok && problems.length > 0 ? EXIT.someFailed : code;
}
