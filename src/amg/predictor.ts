import type { BoxXyxy, Size } from '../core/types.js';

/** Which prompts' logits predictPoints must return (plain data: it may cross to a worker thread). */
export interface MaskFilter {
  iouAbove: number;
}

/** What `predictPoints` returns for B prompts with K masks each. */
export interface PointPrediction {
  /** [B, K] */
  iouPredictions: Float32Array;
  /**
   * K: 3 for the default export (decoder masks 1..3, the multimask outputs), 1 for a
   * `--return-single-mask` export.
   */
  masksPerPoint: number;
  /** The prompts (ascending indices into the batch) whose logits `lowResLogits` holds; absent: all B. */
  maskRows?: Int32Array;
  /** Low-res logits [maskRows.length (or B), K, 256, 256]. */
  lowResLogits: Float32Array;
}

/**
 * What the generator needs from a model: nothing else of onnxruntime leaks into src/amg.
 * The engine implements it (src/engine/amg-predictor.ts); tests implement it with plain arrays.
 */
export interface AmgPredictor {
  /**
   * Embed the crop `cropBox` (XYXY, exclusive max) of the current image.
   * Returns the crop's size [h, w] and the pre-padding size of the crop in the 1024 frame.
   */
  setCrop(cropBox: BoxXyxy): Promise<{ cropSize: Size; inputSize: Size }>;
  /**
   * Multimask prediction for B single foreground points given in crop pixel coordinates.
   * points: Float32Array [B, 2] (x, y).
   * With `masks.iouAbove`, logits are needed only for the prompts that have a mask with predicted
   * IoU > iouAbove (float32 compare; the generator drops the others before looking at them): a
   * predictor may skip computing the rest (two-stage decoding), and returns the needed prompts'
   * logits (maskRows). Without it every prompt's logits are returned.
   * A generator may call predictPoints for the next batch before it is done with the last one
   * (pipelining): calls within one crop are answered in order.
   */
  predictPoints(points: Float32Array, masks?: MaskFilter): Promise<PointPrediction>;
}
