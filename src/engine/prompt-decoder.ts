/**
 * Many prompts of one image (a dataset's boxes) through the decoder: prompts with the same number
 * of points share batched-decoder calls of DECODER_CHUNK rows; a single-prompt decoder gets one
 * call each. The split decoder runs its image side once per image, then prompt side and mask side
 * per chunk: the same logits as the batched decoder without redoing the prompt-independent work.
 * Only the low-res logits are fetched: each prompt's chosen mask is upscaled here (core/upscale.ts,
 * sam.py postprocess_masks) and thresholded at 0 into one reused buffer, so memory holds one
 * image-sized plane, never [B, M, H, W]. The upscaler skips pixels certainly below 0, and the
 * threshold, area, box and RLE then cost the mask's extent, not the image's.
 */
import * as ort from 'onnxruntime-node';
import { EMBEDDING_DIMS, LOW_RES_LENGTH } from '../core/constants.js';
import { RleEncoder, compactToCoco } from '../core/rle.js';
import type { BinaryMask, BoxXywh, BoxXyxy, CocoRle, PromptPoint } from '../core/types.js';
import { createUpscaler } from '../core/upscale.js';
import { DECODER_CHUNK } from './amg-predictor.js';
import { DecoderSession } from './model.js';
import type { SplitDecoderSession, SplitImageSide } from './split-decoder.js';
import { promptArrays, type ImageState } from './predictor.js';

export interface BatchPrompt {
  points?: PromptPoint[];
  box?: BoxXyxy;
}

export interface PromptDecodeOptions {
  /**
   * Multimask output (best of decoder masks 1..3 by predicted IoU) or mask 0. Default per prompt,
   * as SAM recommends: multimask for a lone point, single mask otherwise.
   */
  multimask?: boolean;
  /** Rows per batched call (default DECODER_CHUNK); 1 forces one call per prompt. */
  chunk?: number;
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

export async function decodePrompts(
  decoder: DecoderSession | SplitDecoderSession,
  state: ImageState,
  prompts: readonly BatchPrompt[],
  onMask: OnPromptMask,
  options: PromptDecodeOptions = {},
): Promise<void> {
  const [h, w] = state.originalSize;
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
  const upscale = createUpscaler(state.inputSize, state.originalSize);
  const logits = new Float32Array(h * w);
  const mask: BinaryMask = { data: new Uint8Array(h * w), h, w };
  const rle = new RleEncoder();
  /** Inclusive box of the ones the buffer holds (the previous mask), or undefined when none. */
  let last: [number, number, number, number] | undefined;

  // Rows of one call must have the same number of points: group by it, keep input order within.
  const groups = new Map<number, number[]>();
  prompts.forEach((p, i) => {
    const n = (p.points?.length ?? 0) + (p.box ? 2 : 1);
    groups.set(n, [...(groups.get(n) ?? []), i]);
  });
  for (const [n, indices] of groups) {
    for (let start = 0; start < indices.length; start += chunk) {
      const rows = indices.slice(start, start + chunk);
      const coords = new Float32Array(rows.length * n * 2);
      const labels = new Float32Array(rows.length * n);
      rows.forEach((idx, r) => {
        const a = promptArrays(prompts[idx], state.originalSize);
        coords.set(a.coords, r * n * 2);
        labels.set(a.labels, r * n);
      });
      const res = await run(coords, labels, rows.length, n);
      const m = res.m;
      for (let r = 0; r < rows.length; r++) {
        const idx = rows[r];
        const p = prompts[idx];
        const multi = options.multimask ?? ((p.points?.length ?? 0) === 1 && !p.box);
        let best = 0;
        if (m > 1 && multi) {
          best = 1;
          for (let k = 2; k < m; k++) if (res.iou[r * m + k] > res.iou[r * m + best]) best = k;
        }
        const at = (r * m + best) * LOW_RES_LENGTH;
        // floor 0: pixels certainly below the mask threshold are not computed (same mask).
        upscale(res.low.subarray(at, at + LOW_RES_LENGTH), logits, 0);
        const d = mask.data;
        // The buffer is zero but for the last mask's ones, all inside its box: clear that box.
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
        last = area > 0 ? [x0, y0, x1, y1] : undefined;
        // An empty mask scans box [0, 0, 0, 0]: pixel (0, 0) is 0 then.
        rle.scanInCrop(mask, [0, 0, w, h], [h, w], last ?? [0, 0, 0, 0]);
        const segmentation: CocoRle = compactToCoco(rle.compact());
        const bbox: BoxXywh = last ? [x0, y0, x1 - x0 + 1, y1 - y0 + 1] : [0, 0, 0, 0];
        await onMask(idx, { segmentation, area, bbox, predictedIou: res.iou[r * m + best] });
      }
    }
  }
}
