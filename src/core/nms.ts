/**
 * Non-maximum suppression with torchvision's CPU semantics.
 * Reference: torchvision/ops/boxes.py (batched_nms, _batched_nms_coordinate_trick,
 * _batched_nms_vanilla) and torchvision/csrc/ops/cpu/nms_kernel.cpp.
 */

/** torchvision switches from the coordinate trick to per-class NMS above this many box values on CPU. */
const VANILLA_NUMEL_THRESHOLD = 4000;

/**
 * Indices into `scores` sorted by decreasing score; ties keep index order
 * (scores.sort(0, descending=true, stable=true) in the kernel).
 */
function argsortDescendingStable(scores: ArrayLike<number>): Int32Array {
  const order = Array.from({ length: scores.length }, (_, i) => i);
  order.sort((a, b) => scores[b] - scores[a] || a - b);
  return Int32Array.from(order);
}

/**
 * The CPU nms kernel on float32 boxes [n, 4] XYXY. Areas are (x2-x1)*(y2-y1) (no +1), all
 * arithmetic is float32 (Math.fround after each operation) and a box is suppressed when its
 * float32 IoU with a kept box is > iouThreshold (compared in double, as the kernel does).
 * When `classes` is given, boxes of different classes never suppress each other.
 */
function nmsKernel(
  boxes: Float32Array,
  scores: ArrayLike<number>,
  iouThreshold: number,
  classes?: ArrayLike<number>,
): number[] {
  const n = scores.length;
  const areas = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const o = i * 4;
    areas[i] = Math.fround(Math.fround(boxes[o + 2] - boxes[o]) * Math.fround(boxes[o + 3] - boxes[o + 1]));
  }
  const order = argsortDescendingStable(scores);
  const suppressed = new Uint8Array(n);
  const keep: number[] = [];
  for (let oi = 0; oi < n; oi++) {
    const i = order[oi];
    if (suppressed[i] === 1) continue;
    keep.push(i);
    const ix1 = boxes[i * 4];
    const iy1 = boxes[i * 4 + 1];
    const ix2 = boxes[i * 4 + 2];
    const iy2 = boxes[i * 4 + 3];
    const iarea = areas[i];
    for (let oj = oi + 1; oj < n; oj++) {
      const j = order[oj];
      if (suppressed[j] === 1) continue;
      if (classes !== undefined && classes[j] !== classes[i]) continue;
      const o = j * 4;
      const xx1 = Math.max(ix1, boxes[o]);
      const yy1 = Math.max(iy1, boxes[o + 1]);
      const xx2 = Math.min(ix2, boxes[o + 2]);
      const yy2 = Math.min(iy2, boxes[o + 3]);
      const ww = Math.max(0, Math.fround(xx2 - xx1));
      const hh = Math.max(0, Math.fround(yy2 - yy1));
      const inter = Math.fround(ww * hh);
      const ovr = Math.fround(inter / Math.fround(Math.fround(iarea + areas[j]) - inter));
      if (ovr > iouThreshold) suppressed[j] = 1;
    }
  }
  return keep;
}

/** torchvision.ops.nms: boxes Float32Array [n, 4] XYXY; kept indices by decreasing score. */
export function nms(boxes: Float32Array, scores: ArrayLike<number>, iouThreshold: number): number[] {
  if (scores.length === 0) return [];
  return nmsKernel(boxes, scores, iouThreshold);
}

/**
 * torchvision.ops.batched_nms: NMS independently per category `idxs[i]`.
 * boxes: Float32Array [n, 4] XYXY; scores: [n]; returns kept indices by decreasing score
 * (ties in index order).
 * Up to 1000 boxes torchvision offsets each box by idx * (max_coordinate + 1) in float32 and runs
 * one NMS; above that it runs NMS per class and merges by score. Both paths are reproduced so
 * float32 rounding of large offsets matches too (SAM always passes idxs = 0).
 */
export function batchedNms(
  boxes: Float32Array,
  scores: ArrayLike<number>,
  idxs: ArrayLike<number>,
  iouThreshold: number,
): number[] {
  const n = scores.length;
  if (n === 0) return [];
  if (boxes.length !== n * 4 || idxs.length !== n) {
    throw new Error(`batchedNms: ${boxes.length / 4} boxes, ${n} scores, ${idxs.length} idxs`);
  }
  if (n * 4 > VANILLA_NUMEL_THRESHOLD) {
    // Per-class NMS, results ordered by (stable) decreasing score: the same order as one pass over
    // the globally sorted boxes that only compares boxes of equal class.
    return nmsKernel(boxes, scores, iouThreshold, idxs);
  }
  let maxCoordinate = -Infinity;
  for (let i = 0; i < boxes.length; i++) if (boxes[i] > maxCoordinate) maxCoordinate = boxes[i];
  const step = Math.fround(maxCoordinate + 1);
  const shifted = new Float32Array(boxes.length);
  for (let i = 0; i < n; i++) {
    const offset = Math.fround(Math.fround(idxs[i]) * step);
    for (let k = 0; k < 4; k++) shifted[i * 4 + k] = boxes[i * 4 + k] + offset;
  }
  return nmsKernel(shifted, scores, iouThreshold);
}
