/**
 * Many prompts of one image (a dataset's boxes) through the decoder: prompts with the same number
 * of points share batched-decoder calls of DECODER_CHUNK rows; a single-prompt decoder gets one
 * call each. The split decoder runs its image side once per image, then prompt side and mask side
 * per chunk: the same logits as the batched decoder without redoing the prompt-independent work.
 * SAM 2 (Sam2PromptDecoders) takes the prompts as SAM2ImagePredictor.predict does (box corners
 * first, x/w·1024, y/h·1024, no padding point) in calls of SAM2_DECODER_CHUNK rows, per graph:
 * the multimask one (3 masks) or the single-mask one (mask token 0); rows are computed
 * independently, so a mask is the one `sam segment` gives for its prompt alone.
 * Only the low-res logits are fetched: each prompt's chosen mask is upscaled here (core/upscale.ts:
 * sam.py postprocess_masks, SAM 2 straight to the image size) and thresholded at 0 into one reused
 * buffer, so memory holds one image-sized plane, never [B, M, H, W]. The upscaler skips pixels
 * certainly below 0, and the threshold, area, box and RLE then cost the mask's extent, not the image's.
 */
import * as ort from 'onnxruntime-node';
import { EMBEDDING_DIMS, LOW_RES_LENGTH } from '../core/constants.js';
import { RleEncoder, compactToCoco } from '../core/rle.js';
import type { BinaryMask, BoxXywh, BoxXyxy, CocoRle, PromptPoint, Size } from '../core/types.js';
import { createSam2Upscaler, createUpscaler, type Upscaler } from '../core/upscale.js';
import { SAM2_HIGH_RES_DIMS } from '../io/embedding-file.js';
import { modelError } from '../util/errors.js';
import { DECODER_CHUNK } from './amg-predictor.js';
import { DecoderSession, type PromptDecoderChoice, type SamModel, type Sam2DecoderSession } from './model.js';
import type { Sam2SplitDecoderSession } from './sam2-split-decoder.js';
import type { SplitDecoderSession, SplitImageSide } from './split-decoder.js';
import { promptArrays, type ImageState } from './predictor.js';
import { SAM2_DECODER_CHUNK } from './sam2-amg-predictor.js';
import { fillSam2Mask, sam2PromptArrays, type Sam2MaskFill } from './sam2-predictor.js';

/** A chosen mask's low-res logits, hole / sprinkle filled when asked (SAM 2). */
const filled = (low: Float32Array, fill: Sam2MaskFill | undefined): Float32Array => (fill ? fillSam2Mask(low, fill) : low);

export interface BatchPrompt {
  points?: PromptPoint[];
  box?: BoxXyxy;
}

export interface PromptDecodeOptions {
  /**
   * Multimask output (best of decoder masks 1..3 by predicted IoU; SAM 2: of its 3 masks) or the
   * single mask (mask 0; SAM 2: the single-mask graph). Default per prompt, as SAM recommends:
   * multimask for a lone point, single mask otherwise.
   */
  multimask?: boolean;
  /** Rows per batched call (default DECODER_CHUNK, SAM 2: SAM2_DECODER_CHUNK); 1 forces one call per prompt. */
  chunk?: number;
  /** SAM 2 only: SAM2ImagePredictor's hole / sprinkle filling of each chosen mask's low-res logits. */
  fill?: Sam2MaskFill;
}

export interface PromptMask {
  segmentation: CocoRle;
  area: number;
  /** The tight box [x, y, w, h] (pycocotools toBbox; [0, 0, 0, 0] when empty). */
  bbox: BoxXywh;
  predictedIou: number;
}

/** Called once per prompt, in decoding order (grouped by point count), with the prompt's index. */
export type OnPromptMask = (index: number, mask: PromptMask) => void | Promise<void>;

/**
 * SAM 2's graphs for many prompts: the multimask one (3 masks) and the single-mask one (mask
 * token 0). Only those the prompts need are given (see sam2PromptDecoders); without the
 * single-mask graph (a folder that lacks it) a single-mask prompt gets the multimask graph's best.
 */
export interface Sam2PromptDecoders {
  readonly family: 'sam2';
  multimask?: Sam2DecoderSession;
  single?: Sam2DecoderSession;
  /**
   * The split decoder with both prompt sides: image side once per image, then per chunk the prompt
   * side and the mask side for each prompt's chosen mask only. Preferred when given.
   */
  split?: Sam2SplitDecoderSession;
}

/** What decodePrompts runs: a SAM (v1) decoder, its split form, or SAM 2's graphs. */
export type PromptDecoder = DecoderSession | SplitDecoderSession | Sam2PromptDecoders;

/** Whether a prompt takes multimask output: `multimask` when given, else a lone point without box. */
const wantsMultimask = (p: BatchPrompt, multimask: boolean | undefined): boolean => multimask ?? ((p.points?.length ?? 0) === 1 && !p.box);

/**
 * The SAM 2 graphs prompts decoded with `multimask` (see PromptDecodeOptions) may need, loaded:
 * undefined loads both (lone points take the multimask graph, the rest the single-mask one).
 */
export async function sam2PromptDecoders(model: SamModel, multimask?: boolean, choice: PromptDecoderChoice = 'auto'): Promise<Sam2PromptDecoders> {
  if (choice === 'auto' || choice === 'split') {
    const split = await model.sam2SplitDecoder();
    if (split?.hasSingleMask) return { family: 'sam2', split };
    if (choice === 'split') {
      throw modelError(`${model.dir}: no SAM 2 split decoder with a single-mask prompt side (manifest "sam2SplitDecoder.promptSingle"); convert the checkpoint again with 'sam models convert', or drop --decoder split`);
    }
  }
  const hasSingle = model.hasSam2SingleMaskDecoder;
  const needMulti = multimask !== false || !hasSingle;
  const [multi, single] = await Promise.all([needMulti ? model.sam2Decoder(true) : undefined, multimask !== true && hasSingle ? model.sam2Decoder(false) : undefined]);
  return { family: 'sam2', multimask: multi, single };
}

/**
 * Upscale one prompt's chosen low-res logits [256, 256], threshold > 0 into one reused image-sized
 * plane, and describe the mask (area, tight box, RLE). The plane is zero but for the previous
 * mask's ones, all inside its box: only that box is cleared between masks.
 */
class MaskPlane {
  private readonly logits: Float32Array;
  private readonly mask: BinaryMask;
  private readonly rle = new RleEncoder();
  /** Inclusive box of the ones the buffer holds (the previous mask), or undefined when none. */
  private last: [number, number, number, number] | undefined;

  constructor(
    private readonly upscale: Upscaler,
    [h, w]: Size,
  ) {
    this.logits = new Float32Array(h * w);
    this.mask = { data: new Uint8Array(h * w), h, w };
  }

  describe(low: Float32Array, predictedIou: number): PromptMask {
    const { upscale, logits } = this;
    const { data: d, h, w } = this.mask;
    // floor 0: pixels certainly below the mask threshold are not computed (same mask).
    upscale(low, logits, 0);
    const last = this.last;
    if (last) for (let y = last[1]; y <= last[3]; y++) d.fill(0, y * w + last[0], y * w + last[2] + 1);
    let [x0, y0, x1, y1, area] = [w, h, -1, -1, 0];
    for (let y = 0; y < h; y++) {
      const row = y * w;
      const end = upscale.activeEnd[y];
      for (let x = upscale.activeStart[y]; x < end; x++) {
        if (logits[row + x] > 0) {
          d[row + x] = 1;
          area++;
          if (x < x0) x0 = x;
          if (x > x1) x1 = x;
          if (y < y0) y0 = y;
          y1 = y;
        }
      }
    }
    this.last = area > 0 ? [x0, y0, x1, y1] : undefined;
    // An empty mask scans box [0, 0, 0, 0]: pixel (0, 0) is 0 then.
    this.rle.scanInCrop(this.mask, [0, 0, w, h], [h, w], this.last ?? [0, 0, 0, 0]);
    const segmentation: CocoRle = compactToCoco(this.rle.compact());
    const bbox: BoxXywh = this.last ? [x0, y0, x1 - x0 + 1, y1 - y0 + 1] : [0, 0, 0, 0];
    return { segmentation, area, bbox, predictedIou };
  }
}

/** Index of the highest of iou[r*m + from .. r*m + m-1] (the first of equals), relative to the row. */
function bestOf(iou: Float32Array, r: number, m: number, from: number): number {
  let best = from;
  for (let k = from + 1; k < m; k++) if (iou[r * m + k] > iou[r * m + best]) best = k;
  return best;
}

/** Input order of the prompts, grouped by `key` (first appearance order of the keys). */
function groupBy<K>(prompts: readonly BatchPrompt[], key: (p: BatchPrompt) => K): Map<K, number[]> {
  const groups = new Map<K, number[]>();
  prompts.forEach((p, i) => {
    const k = key(p);
    const g = groups.get(k);
    if (g) g.push(i);
    else groups.set(k, [i]);
  });
  return groups;
}

export async function decodePrompts(
  decoder: PromptDecoder,
  state: ImageState,
  prompts: readonly BatchPrompt[],
  onMask: OnPromptMask,
  options: PromptDecodeOptions = {},
): Promise<void> {
  if ('family' in decoder) return decodeSam2Prompts(decoder, state, prompts, onMask, options);
  const embeddings = new ort.Tensor('float32', state.embeddings, [...EMBEDDING_DIMS]);
  const single = decoder instanceof DecoderSession;
  const chunk = !single || decoder.batched ? Math.max(1, options.chunk ?? DECODER_CHUNK) : 1;
  let imageSide: SplitImageSide | undefined;
  /** [rows, M] IoUs and [rows, M, 256, 256] logits of one call. */
  const run = async (coords: Float32Array, labels: Float32Array, rows: number, n: number): Promise<{ iou: Float32Array; low: Float32Array; m: number }> => {
    if (single) {
      // origSize [1, 1]: a decoder with in-graph upscaling computes `masks` whatever is fetched; keep it tiny.
      const res = await decoder.run({ embeddings, pointCoords: coords, pointLabels: labels, batch: rows, numPoints: n, origSize: [1, 1] }, ['low_res_masks']);
      return { iou: res.iouPredictions, low: res.lowResMasks!, m: res.numMasks };
    }
    imageSide ??= await decoder.imageSide(embeddings);
    const stage1 = await decoder.promptSide(imageSide, coords, labels, rows, n);
    const low = await decoder.maskSide(stage1, Int32Array.from({ length: rows }, (_, i) => i));
    return { iou: stage1.iouPredictions, low, m: stage1.numMasks };
  };
  const plane = new MaskPlane(createUpscaler(state.inputSize, state.originalSize), state.originalSize);

  // Rows of one call must have the same number of points (SAM: with the padding point unless a box).
  const pointCount = (p: BatchPrompt): number => (p.points?.length ?? 0) + (p.box ? 2 : 1);
  for (const { n, rows } of decoderCalls(prompts, () => 0, pointCount, chunk)) {
    const { coords, labels } = promptRows(prompts, rows, n, (p) => promptArrays(p, state.originalSize));
    const res = await run(coords, labels, rows.length, n);
    const m = res.m;
    for (let r = 0; r < rows.length; r++) {
      const idx = rows[r];
      // Multimask: the best of masks 1..3 (mask 0 is the single-mask output).
      const best = m > 1 && wantsMultimask(prompts[idx], options.multimask) ? bestOf(res.iou, r, m, 1) : 0;
      const at = (r * m + best) * LOW_RES_LENGTH;
      await onMask(idx, plane.describe(res.low.subarray(at, at + LOW_RES_LENGTH), res.iou[r * m + best]));
    }
  }
}

/**
 * decodePrompts on a SAM 2 model: rows of one call share the graph (multimask or single-mask) and
 * the number of points. A multimask prompt takes the best of the graph's 3 masks by predicted IoU
 * (what `sam segment` marks best); the single-mask graph's one mask is taken as it is.
 */
async function decodeSam2Prompts(
  decoders: Sam2PromptDecoders,
  state: ImageState,
  prompts: readonly BatchPrompt[],
  onMask: OnPromptMask,
  options: PromptDecodeOptions,
): Promise<void> {
  if (!state.highResFeats) throw modelError('internal: SAM 2 prompts need the high-res features of the image');
  const size = state.originalSize;
  const chunk = Math.max(1, options.chunk ?? SAM2_DECODER_CHUNK);
  const image: Record<'image_embed' | 'high_res_feats_0' | 'high_res_feats_1', ort.Tensor> = {
    image_embed: new ort.Tensor('float32', state.embeddings, [...EMBEDDING_DIMS]),
    high_res_feats_0: new ort.Tensor('float32', state.highResFeats[0], [...SAM2_HIGH_RES_DIMS[0]]),
    high_res_feats_1: new ort.Tensor('float32', state.highResFeats[1], [...SAM2_HIGH_RES_DIMS[1]]),
  };
  if (decoders.split) return decodeSam2PromptsSplit(decoders.split, image, size, prompts, onMask, options, chunk);
  const graphOf = (p: BatchPrompt): Sam2DecoderSession => {
    const g = wantsMultimask(p, options.multimask) ? decoders.multimask : (decoders.single ?? decoders.multimask);
    if (!g) throw modelError('internal: the SAM 2 decoder these prompts need was not loaded (sam2PromptDecoders with another multimask option)');
    return g;
  };
  const plane = new MaskPlane(createSam2Upscaler(size), size);
  for (const { key: graph, n, rows } of decoderCalls(prompts, graphOf, sam2PointCount, chunk)) {
    // point_coords [rows, n, 2] in the 1024 frame, point_labels [rows, n].
    const { coords, labels } = promptRows(prompts, rows, n, (p) => sam2PromptArrays(p, size));
    // lowResMasks [rows, m, 256, 256], iouPredictions [rows, m].
    const res = await graph.run(image, coords, labels, rows.length, n);
    const m = res.numMasks;
    for (let r = 0; r < rows.length; r++) {
      const best = bestOf(res.iouPredictions, r, m, 0);
      const at = (r * m + best) * LOW_RES_LENGTH;
      await onMask(rows[r], plane.describe(filled(res.lowResMasks.subarray(at, at + LOW_RES_LENGTH), options.fill), res.iouPredictions[r * m + best]));
    }
  }
}

/**
 * The rows of decoder calls: prompts grouped by `key` (SAM 2: the graph or output kind), then by
 * `pointCount` (rows of one call share it), in chunks of `chunk`; input order within a group.
 */
function* decoderCalls<K>(
  prompts: readonly BatchPrompt[],
  key: (p: BatchPrompt) => K,
  pointCount: (p: BatchPrompt) => number,
  chunk: number,
): Generator<{ key: K; n: number; rows: number[] }> {
  for (const [k, members] of groupBy(prompts, key)) {
    for (const [n, local] of groupBy(members.map((i) => prompts[i]), pointCount)) {
      const indices = local.map((j) => members[j]);
      for (let start = 0; start < indices.length; start += chunk) yield { key: k, n, rows: indices.slice(start, start + chunk) };
    }
  }
}

/** SAM 2's point count: box corners + clicks (the graph appends the padding point). */
const sam2PointCount = (p: BatchPrompt): number => (p.points?.length ?? 0) + (p.box ? 2 : 0);

/** point_coords [rows, n, 2] / point_labels [rows, n] of prompts `rows`, each row from `arrays` (SAM's or SAM 2's transform). */
function promptRows(
  prompts: readonly BatchPrompt[],
  rows: readonly number[],
  n: number,
  arrays: (p: BatchPrompt) => { coords: Float32Array; labels: Float32Array },
): { coords: Float32Array; labels: Float32Array } {
  const coords = new Float32Array(rows.length * n * 2);
  const labels = new Float32Array(rows.length * n);
  rows.forEach((idx, r) => {
    const a = arrays(prompts[idx]);
    coords.set(a.coords, r * n * 2);
    labels.set(a.labels, r * n);
  });
  return { coords, labels };
}

/**
 * decodeSam2Prompts through the split decoder: the image side once, then per chunk of prompts of
 * one output kind and point count the prompt side (IoUs), the best mask's index per prompt, and the
 * mask side for those masks alone (1 of 3 upscaled for a multimask prompt).
 */
async function decodeSam2PromptsSplit(
  split: Sam2SplitDecoderSession,
  features: Readonly<Record<'image_embed' | 'high_res_feats_0' | 'high_res_feats_1', ort.Tensor>>,
  size: Size,
  prompts: readonly BatchPrompt[],
  onMask: OnPromptMask,
  options: PromptDecodeOptions,
  chunk: number,
): Promise<void> {
  const image = await split.imageSide(features);
  const plane = new MaskPlane(createSam2Upscaler(size), size);
  for (const { key: multimask, n, rows } of decoderCalls(prompts, (p) => wantsMultimask(p, options.multimask), sam2PointCount, chunk)) {
    const { coords, labels } = promptRows(prompts, rows, n, (p) => sam2PromptArrays(p, size));
    const stage1 = await split.promptSide(image, coords, labels, rows.length, n, multimask);
    const m = stage1.numMasks;
    const cols = Int32Array.from(rows, (_, r) => bestOf(stage1.iouPredictions, r, m, 0));
    const low = await split.chosenMasks(image, stage1, Int32Array.from(rows.keys()), cols);
    for (let r = 0; r < rows.length; r++) {
      await onMask(rows[r], plane.describe(filled(low.subarray(r * LOW_RES_LENGTH, (r + 1) * LOW_RES_LENGTH), options.fill), stage1.iouPredictions[r * m + cols[r]]));
    }
  }
}

