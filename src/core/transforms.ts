/**
 * ResizeLongestSide coordinate transforms (segment_anything/utils/transforms.py), pure.
 * The engine uses them to map prompts into the model's 1024 frame.
 */
import type { Size } from './types.js';

/**
 * ResizeLongestSide.get_preprocess_shape: scale = longSide / max(h, w),
 * new size = (int(h*scale + 0.5), int(w*scale + 0.5)) as [h, w].
 */
export function getPreprocessShape(oldH: number, oldW: number, longSide = 1024): Size {
  const scale = (longSide * 1.0) / Math.max(oldH, oldW);
  const newH = Math.trunc(oldH * scale + 0.5);
  const newW = Math.trunc(oldW * scale + 0.5);
  return [newH, newW];
}

/**
 * ResizeLongestSide.apply_coords: coords [n, 2] (x, y), flat, in original-image pixels →
 * Float64Array in the resized frame: x * (newW / oldW), y * (newH / oldH). origSize is [h, w].
 */
export function applyCoords(coords: ArrayLike<number>, origSize: Size, longSide = 1024): Float64Array {
  const [oldH, oldW] = origSize;
  const [newH, newW] = getPreprocessShape(oldH, oldW, longSide);
  const sx = newW / oldW;
  const sy = newH / oldH;
  const out = new Float64Array(coords.length);
  for (let i = 0; i + 1 < coords.length; i += 2) {
    out[i] = coords[i] * sx;
    out[i + 1] = coords[i + 1] * sy;
  }
  return out;
}

/** ResizeLongestSide.apply_boxes: boxes [n, 4] XYXY, flat, as two corner points each. */
export function applyBoxes(boxes: ArrayLike<number>, origSize: Size, longSide = 1024): Float64Array {
  return applyCoords(boxes, origSize, longSide);
}
