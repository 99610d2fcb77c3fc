/** [x0, y0, x1, y1] in pixels; x1/y1 exclusive for crop boxes, inclusive max index for mask boxes (as SAM). */
export type BoxXyxy = [number, number, number, number];
/** [x, y, w, h] in pixels. */
export type BoxXywh = [number, number, number, number];
/** [height, width]. */
export type Size = [number, number];

/** A point prompt in original image pixels. */
export interface PromptPoint {
  x: number;
  y: number;
  /** 1 foreground, 0 background. */
  label: 0 | 1;
}

/** A COCO category (ids from 1: Datumaro/CVAT read 0 as "no label"). */
export interface CocoCategory {
  id: number;
  name: string;
  supercategory: string;
}

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
 * COCO RLE held compactly: the counts in pycocotools' compressed encoding (the bytes of
 * CocoRle.counts, ASCII 48..111), typically 1–2 bytes a run, in a typed array outside the JS heap.
 * What the generator keeps per mask once the mask is final (see src/core/rle.ts RleEncoder).
 */
export interface CompactRle {
  size: Size;
  bytes: Uint8Array;
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
  /** bbox and crop_box are written as floats (`0.0`), as SAM 2's generator does; absent: ints (SAM). */
  floatBoxes?: boolean;
}
