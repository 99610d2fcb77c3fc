/** [x0, y0, x1, y1] in pixels; x1/y1 exclusive for crop boxes, inclusive max index for mask boxes (as SAM). */
export type BoxXyxy = [number, number, number, number];
/** [x, y, w, h] in pixels. */
export type BoxXywh = [number, number, number, number];
/** [height, width]. */
export type Size = [number, number];

/** Uncompressed COCO RLE: column-major run lengths, starting with a run of zeros. */
export interface UncompressedRle {
  size: Size;
  counts: number[];
}

/** Compressed COCO RLE as pycocotools writes it (counts in its 6-bit ASCII encoding). */
export interface CocoRle {
  size: Size;
  counts: string;
}

/**
 * A binary mask as a row-major byte array (0 or 1), `data.length === h * w`.
 * Row-major because that is how logits come out of the decoder; RLE code transposes on the fly.
 */
export interface BinaryMask {
  data: Uint8Array;
  h: number;
  w: number;
}

/** One record of SAM's generator output (`SamAutomaticMaskGenerator.generate`). */
export interface MaskRecord<S = CocoRle> {
  segmentation: S;
  area: number;
  bbox: BoxXywh;
  predicted_iou: number;
  point_coords: [number, number][];
  stability_score: number;
  crop_box: BoxXywh;
}

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
