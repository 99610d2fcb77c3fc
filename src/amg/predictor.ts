import type { BoxXyxy, Size } from '../core/types.js';

/**
 * What the generator needs from a model: nothing else of onnxruntime leaks into src/amg.
 * The engine implements it (src/engine/predictor.ts); tests implement it with plain arrays.
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
   * Returns low-res logits Float32Array [B, K, 256, 256] and iou predictions [B, K], where K
   * (`masksPerPoint`) is 3 for the default export (decoder masks 1..3, the multimask outputs)
   * and 1 for a `--return-single-mask` export.
   */
  predictPoints(
    points: Float32Array,
  ): Promise<{ lowResLogits: Float32Array; iouPredictions: Float32Array; masksPerPoint: number }>;
}
