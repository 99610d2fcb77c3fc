/**
 * src/core/nms.ts: torchvision's nms / batched_nms against the golden data
 * (amg-golden-2.json `batched_nms_large`; amg-golden.json's `batched_nms` is in amg-golden.test.ts),
 * the unstable sort against libstdc++'s std::sort, and the kept sets against a naive reference
 * written here from the definition (it shares no code with the kernel).
 */
import { describe, expect, it } from 'vitest';
import { rng } from './helpers/rng.js';
import { batchedNms, nms, stdSortIndices } from '../src/core/nms.js';
import type { BoxXyxy } from '../src/core/types.js';
import { loadGolden } from './helpers/golden.js';

interface GoldenNmsCase {
  boxes_xyxy: BoxXyxy[];
  scores: number[];
  idxs?: number[];
  iou_threshold: number;
  keep: number[];
}

interface GoldenNmsLargeCase extends GoldenNmsCase {
  name: string;
  idxs: number[];
  keep_stable_order: number[];
  torchvision_path: 'vanilla' | 'coordinate_trick';
}

const golden2 = loadGolden<{ batched_nms_large: GoldenNmsLargeCase[] }>('amg-golden-2.json');


const ascending = (a: readonly number[]): number[] => [...a].sort((x, y) => x - y);

/**
 * Greedy NMS from the definition: visit boxes by decreasing score (equal scores by index), keep a
 * box unless a box already kept, of the same class, overlaps it with IoU > iouThreshold. IoU in
 * float32: area (x2-x1)*(y2-y1), intersection clamped at 0, inter / (area_a + area_b - inter);
 * 0/0 (two empty boxes) is NaN, which is not > the threshold. boxes [n, 4] XYXY; returns the
 * kept indices in visiting order.
 */
function naiveNms(boxes: Float32Array, scores: ArrayLike<number>, iouThreshold: number, classes?: ArrayLike<number>): number[] {
  const f = Math.fround;
  const n = scores.length;
  const area = (i: number): number => f(f(boxes[i * 4 + 2] - boxes[i * 4]) * f(boxes[i * 4 + 3] - boxes[i * 4 + 1]));
  const iou = (i: number, j: number): number => {
    const w = Math.max(0, f(Math.min(boxes[i * 4 + 2], boxes[j * 4 + 2]) - Math.max(boxes[i * 4], boxes[j * 4])));
    const h = Math.max(0, f(Math.min(boxes[i * 4 + 3], boxes[j * 4 + 3]) - Math.max(boxes[i * 4 + 1], boxes[j * 4 + 1])));
    const inter = f(w * h);
    return f(inter / f(f(area(i) + area(j)) - inter));
  };
  // Selection by hand (not Array.prototype.sort): the first unvisited index of the highest score.
  const visited = new Uint8Array(n);
  const kept: number[] = [];
  for (let step = 0; step < n; step++) {
    let best = -1;
    for (let i = 0; i < n; i++) if (visited[i] === 0 && (best < 0 || scores[i] > scores[best])) best = i;
    visited[best] = 1;
    const overlapped = kept.some((k) => (classes === undefined || classes[k] === classes[best]) && iou(k, best) > iouThreshold);
    if (!overlapped) kept.push(best);
  }
  return kept;
}

/**
 * A random problem with what makes NMS hard to get exactly right: boxes on a small integer grid
 * (IoUs exactly at 1/2, 1/3, ...), tied scores, exact duplicates, empty boxes [0,0,0,0] and
 * zero-width ones, several class ids. Coordinates stay below 100 and ids below 6, so the
 * coordinate trick's float32 offsets are exact and both batched_nms paths mean plain per-class NMS.
 */
function randomProblem(r: () => number, n: number): { boxes: Float32Array; scores: Float32Array; idxs: Int32Array } {
  const boxes = new Float32Array(n * 4);
  const scores = new Float32Array(n);
  const idxs = new Int32Array(n);
  const nClasses = 1 + Math.floor(r() * 5);
  const scoreLevels = 1 + Math.floor(r() * 10);
  for (let i = 0; i < n; i++) {
    const kind = r();
    if (kind < 0.08) {
      boxes.set([0, 0, 0, 0], i * 4);
    } else if (kind < 0.18 && i > 0) {
      const j = Math.floor(r() * i);
      boxes.copyWithin(i * 4, j * 4, j * 4 + 4);
    } else {
      const x = Math.floor(r() * 60);
      const y = Math.floor(r() * 60);
      const w = kind < 0.22 ? 0 : 1 + Math.floor(r() * 30);
      boxes.set([x, y, x + w, y + 1 + Math.floor(r() * 30)], i * 4);
    }
    scores[i] = r() < 0.8 ? Math.floor(r() * scoreLevels) / scoreLevels : r();
    idxs[i] = Math.floor(r() * nClasses);
  }
  return { boxes, scores, idxs };
}

const THRESHOLDS = [0, 0.3, 1 / 3, 0.5, 0.7, 1];

describe('batched_nms_large golden (amg-golden-2.json)', () => {
  it('has the five documented cases', () => {
    expect(golden2.batched_nms_large.map((c) => c.name)).toEqual([
      'five_classes_1200_iou0.7',
      'crop_ids_2000_iou0.7',
      'sparse_ids_3000_iou0.5',
      'boundary_1000_iou0.5',
      'boundary_1001_iou0.5',
    ]);
  });

  golden2.batched_nms_large.forEach((c) => {
    it(`${c.name}: ${c.scores.length} boxes, ${c.torchvision_path} path, keep exactly`, () => {
      expect(c.torchvision_path).toBe(c.scores.length > 1000 ? 'vanilla' : 'coordinate_trick');
      const boxes = Float32Array.from(c.boxes_xyxy.flat());
      const scores = Float32Array.from(c.scores);
      const keep = batchedNms(boxes, scores, c.idxs, c.iou_threshold);
      expect(keep).toEqual(c.keep);
      expect(ascending(keep)).toEqual(ascending(c.keep_stable_order));
      expect(ascending(naiveNms(boxes, scores, c.iou_threshold, c.idxs))).toEqual(ascending(c.keep));
    });
  });
});

describe('stdSortIndices', () => {
  const desc = (a: number, b: number): boolean => (Number.isNaN(a) && !Number.isNaN(b)) || a > b;

  // Expected permutations printed by std::sort (g++ 12.2, the libstdc++ of Debian 12's torch
  // build) over (float, int64) pairs with torch's KeyValueCompDesc. The first input is McIlroy's
  // antiqsort adversary run against this port: it exhausts the depth limit, so the heapsort
  // (__partial_sort) path is covered; the second has NaNs and many ties across one partition.
  it('matches libstdc++ on an input that forces heapsort', () => {
    const keys = [
      -93, -1, -71, -3, -85, -5, -69, -7, -100, -9, -67, -11, -83, -13, -65, -15, -91, -17, -63, -19, -81, -21, -24, -23,
      -98, -96, -94, -92, -90, -88, -86, -84, -82, -80, -78, -76, -74, -72, -70, -68, -66, -64, -95, -79, -89, -77, -97,
      -75, -87, -73, 0, -2, -4, -6, -8, -10, -12, -14, -16, -18, -20, -22, -62, -59, -60, -57, -58, -55, -56, -53, -54,
      -51, -52, -49, -50, -47, -48, -45, -46, -43, -44, -41, -42, -39, -40, -37, -38, -35, -36, -33, -34, -31, -32, -29,
      -30, -27, -28, -25, -26, -61,
    ];
    const expected = [
      50, 1, 51, 3, 52, 5, 53, 7, 54, 9, 55, 11, 56, 13, 57, 15, 58, 17, 59, 19, 60, 21, 61, 23, 22, 97, 98, 95, 96, 93,
      94, 91, 92, 89, 90, 87, 88, 85, 86, 83, 84, 81, 82, 79, 80, 77, 78, 75, 76, 73, 74, 71, 72, 69, 70, 67, 68, 65, 66,
      63, 64, 99, 62, 18, 41, 14, 40, 10, 39, 6, 38, 2, 37, 49, 36, 47, 35, 45, 34, 43, 33, 20, 32, 12, 31, 4, 30, 48, 29,
      44, 28, 16, 27, 0, 26, 42, 25, 46, 24, 8,
    ];
    expect(Array.from(stdSortIndices(Float32Array.from(keys), desc))).toEqual(expected);
  });

  it('matches libstdc++ with NaN keys and ties (NaN first)', () => {
    const N = Number.NaN;
    const keys = [2, N, 4, 2, 1, N, 1, 3, 1, 2, 2, 5, 2, 4, 4, 2, 4, 1, N, 3, 4, 3, 2, 1, 3, 1, 2, 2, 3, N, 4, 5, N];
    const expected = [1, 32, 29, 18, 5, 31, 11, 13, 20, 16, 14, 2, 30, 28, 24, 19, 7, 21, 27, 0, 26, 22, 3, 15, 12, 10, 9, 23, 17, 25, 8, 6, 4];
    expect(Array.from(stdSortIndices(Float32Array.from(keys), desc))).toEqual(expected);
  });

  it('returns a permutation in comparator order for random tied keys', () => {
    const r = rng(11);
    for (const n of [0, 1, 2, 16, 17, 33, 200, 1500]) {
      const keys = Float32Array.from({ length: n }, () => Math.floor(r() * 7) / 7);
      const order = Array.from(stdSortIndices(keys, desc));
      expect(ascending(order)).toEqual(Array.from({ length: n }, (_, i) => i));
      for (let i = 1; i < n; i++) expect(keys[order[i - 1]]).toBeGreaterThanOrEqual(keys[order[i]]);
    }
  });
});

describe('nms and batchedNms against a naive reference', () => {
  it('nms: same kept indices in the same order on 300 random problems', () => {
    const r = rng(2024);
    for (let t = 0; t < 300; t++) {
      const { boxes, scores } = randomProblem(r, Math.floor(r() * 60));
      const thr = THRESHOLDS[t % THRESHOLDS.length];
      expect(nms(boxes, scores, thr), `problem ${t}, iou ${thr}`).toEqual(naiveNms(boxes, scores, thr));
    }
  });

  it('batchedNms up to 1000 boxes (coordinate trick): same kept indices, same order', () => {
    const r = rng(7);
    for (let t = 0; t < 300; t++) {
      const n = t < 290 ? Math.floor(r() * 80) : 900 + Math.floor(r() * 101);
      const { boxes, scores, idxs } = randomProblem(r, n);
      const thr = THRESHOLDS[t % THRESHOLDS.length];
      expect(batchedNms(boxes, scores, idxs, thr), `problem ${t}, ${n} boxes, iou ${thr}`).toEqual(naiveNms(boxes, scores, thr, idxs));
    }
  });

  it('batchedNms above 1000 boxes (per class): same kept set, ordered by decreasing score', () => {
    const r = rng(99);
    for (let t = 0; t < 6; t++) {
      const n = 1001 + Math.floor(r() * 1500);
      const { boxes, scores, idxs } = randomProblem(r, n);
      const thr = THRESHOLDS[t % THRESHOLDS.length];
      const keep = batchedNms(boxes, scores, idxs, thr);
      expect(ascending(keep), `problem ${t}, ${n} boxes, iou ${thr}`).toEqual(ascending(naiveNms(boxes, scores, thr, idxs)));
      for (let i = 1; i < keep.length; i++) expect(scores[keep[i - 1]]).toBeGreaterThanOrEqual(scores[keep[i]]);
    }
  });

  it('classes never suppress each other; NaN class ids keep nothing on the per-class path', () => {
    const n = 1001;
    const boxes = new Float32Array(n * 4);
    for (let i = 0; i < n; i++) boxes.set([0, 0, 10, 10], i * 4);
    const scores = new Float32Array(n).fill(0.5);
    const idxs = Float64Array.from({ length: n }, (_, i) => (i < 3 ? [4, -0, 0][i] : Number.NaN));
    // torch: idxs == NaN is false for every id, so those boxes are in no class; -0 == 0.
    expect(ascending(batchedNms(boxes, scores, idxs, 0.5))).toEqual([0, 1]);
  });
});
