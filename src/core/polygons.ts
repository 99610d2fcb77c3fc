/**
 * One mask (COCO RLE) → its polygons, the way the exports need them. Pure.
 *
 * Outer outlines only: COCO polygons (pycocotools frPyObjects unions them), YOLO lines and Label
 * Studio polygon regions cannot carry holes, so holes are filled and counted (`holePixels`).
 */
import type { CocoRle, UncompressedRle } from './types.js';
import { traceOuterRings } from './contours.js';
import { decodeRleCrop, fillHoles } from './mask-crop.js';
import { simplifyRing } from './simplify.js';

export interface MaskPolygons {
  /** One ring per 4-connected piece, flat [x1, y1, ...] in image pixel-edge coordinates, largest first. */
  rings: (Int32Array | Float64Array)[];
  /** Pixels inside holes that the rings fill (0: the mask had no hole). */
  holePixels: number;
  imageW: number;
  imageH: number;
}

/** Pieces ordered largest first (by pixel-exact ring area, before simplification). */
function ringAreaAbs(ring: ArrayLike<number>): number {
  const n = ring.length >> 1;
  let a = 0;
  for (let i = 0, j = n - 1; i < n; j = i++) a += ring[2 * j] * ring[2 * i + 1] - ring[2 * i] * ring[2 * j + 1];
  return Math.abs(a / 2);
}

/**
 * The outer polygons of a mask, Douglas-Peucker simplified within `tolerance` pixels (0: exact
 * outline, collinear vertices dropped). An empty mask gives no ring.
 */
export function maskPolygons(rle: CocoRle | UncompressedRle, tolerance: number): MaskPolygons {
  const [imageH, imageW] = rle.size;
  const crop = decodeRleCrop(rle);
  if (!crop) return { rings: [], holePixels: 0, imageW, imageH };
  const holePixels = fillHoles(crop);
  const traced = traceOuterRings(crop);
  const areas = traced.map(ringAreaAbs);
  const order = traced.map((_, i) => i).sort((a, b) => areas[b] - areas[a] || a - b);
  const rings = order.map((i) => simplifyRing(traced[i], tolerance));
  return { rings, holePixels, imageW, imageH };
}

/** Index pair (i in a, j in b) of the closest vertices of two flat rings (ultralytics min_index). */
function closestPair(a: ArrayLike<number>, b: ArrayLike<number>): [number, number] {
  let best = Infinity;
  let bi = 0;
  let bj = 0;
  const na = a.length >> 1;
  const nb = b.length >> 1;
  for (let i = 0; i < na; i++) {
    const ax = a[2 * i];
    const ay = a[2 * i + 1];
    for (let j = 0; j < nb; j++) {
      const d = (ax - b[2 * j]) ** 2 + (ay - b[2 * j + 1]) ** 2;
      if (d < best) {
        best = d;
        bi = i;
        bj = j;
      }
    }
  }
  return [bi, bj];
}

type Pts = [number, number][];

const toPts = (ring: ArrayLike<number>): Pts => {
  const out: Pts = [];
  for (let i = 0; i + 1 < ring.length; i += 2) out.push([ring[i], ring[i + 1]]);
  return out;
};

/**
 * Several rings as one, as Ultralytics' converter (ultralytics/data/converter.py
 * merge_multi_segment) joins the pieces of a COCO object for a YOLO label line: consecutive rings
 * are linked at their closest vertices by a zero-width bridge walked out and back, so an even-odd
 * (or cv2.fillPoly) fill of the one polygon gives the union of the pieces. Returns a flat ring.
 */
export function mergeMultiSegment(rings: readonly ArrayLike<number>[]): number[] {
  if (rings.length === 1) return Array.from(rings[0]);
  const segs: Pts[] = rings.map(toPts);
  const idx: number[][] = segs.map(() => []);
  for (let i = 1; i < segs.length; i++) {
    const [a, b] = closestPair(rings[i - 1], rings[i]);
    idx[i - 1].push(a);
    idx[i].push(b);
  }
  const out: Pts[] = [];
  const last = segs.length - 1;
  // Forward pass: each ring rolled to start at its first link (middle rings reversed when their
  // links come in decreasing order), closed by repeating its start; middle rings contribute the
  // part up to their second link.
  for (let i = 0; i < segs.length; i++) {
    let id = idx[i];
    if (id.length === 2 && id[0] > id[1]) {
      id = [id[1], id[0]];
      segs[i] = segs[i].slice().reverse();
    }
    const s = segs[i];
    const rolled = s.slice(id[0]).concat(s.slice(0, id[0]));
    rolled.push(rolled[0]);
    segs[i] = rolled;
    if (i === 0 || i === last) out.push(rolled);
    else out.push(rolled.slice(0, id[1] - id[0] + 1));
  }
  // Backward pass: the rest of each middle ring, from its second link back to its start.
  for (let i = last; i >= 0; i--) {
    if (i === 0 || i === last) continue;
    const nidx = Math.abs(idx[i][1] - idx[i][0]);
    out.push(segs[i].slice(nidx));
  }
  return out.flat(2);
}
