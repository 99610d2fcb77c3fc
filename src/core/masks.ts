/**
 * Per-mask helpers of automatic mask generation, on flat typed arrays.
 * Reference: segment_anything/utils/amg.py (calculate_stability_score, batched_mask_to_box,
 * is_box_near_crop_edge, uncrop_boxes_xyxy, uncrop_points, box_xyxy_to_xywh,
 * remove_small_regions) and OpenCV connectedComponentsWithStats (8-connectivity).
 */
import type { BinaryMask, BoxXywh, BoxXyxy } from './types.js';

/**
 * amg.py calculate_stability_score for `n` masks of logits [n, h, w] (row-major):
 * |logits > t+offset| / |logits > t-offset|, both counts in one pass.
 * PyTorch compares a float32 tensor with a Python float in float32, so the thresholds are
 * rounded to float32 here; the int32/int32 quotient is float32 (NaN for an empty union).
 */
export function calculateStabilityScore(
  logits: Float32Array,
  n: number,
  h: number,
  w: number,
  maskThreshold: number,
  thresholdOffset: number,
): Float32Array {
  const hi = Math.fround(maskThreshold + thresholdOffset);
  const lo = Math.fround(maskThreshold - thresholdOffset);
  const hw = h * w;
  const out = new Float32Array(n);
  for (let b = 0; b < n; b++) {
    let intersections = 0;
    let unions = 0;
    const end = (b + 1) * hw;
    for (let i = b * hw; i < end; i++) {
      const v = logits[i];
      if (v > hi) intersections++;
      if (v > lo) unions++;
    }
    out[b] = intersections / unions;
  }
  return out;
}

/**
 * amg.py batched_mask_to_box, row by row: callers give each row's first and last set column,
 * box() is XYXY with inclusive max, [0,0,0,0] when no row had a pixel.
 */
class BoxScan {
  private minX: number;
  private maxX = -1;
  private minY = -1;
  private maxY = -1;
  constructor(w: number) {
    this.minX = w;
  }
  /** Row y has set pixels from column `first` to `last` (first >= 0). */
  row(y: number, first: number, last: number): void {
    if (first < this.minX) this.minX = first;
    if (last > this.maxX) this.maxX = last;
    if (this.minY < 0) this.minY = y;
    this.maxY = y;
  }
  box(): BoxXyxy {
    return this.maxY < 0 ? [0, 0, 0, 0] : [this.minX, this.minY, this.maxX, this.maxY];
  }
}

export interface MaskLogitStats {
  /** float32 stability score (NaN when no logit exceeds t - offset). */
  stabilityScore: number;
  /** Number of pixels with logit > maskThreshold. */
  area: number;
  /** XYXY with inclusive max indices; [0,0,0,0] for an empty mask (amg.py batched_mask_to_box). */
  box: BoxXyxy;
}

/**
 * Fused single pass over one mask's logits (h×w row-major, starting at `offset` in `logits`):
 * stability score, binarization at > maskThreshold into `outMask` (h*w, overwritten when given),
 * area and box of the binary mask.
 */
export function maskLogitStats(
  logits: Float32Array,
  offset: number,
  h: number,
  w: number,
  maskThreshold: number,
  thresholdOffset: number,
  outMask?: Uint8Array,
  /**
   * Per row, the only columns that may hold a value above the lowest threshold (Upscaler's
   * activeStart/activeEnd); the others are not read and count as below every threshold.
   */
  active?: { activeStart: Int32Array; activeEnd: Int32Array },
): MaskLogitStats {
  const t = Math.fround(maskThreshold);
  const hi = Math.fround(maskThreshold + thresholdOffset);
  const lo = Math.fround(maskThreshold - thresholdOffset);
  let intersections = 0;
  let unions = 0;
  let area = 0;
  const scan = new BoxScan(w);
  for (let y = 0; y < h; y++) {
    const rowStart = offset + y * w;
    const outRow = y * w;
    const x0 = active ? active.activeStart[y] : 0;
    const x1 = active ? Math.max(x0, active.activeEnd[y]) : w;
    if (outMask && active) {
      outMask.fill(0, outRow, outRow + x0);
      outMask.fill(0, outRow + x1, outRow + w);
    }
    let first = -1;
    let last = -1;
    for (let x = x0; x < x1; x++) {
      const v = logits[rowStart + x];
      if (v > hi) intersections++;
      if (v > lo) unions++;
      if (v > t) {
        area++;
        if (first < 0) first = x;
        last = x;
        if (outMask) outMask[outRow + x] = 1;
      } else if (outMask) {
        outMask[outRow + x] = 0;
      }
    }
    if (first >= 0) scan.row(y, first, last);
  }
  return { stabilityScore: Math.fround(intersections / unions), area, box: scan.box() };
}

/** amg.py batched_mask_to_box for one row-major mask: XYXY, inclusive max, empty → [0,0,0,0]. */
export function maskToBox(mask: BinaryMask): BoxXyxy {
  const { data, h, w } = mask;
  const scan = new BoxScan(w);
  for (let y = 0; y < h; y++) {
    const row = y * w;
    let first = -1;
    let last = -1;
    for (let x = 0; x < w; x++) {
      if (data[row + x] !== 0) {
        if (first < 0) first = x;
        last = x;
      }
    }
    if (first >= 0) scan.row(y, first, last);
  }
  return scan.box();
}

/** amg.py batched_mask_to_box for masks [n, h, w] (row-major bytes) → Int32Array [n, 4] XYXY. */
export function batchedMaskToBox(masks: Uint8Array, n: number, h: number, w: number): Int32Array {
  const out = new Int32Array(n * 4);
  const hw = h * w;
  for (let b = 0; b < n; b++) {
    const box = maskToBox({ data: masks.subarray(b * hw, (b + 1) * hw), h, w });
    out.set(box, b * 4);
  }
  return out;
}

/**
 * amg.py is_box_near_crop_edge for one box given in crop coordinates (XYXY): the box is
 * uncropped first, then each coordinate is compared with torch.isclose(atol, rtol=0), i.e.
 * |a - b| <= atol, against the crop box and the original image box. True when some coordinate
 * is near a crop edge that is not also near an image edge.
 */
export function isBoxNearCropEdge(
  box: ArrayLike<number>,
  cropBox: BoxXyxy,
  origBox: BoxXyxy,
  atol = 20,
): boolean {
  const x0 = cropBox[0];
  const y0 = cropBox[1];
  for (let i = 0; i < 4; i++) {
    const v = box[i] + ((i & 1) === 0 ? x0 : y0);
    const nearCrop = Math.abs(v - cropBox[i]) <= atol;
    const nearImage = Math.abs(v - origBox[i]) <= atol;
    if (nearCrop && !nearImage) return true;
  }
  return false;
}

type NumericArray = number[] | Float32Array | Float64Array | Int32Array;

/** A copy of flat (x, y, x, y, ...) values with the crop's (x0, y0) added: even slots x, odd y. */
function uncropXy<T extends NumericArray>(values: T, cropBox: BoxXyxy, stride: number): T {
  const out = values.slice() as T;
  const [x0, y0] = cropBox;
  const n = out.length - (out.length % stride);
  for (let i = 0; i < n; i += 2) {
    out[i] += x0;
    out[i + 1] += y0;
  }
  return out;
}

/** amg.py uncrop_boxes_xyxy: boxes [n, 4] XYXY (flat) shifted by the crop's (x0, y0); returns a copy. */
export function uncropBoxesXyxy<T extends NumericArray>(boxes: T, cropBox: BoxXyxy): T {
  return uncropXy(boxes, cropBox, 4);
}

/** amg.py uncrop_points: points [n, 2] (x, y) (flat) shifted by the crop's (x0, y0); returns a copy. */
export function uncropPoints<T extends NumericArray>(points: T, cropBox: BoxXyxy): T {
  return uncropXy(points, cropBox, 2);
}

/** amg.py box_xyxy_to_xywh: [x0, y0, x1 - x0, y1 - y0] (no +1, as SAM writes `bbox`). */
export function boxXyxyToXywh(box: ArrayLike<number>): BoxXywh {
  return [box[0], box[1], box[2] - box[0], box[3] - box[1]];
}

function findRoot(parent: Int32Array, i: number): number {
  let r = i;
  while (parent[r] !== r) r = parent[r];
  // Path compression.
  while (parent[i] !== r) {
    const next = parent[i];
    parent[i] = r;
    i = next;
  }
  return r;
}

/** Union keeping the smaller label as root (as OpenCV's label solver does). */
function union(parent: Int32Array, a: number, b: number): number {
  const ra = findRoot(parent, a);
  const rb = findRoot(parent, b);
  if (ra < rb) {
    parent[rb] = ra;
    return ra;
  }
  parent[ra] = rb;
  return rb;
}

interface Components {
  /** Component id per pixel (h*w), -1 for background; ids are 0-based in raster order of first pixel. */
  labels: Int32Array;
  /** Pixel count per component. */
  sizes: Int32Array;
}

/** 8-connected components of the nonzero pixels of `src` (of its zero pixels when `invert`): two-pass union-find. */
function connectedComponents8(src: Uint8Array, h: number, w: number, invert: boolean): Components {
  const n = h * w;
  const labels = new Int32Array(n);
  // Provisional labels start at 1; 0 = background. A new label is only created at a pixel whose
  // W, NW, N, NE neighbours are background, so those pixels are pairwise non-adjacent (8-conn):
  // at most ceil(h/2)*ceil(w/2) of them.
  const parent = new Int32Array(((h + 1) >> 1) * ((w + 1) >> 1) + 1);
  let next = 1;
  const on = invert ? 0 : 1;
  for (let y = 0; y < h; y++) {
    const row = y * w;
    const up = row - w;
    for (let x = 0; x < w; x++) {
      const i = row + x;
      if ((src[i] !== 0 ? 1 : 0) !== on) {
        labels[i] = 0;
        continue;
      }
      const lW = x > 0 ? labels[i - 1] : 0;
      const lN = y > 0 ? labels[up + x] : 0;
      let l: number;
      if (lN !== 0) {
        // N touches W, NW and NE, which were already merged with it.
        l = lN;
      } else {
        const lNE = y > 0 && x + 1 < w ? labels[up + x + 1] : 0;
        const lNW = y > 0 && x > 0 ? labels[up + x - 1] : 0;
        if (lNE !== 0) {
          l = lNE;
          // NE is not adjacent to W or NW when N is background.
          if (lW !== 0) union(parent, lNE, lW);
          else if (lNW !== 0) union(parent, lNE, lNW);
        } else if (lW !== 0) {
          l = lW; // W and NW are vertically adjacent: already merged.
        } else if (lNW !== 0) {
          l = lNW;
        } else {
          if (next >= parent.length) throw new Error('connected components: label overflow');
          l = next;
          parent[next] = next;
          next++;
        }
      }
      labels[i] = l;
    }
  }
  // Flatten provisional labels to 0-based component ids in raster order of first pixel.
  const compOf = new Int32Array(next).fill(-1);
  let nComp = 0;
  for (let i = 0; i < n; i++) {
    const l = labels[i];
    if (l === 0) {
      labels[i] = -1;
      continue;
    }
    const r = findRoot(parent, l);
    let c = compOf[r];
    if (c < 0) {
      c = nComp++;
      compOf[r] = c;
    }
    labels[i] = c;
  }
  const sizes = new Int32Array(nComp);
  for (let i = 0; i < n; i++) {
    const c = labels[i];
    if (c >= 0) sizes[c]++;
  }
  return { labels, sizes };
}

/**
 * Index of the largest component, ties broken as np.argmax over OpenCV's labels would:
 * OpenCV's default 8-connectivity labelling (Spaghetti/BBDT) scans 2×2 blocks and numbers
 * components by the first block that contains them, so among equally large components the one
 * whose first pixel in block-raster order comes first wins.
 */
function largestComponentOpenCvOrder(comp: Components, w: number): number {
  const { labels, sizes } = comp;
  let maxSize = -1;
  let nTied = 0;
  for (let c = 0; c < sizes.length; c++) {
    if (sizes[c] > maxSize) {
      maxSize = sizes[c];
      nTied = 1;
    } else if (sizes[c] === maxSize) nTied++;
  }
  if (nTied === 1) return sizes.indexOf(maxSize);
  const blocksPerRow = (w + 1) >> 1;
  const firstBlock = new Float64Array(sizes.length).fill(Infinity);
  for (let i = 0; i < labels.length; i++) {
    const c = labels[i];
    if (c < 0 || sizes[c] !== maxSize) continue;
    const y = Math.floor(i / w);
    const x = i - y * w;
    const key = (y >> 1) * blocksPerRow + (x >> 1);
    if (key < firstBlock[c]) firstBlock[c] = key;
  }
  let best = -1;
  for (let c = 0; c < sizes.length; c++) {
    if (sizes[c] === maxSize && (best < 0 || firstBlock[c] < firstBlock[best])) best = c;
  }
  return best;
}

/**
 * amg.py remove_small_regions with OpenCV 8-connectivity.
 * - 'holes': components of the inverted mask (holes *and* background regions touching the
 *   border) smaller than areaThresh are filled.
 * - 'islands': components smaller than areaThresh are removed; if every component is small,
 *   only the largest is kept (and `changed` is still true).
 * Returns the input mask object itself with changed = false when no component is small.
 */
export function removeSmallRegions(
  mask: BinaryMask,
  areaThresh: number,
  mode: 'holes' | 'islands',
): { mask: BinaryMask; changed: boolean } {
  const { data, h, w } = mask;
  const correctHoles = mode === 'holes';
  const comp = connectedComponents8(data, h, w, correctHoles);
  const { labels, sizes } = comp;
  const nComp = sizes.length;
  // 1 = keep this working-mask component in the output.
  const keep = new Uint8Array(nComp);
  let nSmall = 0;
  for (let c = 0; c < nComp; c++) {
    if (sizes[c] < areaThresh) {
      nSmall++;
      if (correctHoles) keep[c] = 1;
    } else if (!correctHoles) {
      keep[c] = 1;
    }
  }
  if (nSmall === 0) return { mask, changed: false };
  const out = new Uint8Array(h * w);
  if (correctHoles) {
    // Result = working background (the original foreground) ∪ small inverted components.
    for (let i = 0; i < out.length; i++) {
      const c = labels[i];
      out[i] = c < 0 || keep[c] === 1 ? 1 : 0;
    }
  } else {
    if (nSmall === nComp) keep[largestComponentOpenCvOrder(comp, w)] = 1;
    for (let i = 0; i < out.length; i++) {
      const c = labels[i];
      out[i] = c >= 0 && keep[c] === 1 ? 1 : 0;
    }
  }
  return { mask: { data: out, h, w }, changed: true };
}

/**
 * SAM2Transforms.postprocess_masks' hole filling and sprinkle removal, on one mask's low-res
 * logits [h, w] (SAM 2 applies it before upscaling): background components (logits <= threshold)
 * of at most maxHoleArea pixels become threshold + 10, and foreground components of the *input*
 * (logits > threshold) of at most maxSprinkleArea pixels become threshold - 10. Components are
 * 8-connected (sam2/utils/misc.py get_connected_components) and include those touching the
 * border, as there. An area of 0 turns that half off. Returns a new array, or `logits` itself
 * when nothing changes.
 */
export function fillHolesAndSprinkles(logits: Float32Array, h: number, w: number, maxHoleArea: number, maxSprinkleArea: number, threshold: number): Float32Array {
  const fg = new Uint8Array(h * w);
  for (let i = 0; i < fg.length; i++) fg[i] = logits[i] > threshold ? 1 : 0;
  let out = logits;
  for (const [invert, maxArea, value] of [
    [true, maxHoleArea, Math.fround(threshold + 10)],
    [false, maxSprinkleArea, Math.fround(threshold - 10)],
  ] as const) {
    if (!(maxArea > 0)) continue;
    const { labels, sizes } = connectedComponents8(fg, h, w, invert);
    if (!sizes.some((s) => s <= maxArea)) continue;
    if (out === logits) out = logits.slice();
    for (let i = 0; i < labels.length; i++) {
      const c = labels[i];
      if (c >= 0 && sizes[c] <= maxArea) out[i] = value;
    }
  }
  return out;
}
