/**
 * ResizeLongestSide coordinate transforms (segment_anything/utils/transforms.py), pure.
 * The engine uses them to map prompts into the model's 1024 frame.
 */
import type { Size } from './types.js';

/**
 * ResizeLongestSide.get_preprocess_shape: scale = longSide / max(h, w),
 * new size = (int(h*scale + 0.5), int(w*scale + 0.5)) as [h, w], each side at least 1.
 *
 * Decision on extreme aspect ratios: the official code returns a side of 0 when
 * side * scale < 0.5 (20000x3 → [1024, 0], 1x5000 → [0, 1024]; see the golden
 * `resize_longest_side_extreme`), and its predictor then cannot embed the image (PIL raises
 * "height and width must be > 0"). We clamp such a side to 1, the nearest valid input: the image
 * is still embedded (as a 1-pixel-wide strip of the 1024 frame) and every prompt and mask maps
 * through that clamped size consistently (applyCoords, the upscaler's crop). Wherever the
 * official side is >= 1 the result is the official one, exactly.
 */
export function getPreprocessShape(oldH: number, oldW: number, longSide = 1024): Size {
  const scale = (longSide * 1.0) / Math.max(oldH, oldW);
  const newH = Math.max(1, Math.trunc(oldH * scale + 0.5));
  const newW = Math.max(1, Math.trunc(oldW * scale + 0.5));
  return [newH, newW];
}

/**
 * ResizeLongestSide.apply_coords: coords [n, 2] (x, y), flat, in original-image pixels →
 * Float64Array in the resized frame: x * (newW / oldW), y * (newH / oldH). origSize is [h, w].
 * [newH, newW] is getPreprocessShape's, so a side the official code makes 0 (all coordinates
 * along it 0) is the clamped side 1 here (coordinates x / oldW, in 0..1).
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
