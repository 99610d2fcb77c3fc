/**
 * Non-maximum suppression with torchvision's CPU semantics.
 * Reference: torchvision/ops/boxes.py (batched_nms, _batched_nms_coordinate_trick,
 * _batched_nms_vanilla) and torchvision/csrc/ops/cpu/nms_kernel.cpp (torchvision 0.14), the
 * unstable sort of aten/src/ATen/native/cpu/SortingKernel.cpp (torch 1.13) and libstdc++'s
 * std::sort (bits/stl_algo.h, bits/stl_heap.h, GCC 12).
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

/** libstdc++'s _S_threshold: introsort stops partitioning ranges of at most this many elements. */
const S_THRESHOLD = 16;

/**
 * torch's unstable CPU sort: libstdc++ `std::sort` over (key, index) pairs that starts from
 * index order and compares keys only, so the order of equal keys is whatever introsort leaves
 * (what `tensor.sort(stable=False)[1]` returns). keys: [n]; comp(a, b): a strictly before b.
 * Returns the indices into `keys` in sorted order, Int32Array [n].
 * A line-by-line port of std::__sort (GCC 12): __introsort_loop with depth limit 2*floor(log2 n),
 * median-of-three pivot (first+1, middle, last-1) moved to first, unguarded Hoare partition,
 * heapsort (__partial_sort) once the depth limit is spent, then __final_insertion_sort. Every
 * comparison and move happens in the same order as in C++, which is what fixes the tie order.
 * Keys are copied to float64, which holds float32 (and any JS number) exactly.
 */
export function stdSortIndices(keys: ArrayLike<number>, comp: (a: number, b: number) => boolean): Int32Array {
  const n = keys.length;
  // The composite (value, index) accessor torch sorts: k[p] and v[p] always move together.
  const k = Float64Array.from(keys);
  const v = new Int32Array(n);
  for (let i = 0; i < n; i++) v[i] = i;

  const less = (p: number, q: number): boolean => comp(k[p], k[q]);
  const swap = (p: number, q: number): void => {
    const tk = k[p];
    k[p] = k[q];
    k[q] = tk;
    const tv = v[p];
    v[p] = v[q];
    v[q] = tv;
  };
  const move = (to: number, from: number): void => {
    k[to] = k[from];
    v[to] = v[from];
  };
  // C++ integer division truncates toward zero; every operand below is >= -1.
  const half = (x: number): number => Math.trunc(x / 2);

  /** Swaps the median of *a, *b, *c into *result. */
  function moveMedianToFirst(result: number, a: number, b: number, c: number): void {
    if (less(a, b)) {
      if (less(b, c)) swap(result, b);
      else if (less(a, c)) swap(result, c);
      else swap(result, a);
    } else if (less(a, c)) swap(result, a);
    else if (less(b, c)) swap(result, c);
    else swap(result, b);
  }

  /** Hoare partition of [first, last) around *pivot (outside the range, never moved). */
  function unguardedPartition(first: number, last: number, pivot: number): number {
    for (;;) {
      while (less(first, pivot)) first++;
      last--;
      while (less(pivot, last)) last--;
      if (!(first < last)) return first;
      swap(first, last);
      first++;
    }
  }

  function unguardedPartitionPivot(first: number, last: number): number {
    const mid = first + half(last - first);
    moveMedianToFirst(first, first + 1, mid, last - 1);
    return unguardedPartition(first + 1, last, first);
  }

  /** Sifts the hole up from holeIndex towards topIndex and drops (valK, valV) there (__push_heap). */
  function pushHeap(first: number, holeIndex: number, topIndex: number, valK: number, valV: number): void {
    let parent = half(holeIndex - 1);
    while (holeIndex > topIndex && comp(k[first + parent], valK)) {
      move(first + holeIndex, first + parent);
      holeIndex = parent;
      parent = half(holeIndex - 1);
    }
    k[first + holeIndex] = valK;
    v[first + holeIndex] = valV;
  }

  /** __adjust_heap: moves the hole at holeIndex down to a leaf, then pushes (valK, valV) up. */
  function adjustHeap(first: number, holeIndex: number, len: number, valK: number, valV: number): void {
    const topIndex = holeIndex;
    let secondChild = holeIndex;
    while (secondChild < half(len - 1)) {
      secondChild = 2 * (secondChild + 1);
      if (less(first + secondChild, first + secondChild - 1)) secondChild--;
      move(first + holeIndex, first + secondChild);
      holeIndex = secondChild;
    }
    if ((len & 1) === 0 && secondChild === half(len - 2)) {
      secondChild = 2 * (secondChild + 1);
      move(first + holeIndex, first + secondChild - 1);
      holeIndex = secondChild - 1;
    }
    pushHeap(first, holeIndex, topIndex, valK, valV);
  }

  function makeHeap(first: number, last: number): void {
    const len = last - first;
    if (len < 2) return;
    for (let parent = half(len - 2); ; parent--) {
      adjustHeap(first, parent, len, k[first + parent], v[first + parent]);
      if (parent === 0) return;
    }
  }

  /** Moves *first to *result and re-heaps [first, last) with the old *result (__pop_heap). */
  function popHeap(first: number, last: number, result: number): void {
    const valK = k[result];
    const valV = v[result];
    move(result, first);
    adjustHeap(first, 0, last - first, valK, valV);
  }

  /** __partial_sort(first, middle, last) = __heap_select then __sort_heap. */
  function partialSort(first: number, middle: number, last: number): void {
    makeHeap(first, middle);
    for (let i = middle; i < last; i++) if (less(i, first)) popHeap(first, middle, i);
    for (let end = middle; end - first > 1; ) {
      end--;
      popHeap(first, end, end);
    }
  }

  function introsortLoop(first: number, last: number, depthLimit: number): void {
    while (last - first > S_THRESHOLD) {
      if (depthLimit === 0) {
        partialSort(first, last, last);
        return;
      }
      depthLimit--;
      const cut = unguardedPartitionPivot(first, last);
      introsortLoop(cut, last, depthLimit);
      last = cut;
    }
  }

  /** __unguarded_linear_insert: relies on an element not after *last somewhere before it. */
  function unguardedLinearInsert(last: number): void {
    const valK = k[last];
    const valV = v[last];
    let next = last - 1;
    while (comp(valK, k[next])) {
      move(last, next);
      last = next;
      next--;
    }
    k[last] = valK;
    v[last] = valV;
  }

  function insertionSort(first: number, last: number): void {
    if (first === last) return;
    for (let i = first + 1; i < last; i++) {
      if (less(i, first)) {
        // move_backward(first, i, i + 1), then *first = val.
        const valK = k[i];
        const valV = v[i];
        for (let p = i; p > first; p--) move(p, p - 1);
        k[first] = valK;
        v[first] = valV;
      } else {
        unguardedLinearInsert(i);
      }
    }
  }

  function finalInsertionSort(first: number, last: number): void {
    if (last - first > S_THRESHOLD) {
      insertionSort(first, first + S_THRESHOLD);
      for (let i = first + S_THRESHOLD; i < last; i++) unguardedLinearInsert(i);
    } else {
      insertionSort(first, last);
    }
  }

  if (n > 1) {
    // std::__lg(n) * 2: floor(log2 n) for n < 2^31.
    introsortLoop(0, n, 2 * (31 - Math.clz32(n)));
    finalInsertionSort(0, n);
  }
  return v;
}

/** KeyValueCompDesc of SortingKernel.cpp: descending, NaN before every number. */
const compDescNanFirst = (a: number, b: number): boolean => (Number.isNaN(a) && !Number.isNaN(b)) || a > b;

/**
 * The CPU nms kernel on float32 boxes [n, 4] XYXY. Areas are (x2-x1)*(y2-y1) (no +1), all
 * arithmetic is float32 (Math.fround after each operation) and a box is suppressed when its
 * float32 IoU with a kept box is > iouThreshold (compared in double, as the kernel does).
 */
function nmsKernel(boxes: Float32Array, scores: ArrayLike<number>, iouThreshold: number): number[] {
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
 * torchvision's _batched_nms_vanilla: one nms per category id, then
 * `keep_indices[scores[keep_indices].sort(descending=True)[1]]` over the kept indices in
 * ascending order. That sort is torch's unstable CPU sort, so equal scores come out in
 * std::sort's order, not by index (the kept set is the same as the coordinate trick's).
 * boxes: Float32Array [n, 4] XYXY; scores, idxs: [n]. Returns kept indices into [n].
 */
function batchedNmsVanilla(
  boxes: Float32Array,
  scores: ArrayLike<number>,
  idxs: ArrayLike<number>,
  iouThreshold: number,
): number[] {
  const n = scores.length;
  // torch.unique(idxs) (ascending) and torch.where(idxs == class_id) per id. A NaN id equals no
  // id, so its boxes are never kept, as in torchvision. Map keys compare as ==, with -0 === 0.
  const members = new Map<number, number[]>();
  for (let i = 0; i < n; i++) {
    const id = idxs[i];
    if (Number.isNaN(id)) continue;
    let list = members.get(id);
    if (list === undefined) members.set(id, (list = []));
    list.push(i);
  }
  const classIds = [...members.keys()].sort((a, b) => a - b);
  const keepMask = new Uint8Array(n);
  for (const classId of classIds) {
    const currIndices = members.get(classId) as number[];
    // boxes[curr_indices] [m, 4] and scores[curr_indices] [m], copied exactly.
    const m = currIndices.length;
    const currBoxes = new Float32Array(m * 4);
    const currScores = new Float64Array(m);
    for (let j = 0; j < m; j++) {
      const i = currIndices[j];
      currBoxes.set(boxes.subarray(i * 4, i * 4 + 4), j * 4);
      currScores[j] = scores[i];
    }
    for (const j of nmsKernel(currBoxes, currScores, iouThreshold)) keepMask[currIndices[j]] = 1;
  }
  // keep_indices = torch.where(keep_mask)[0]: ascending, the order the unstable sort starts from.
  const keepIndices: number[] = [];
  for (let i = 0; i < n; i++) if (keepMask[i] === 1) keepIndices.push(i);
  const keepScores = new Float64Array(keepIndices.length);
  for (let j = 0; j < keepIndices.length; j++) keepScores[j] = scores[keepIndices[j]];
  const order = stdSortIndices(keepScores, compDescNanFirst);
  return Array.from(order, (j) => keepIndices[j]);
}

/**
 * torchvision.ops.batched_nms: NMS independently per category `idxs[i]`.
 * boxes: Float32Array [n, 4] XYXY; scores: [n]; returns kept indices by decreasing score.
 * Up to 1000 boxes torchvision offsets each box by idx * (max_coordinate + 1) in float32 and runs
 * one NMS (ties in index order); above that it runs NMS per class and merges with an unstable
 * sort (ties in std::sort's order). Both paths are reproduced so float32 rounding of large offsets
 * and the order of tied scores match too (SAM always passes idxs = 0).
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
  if (n * 4 > VANILLA_NUMEL_THRESHOLD) return batchedNmsVanilla(boxes, scores, idxs, iouThreshold);
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
