/**
 * `sam segment --prompts` for one image at a time: load → (stored or fresh) embedding → every
 * prompt of the image through the decoder → `<out>/<key>.json`, and the COCO dataset built from
 * those files. The per-image file is a JSON array of COCO annotations (with SAM's predicted_iou,
 * the prompt, category_name and the input's extra fields), so a rerun skips finished images and
 * the dataset is the same whether a run was resumed or not.
 */
import { open, readFile } from 'node:fs/promises';
import { extname, join } from 'node:path';
import type { BoxXyxy, CocoCategory, Size } from '../core/types.js';
import { StageTimes } from '../core/timings.js';
import { inputError } from '../util/errors.js';
import { produceFileAtomic, removeStaleTemps } from '../util/atomic.js';
import { readEmbeddingFile } from '../io/embedding-file.js';
import { loadImage } from '../io/image.js';
import type { InputImage } from '../io/inputs.js';
import type { PromptedImage, PromptSpec } from '../io/prompts.js';
import { writeCocoDataset, type CocoAnnotation, type CocoImageEntry } from '../output/coco.js';
import type { SamModel } from '../engine/model.js';
import { decodePrompts, type BatchPrompt, type PromptDecoder } from '../engine/prompt-decoder.js';
import type { Sam2MaskFill } from '../engine/sam2-predictor.js';
import { embedImage, imageStateFromEmbedding, promptProblem, type ImageState } from '../engine/predictor.js';
import { exists } from '../util/fs.js';
import { headerSize } from './auto.js';

export interface PromptedSetup {
  model: SamModel;
  /** The decoder the prompts go through (batched when the model has one, see SamModel.promptDecoder; SAM 2: sam2PromptDecoders). */
  decoder: PromptDecoder;
  outDir: string;
  categories: readonly CocoCategory[];
  /** Folder of `sam embed` files `<key>.safetensors`, used when present. */
  embeddingsDir?: string;
  /** Force multimask (true) or single-mask (false) output; default per prompt (see decodePrompts). */
  multimask?: boolean;
  /** Rows per decoder call (1: one call per prompt). */
  chunk?: number;
  /** SAM 2: hole / sprinkle filling of each mask's low-res logits (SAM2ImagePredictor's max_hole_area / max_sprinkle_area). */
  fill?: Sam2MaskFill;
  force: boolean;
}

export interface PromptedResult {
  status: 'done' | 'skipped';
  masks: number;
  /** Prompts of this image that could not be decoded (outside the image, ...), one line each. */
  problems: string[];
}

/** One annotation of the per-image file: COCO's fields, SAM's, the prompt's and the input's. */
export interface PromptedAnnotation extends CocoAnnotation {
  category_name: string;
  predicted_iou: number;
  prompt: { box?: BoxXyxy; points?: [number, number, number][] };
}

/**
 * Detector boxes often end a fraction past the border (x1 = W + 0.4): up to this many pixels
 * outside are clipped to the image; farther is an error.
 */
export const BOX_CLIP_TOLERANCE = 1;

export const promptedOutputPath = (outDir: string, key: string): string => join(outDir, `${key}.json`);

/** Whether an earlier run finished this image (files are renamed into place whole; damage by other tools is caught by parsing). */
async function isComplete(path: string): Promise<boolean> {
  try {
    return Array.isArray(JSON.parse(await readFile(path, 'utf8')));
  } catch {
    return false;
  }
}

/** The prompt in pixels of an image of this size (YOLO boxes denormalized, near-border boxes clipped), or why not. */
export function resolvePrompt(p: PromptSpec, [h, w]: Size): BatchPrompt | string {
  let box = p.box;
  if (p.normalizedBox) {
    const [cx, cy, bw, bh] = p.normalizedBox;
    box = [(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h];
  }
  if (box) {
    const t = BOX_CLIP_TOLERANCE;
    const [x0, y0, x1, y1] = box;
    if (x0 >= -t && y0 >= -t && x1 <= w + t && y1 <= h + t) box = [Math.max(0, x0), Math.max(0, y0), Math.min(w, x1), Math.min(h, y1)];
  }
  const prompt = { points: p.points, box };
  return promptProblem(prompt, [h, w]) ?? prompt;
}

async function imageState(setup: PromptedSetup, item: InputImage, image: Awaited<ReturnType<typeof loadImage>>, times: StageTimes): Promise<ImageState> {
  if (setup.embeddingsDir) {
    const file = join(setup.embeddingsDir, `${item.key}.safetensors`);
    if (await exists(file)) return imageStateFromEmbedding(setup.model, await readEmbeddingFile(file), file, [image.height, image.width]);
  }
  return times.time('encoder', () => embedImage(setup.model, image));
}

/** Decode every prompt of one image and write its annotations (skipped when already complete). */
export async function segmentPromptedImage(setup: PromptedSetup, { input, image: spec }: PromptedImage, times: StageTimes = new StageTimes()): Promise<PromptedResult> {
  const out = promptedOutputPath(setup.outDir, input.key);
  if (!setup.force && (await isComplete(out))) return { status: 'skipped', masks: 0, problems: [] };
  const image = await times.time('decode', () => loadImage(input.path));
  const size: Size = [image.height, image.width];
  if ((spec.width !== undefined && spec.width !== image.width) || (spec.height !== undefined && spec.height !== image.height)) {
    throw inputError(
      `${input.path}: the prompt file declares '${spec.name}' as ${spec.width}x${spec.height} but the image is ${image.width}x${image.height}; check that it is the same image (EXIF rotation is applied) or fix width/height`,
    );
  }
  const problems: string[] = [];
  const todo: { spec: PromptSpec; prompt: BatchPrompt }[] = [];
  for (const p of spec.prompts) {
    const r = resolvePrompt(p, size);
    if (typeof r === 'string') problems.push(`${p.source}: ${r}; left out`);
    else todo.push({ spec: p, prompt: r });
  }
  const names = new Map(setup.categories.map((c) => [c.id, c.name]));
  let masks = 0;
  await produceFileAtomic(
    out,
    async (tmp) => {
      const fh = await open(tmp, 'w');
      try {
        await fh.write('[');
        if (todo.length > 0) {
          const state = await imageState(setup, input, image, times);
          await times.time('decoder', () =>
            decodePrompts(
              setup.decoder,
              state,
              todo.map((t) => t.prompt),
              async (i, mask) => {
                const { spec: p, prompt } = todo[i];
                const a: PromptedAnnotation = {
                  id: p.annotationId,
                  image_id: spec.id,
                  category_id: p.categoryId,
                  category_name: names.get(p.categoryId) ?? String(p.categoryId),
                  segmentation: mask.segmentation,
                  area: mask.area,
                  bbox: mask.bbox,
                  iscrowd: p.iscrowd,
                  ...(p.score !== undefined ? { score: p.score } : {}),
                  predicted_iou: mask.predictedIou,
                  prompt: {
                    ...(prompt.box ? { box: prompt.box } : {}),
                    ...(prompt.points ? { points: prompt.points.map((q) => [q.x, q.y, q.label] as [number, number, number]) } : {}),
                  },
                  ...p.extra,
                };
                await fh.write(`${masks++ === 0 ? '\n' : ',\n'}${JSON.stringify(a)}`);
              },
              { multimask: setup.multimask, chunk: setup.chunk, fill: setup.fill },
            ),
          );
        }
        await fh.write(masks > 0 ? '\n]\n' : ']\n');
        await fh.sync();
      } finally {
        await fh.close();
      }
    },
    '',
  );
  return { status: 'done', masks, problems };
}

/** Remove temps a killed run left in the output folder. */
export function cleanStalePromptedOutputs(outDir: string): Promise<number> {
  return removeStaleTemps(outDir);
}

/** The COCO file's info.description for `sam segment --prompts --coco`. */
export const PROMPTED_COCO_DESCRIPTION = 'masks of prompts (boxes, points) from sam segment --prompts (Segment Anything)';

/**
 * Build the COCO dataset from the per-image files on disk, in the prompt file's image order.
 * Images without a finished file (failed ones) are left out. file_name is the prompt file's
 * (COCO input) or the image's path relative to its input root (YOLO, JSONL).
 */
export async function writePromptedCoco(
  outDir: string,
  images: readonly PromptedImage[],
  keepFileNames: boolean,
  cocoFile: string,
  header: { info: Readonly<Record<string, string | number>>; categories: readonly CocoCategory[] },
): Promise<{ images: number; annotations: number }> {
  async function* entries(): AsyncGenerator<CocoImageEntry> {
    for (const { input, image } of images) {
      const path = promptedOutputPath(outDir, input.key);
      if (!(await exists(path))) continue;
      const anns = JSON.parse(await readFile(path, 'utf8')) as PromptedAnnotation[];
      let size: Size | undefined = anns[0]?.segmentation.size;
      if (!size && image.width !== undefined && image.height !== undefined) size = [image.height, image.width];
      size ??= await headerSize(input.path);
      yield {
        image: { id: image.id, file_name: keepFileNames ? image.name : input.key + extname(input.path), width: size[1], height: size[0] },
        // category_name is for readers of the per-image files; the dataset has "categories".
        annotations: anns.map(({ category_name: _name, ...a }) => a),
      };
    }
  }
  return writeCocoDataset(cocoFile, entries(), header);
}
