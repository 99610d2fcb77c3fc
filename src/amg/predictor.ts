import type { BoxXyxy, Size } from '../core/types.js';

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
   * `wantMasks(iou)` gets the K predicted IoUs of one prompt and says whether its logits are
   * needed (the generator drops masks below pred_iou_thresh before looking at them); a predictor
   * may skip computing the others (two-stage decoding) or return every prompt's logits anyway.
   * Without it every prompt's logits are returned.
   */
  predictPoints(points: Float32Array, wantMasks?: (iou: Float32Array) => boolean): Promise<PointPrediction>;
}
