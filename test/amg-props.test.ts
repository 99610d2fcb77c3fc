/**
 * Property and corner-case tests of src/amg beyond the golden data.
 */
import { describe, expect, it } from 'vitest';
import { rng } from './helpers/rng.js';
import { batchedMaskToBox, boxXyxyToXywh, calculateStabilityScore, isBoxNearCropEdge, maskLogitStats, maskToBox, removeSmallRegions, uncropBoxesXyxy, uncropPoints } from '../src/core/masks.js';
import { batchedNms, nms } from '../src/core/nms.js';
import { RleEncoder, cocoToUncompressed, decodeRle, encodeMask, encodeMaskInCrop, maskToRleUncompressed, maskToRleUncompressedInCrop, rleArea, rleFromString, rleToBbox, rleToString, uncompressedToCoco } from '../src/core/rle.js';
import { createUpscaler } from '../src/core/upscale.js';
import type { BinaryMask, BoxXyxy } from '../src/core/types.js';
import { postprocessMasksReference } from './helpers/reference.js';


/** Random blobby mask: rectangles and noise, so it has long runs and short ones. */
function randomMask(r: () => number, h: number, w: number): BinaryMask {
  const data = new Uint8Array(h * w);
  const nRect = Math.floor(r() * 4);
  for (let k = 0; k < nRect; k++) {
    const x0 = Math.floor(r() * w);
    const y0 = Math.floor(r() * h);
    const x1 = x0 + Math.floor(r() * (w - x0 + 1));
    const y1 = y0 + Math.floor(r() * (h - y0 + 1));
    for (let y = y0; y < y1; y++) data.fill(1, y * w + x0, y * w + x1);
  }
  const noise = r() * 0.2;
  for (let i = 0; i < data.length; i++) if (r() < noise) data[i] ^= 1;
  return { data, h, w };
}

function fromRows(rows: string[]): BinaryMask {
  const h = rows.length;
  const w = rows[0].length;
  const data = new Uint8Array(h * w);
  rows.forEach((row, y) => {
    for (let x = 0; x < w; x++) data[y * w + x] = row[x] === '#' ? 1 : 0;
  });
  return { data, h, w };
}

function toRows(m: BinaryMask): string[] {
  const rows: string[] = [];
  for (let y = 0; y < m.h; y++) {
    let s = '';
    for (let x = 0; x < m.w; x++) s += m.data[y * m.w + x] ? '#' : '.';
    rows.push(s);
  }
  return rows;
}

/** Straightforward column-major RLE of a row-major mask (SAM's transpose + diff), for comparison. */
function naiveRle(m: BinaryMask): number[] {
  const flat: number[] = [];
  for (let x = 0; x < m.w; x++) for (let y = 0; y < m.h; y++) flat.push(m.data[y * m.w + x]);
  const counts: number[] = flat[0] === 1 ? [0] : [];
  let run = 1;
  for (let i = 1; i < flat.length; i++) {
    if (flat[i] !== flat[i - 1]) {
      counts.push(run);
      run = 0;
    }
    run++;
  }
  counts.push(run);
  return counts;
}

describe('RLE properties', () => {
  it('encode/decode round-trips and matches a naive encoder on random masks', () => {
    const r = rng(1);
    for (let t = 0; t < 300; t++) {
      const h = 1 + Math.floor(r() * 40);
      const w = 1 + Math.floor(r() * 40);
      const m = randomMask(r, h, w);
      const rle = maskToRleUncompressed(m);
      expect(rle.counts).toEqual(naiveRle(m));
      expect(rle.counts.reduce((a, b) => a + b, 0)).toBe(h * w);
      const coco = encodeMask(m);
      expect(coco.size).toEqual([h, w]);
      expect(rleFromString(coco.counts)).toEqual(rle.counts);
      expect(decodeRle(coco).data).toEqual(m.data);
      expect(decodeRle(rle).data).toEqual(m.data);
      expect(cocoToUncompressed(uncompressedToCoco(rle))).toEqual(rle);
      let area = 0;
      for (const v of m.data) area += v;
      expect(rleArea(coco)).toBe(area);
      // pycocotools toBbox = SAM box with +1 widths (and 0s for an empty mask).
      const [x0, y0, x1, y1] = maskToBox(m);
      expect(rleToBbox(coco)).toEqual(area === 0 ? [0, 0, 0, 0] : [x0, y0, x1 - x0 + 1, y1 - y0 + 1]);
    }
  });

  it('RleEncoder.scanInCrop reading only the mask box gives the runs of the whole crop', () => {
    const r = rng(11);
    const whole = new RleEncoder();
    const boxed = new RleEncoder();
    for (let t = 0; t < 300; t++) {
      const h = 1 + Math.floor(r() * 30);
      const w = 1 + Math.floor(r() * 30);
      // Ones only inside a random sub-rectangle (or none), as a mask with that box.
      const data = new Uint8Array(h * w);
      const [bx0, by0] = [Math.floor(r() * w), Math.floor(r() * h)];
      const [bx1, by1] = [bx0 + Math.floor(r() * (w - bx0)), by0 + Math.floor(r() * (h - by0))];
      if (r() > 0.1) for (let y = by0; y <= by1; y++) for (let x = bx0; x <= bx1; x++) data[y * w + x] = r() > 0.4 ? 1 : 0;
      const mask = { data, h, w };
      const box = maskToBox(mask);
      const ih = h + Math.floor(r() * 10);
      const iw = w + Math.floor(r() * 10);
      const cx = Math.floor(r() * (iw - w + 1));
      const cy = Math.floor(r() * (ih - h + 1));
      const crop: BoxXyxy = [cx, cy, cx + w, cy + h];
      const n = whole.scanInCrop(mask, crop, [ih, iw]);
      expect(boxed.scanInCrop(mask, crop, [ih, iw], box)).toBe(n);
      expect(boxed.compact()).toEqual(whole.compact());
      expect(boxed.area()).toBe(whole.area());
    }
  });

  it('all-zero and all-one masks', () => {
    const zeros = { data: new Uint8Array(12), h: 3, w: 4 };
    expect(maskToRleUncompressed(zeros).counts).toEqual([12]);
    expect(maskToBox(zeros)).toEqual([0, 0, 0, 0]);
    const ones = { data: new Uint8Array(12).fill(1), h: 3, w: 4 };
    expect(maskToRleUncompressed(ones).counts).toEqual([0, 12]);
    expect(maskToBox(ones)).toEqual([0, 0, 3, 2]);
    expect(rleToBbox(encodeMask(ones))).toEqual([0, 0, 4, 3]);
  });

  it('compressed strings round-trip large counts and large negative deltas', () => {
    const counts = [0, 2 ** 31, 5, 2 ** 32 - 1, 3, 1, 2 ** 31 + 7, 0, 123456789, 2 ** 30, 17];
    const s = rleToString(counts);
    for (let i = 0; i < s.length; i++) {
      const c = s.charCodeAt(i);
      expect(c >= 48 && c <= 111).toBe(true);
    }
    expect(rleFromString(s)).toEqual(counts);
  });

  it('known pycocotools strings', () => {
    // Worked from maskApi.c: 5 bits per char + 48, 0x20 = continuation, sign from bit 0x10 of the
    // last char; from i = 3 on the delta to the count two back is written (4-2 = 2, 1-3 = -2 → 'N').
    expect(rleToString([6])).toBe('6');
    expect(rleToString([0, 12])).toBe('0<');
    expect(rleToString([31, 32])).toBe('o0P1');
    expect(rleToString([1, 2, 3, 4, 1])).toBe('1232N');
    expect(rleToString([100, 5, 3, 7, 2])).toBe('T3532O');
    expect(rleFromString('1232N')).toEqual([1, 2, 3, 4, 1]);
    expect(rleFromString('T3532O')).toEqual([100, 5, 3, 7, 2]);
  });

  it('encodeMaskInCrop equals encoding the zero-padded full mask', () => {
    const r = rng(2);
    for (let t = 0; t < 300; t++) {
      const H = 1 + Math.floor(r() * 30);
      const W = 1 + Math.floor(r() * 30);
      const x0 = Math.floor(r() * W);
      const y0 = Math.floor(r() * H);
      const x1 = x0 + 1 + Math.floor(r() * (W - x0));
      const y1 = y0 + 1 + Math.floor(r() * (H - y0));
      const crop = t % 10 === 0 ? { data: new Uint8Array((y1 - y0) * (x1 - x0)).fill(1), h: y1 - y0, w: x1 - x0 } : randomMask(r, y1 - y0, x1 - x0);
      const full = new Uint8Array(H * W);
      for (let y = 0; y < crop.h; y++) full.set(crop.data.subarray(y * crop.w, (y + 1) * crop.w), (y0 + y) * W + x0);
      const fullMask = { data: full, h: H, w: W };
      const box: BoxXyxy = [x0, y0, x1, y1];
      expect(maskToRleUncompressedInCrop(crop, box, [H, W])).toEqual(maskToRleUncompressed(fullMask));
      expect(encodeMaskInCrop(crop, box, [H, W])).toEqual(encodeMask(fullMask));
    }
  });

  it('encodeMaskInCrop rejects a crop mask that does not fit its box', () => {
    const crop = { data: new Uint8Array(6), h: 2, w: 3 };
    expect(() => encodeMaskInCrop(crop, [0, 0, 2, 3], [10, 10])).toThrow();
    expect(() => encodeMaskInCrop(crop, [8, 0, 11, 2], [10, 10])).toThrow();
  });

  it('rleToBbox: a ones run spanning columns covers all rows', () => {
    // 4x3 image, column-major: 2 zeros, then 3 ones (rows 2,3 of column 0 and row 0 of column 1).
    expect(rleToBbox({ size: [4, 3], counts: [2, 3, 7] })).toEqual([0, 0, 2, 4]);
  });
});

describe('stability score and fused mask pass', () => {
  it('matches direct counting, NaN for an empty union, and uses > for both thresholds', () => {
    const logits = Float32Array.from([1, 1, 2, -1, -1, 0.5, -3, -3, -3, -3, -3, -3]);
    const s = calculateStabilityScore(logits, 2, 2, 3, 0, 1);
    // mask 0: > 1 → {2} = 1, > -1 → {1,1,2,0.5} = 4.
    expect(s[0]).toBe(Math.fround(1 / 4));
    expect(Number.isNaN(s[1])).toBe(true);
    const out = new Uint8Array(6).fill(7);
    const st = maskLogitStats(logits, 0, 2, 3, 0, 1, out);
    expect(Array.from(out)).toEqual([1, 1, 1, 0, 0, 1]);
    expect(st).toEqual({ stabilityScore: Math.fround(0.25), area: 4, box: [0, 0, 2, 1] });
    const empty = maskLogitStats(logits, 6, 2, 3, 0, 1);
    expect(empty.area).toBe(0);
    expect(empty.box).toEqual([0, 0, 0, 0]);
  });

  it('batchedMaskToBox gives [0,0,0,0] for empty masks', () => {
    const masks = new Uint8Array(2 * 3 * 4);
    masks[12 + 1 * 4 + 2] = 1;
    masks[12 + 2 * 4 + 3] = 1;
    expect(Array.from(batchedMaskToBox(masks, 2, 3, 4))).toEqual([0, 0, 0, 0, 2, 1, 3, 2]);
  });
});

describe('boxes and points', () => {
  it('isBoxNearCropEdge uses |a-b| <= atol and ignores image edges', () => {
    const crop: BoxXyxy = [100, 0, 300, 200];
    const orig: BoxXyxy = [0, 0, 300, 400];
    // left edge at 120 - 100 = 20 px from the crop's left edge → near (<=).
    expect(isBoxNearCropEdge([20, 50, 100, 100], crop, orig)).toBe(true);
    expect(isBoxNearCropEdge([21, 50, 100, 100], crop, orig)).toBe(false);
    // top and right touch crop edges that are image edges → not near.
    expect(isBoxNearCropEdge([50, 0, 199, 100], crop, orig)).toBe(false);
    // bottom 179 + 0 vs crop bottom 200 → 21 px: not near; 180 → near.
    expect(isBoxNearCropEdge([50, 50, 100, 179], crop, orig)).toBe(false);
    expect(isBoxNearCropEdge([50, 50, 100, 180], crop, orig)).toBe(true);
  });

  it('uncrop and XYWH', () => {
    expect(Array.from(uncropBoxesXyxy(Float32Array.from([1, 2, 3, 4, 5, 6, 7, 8]), [10, 20, 50, 60]))).toEqual([11, 22, 13, 24, 15, 26, 17, 28]);
    expect(uncropPoints([1.5, 2.5], [10, 20, 50, 60])).toEqual([11.5, 22.5]);
    expect(boxXyxyToXywh([3, 4, 10, 20])).toEqual([3, 4, 7, 16]);
  });
});

describe('nms', () => {
  it('IoU exactly at the threshold is not suppressed; above is', () => {
    // Two 2x1 boxes overlapping by one unit: IoU = 1/3, computed in float32 (0.33333334) and
    // compared with the double threshold, so 1/3 itself suppresses while 0.3333334 does not.
    const boxes = Float32Array.from([0, 0, 2, 1, 1, 0, 3, 1]);
    expect(nms(boxes, [0.9, 0.8], 1 / 3)).toEqual([0]);
    expect(nms(boxes, [0.9, 0.8], 0.3333334)).toEqual([0, 1]);
    expect(nms(boxes, [0.9, 0.8], 0.3)).toEqual([0]);
    // IoU of 1/2 exactly (float32 exact): kept at 0.5.
    const b2 = Float32Array.from([0, 0, 4, 1, 0, 0, 2, 1]);
    expect(nms(b2, [0.5, 0.6], 0.5)).toEqual([1, 0]);
  });

  it('ties keep index order; categories never suppress each other', () => {
    const boxes = Float32Array.from([0, 0, 10, 10, 0, 0, 10, 10, 0, 0, 10, 10]);
    expect(batchedNms(boxes, [0.5, 0.5, 0.5], [0, 0, 0], 0.7)).toEqual([0]);
    expect(batchedNms(boxes, [0.5, 0.5, 0.5], [1, 0, 1], 0.7)).toEqual([0, 1]);
    expect(batchedNms(boxes, [0.4, 0.5, 0.6], [0, 1, 2], 0.7)).toEqual([2, 1, 0]);
  });

  it('per-class path above 1000 boxes keeps the coordinate trick\'s set, by decreasing score', () => {
    const r = rng(3);
    const n = 1200;
    const boxes = new Float32Array(n * 4);
    const scores = new Float32Array(n);
    const idxs = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      const x = Math.floor(r() * 200);
      const y = Math.floor(r() * 200);
      boxes.set([x, y, x + 1 + Math.floor(r() * 40), y + 1 + Math.floor(r() * 40)], i * 4);
      scores[i] = Math.round(r() * 20) / 20; // many ties
      idxs[i] = Math.floor(r() * 3);
    }
    const big = batchedNms(boxes, scores, idxs, 0.5);
    // Same problem split in chunks below the threshold can't be compared directly; instead check
    // against the coordinate trick by hand: offsets make categories disjoint.
    const shifted = new Float32Array(boxes);
    for (let i = 0; i < n; i++) for (let k = 0; k < 4; k++) shifted[i * 4 + k] += idxs[i] * 1000;
    // Torchvision merges the per-class results with an unstable sort (std::sort), so only the set
    // and the score order are comparable; the exact tie order is checked against torchvision's
    // own output in test/nms.test.ts.
    const byIndex = (a: number, b: number): number => a - b;
    expect([...big].sort(byIndex)).toEqual([...nms(shifted, scores, 0.5)].sort(byIndex));
    for (let i = 1; i < big.length; i++) expect(scores[big[i - 1]]).toBeGreaterThanOrEqual(scores[big[i]]);
  });
});

describe('removeSmallRegions corner cases', () => {
  it('unchanged masks are returned as is', () => {
    const m = fromRows(['....', '.##.', '.##.', '....']);
    const res = removeSmallRegions(m, 2, 'islands');
    expect(res.changed).toBe(false);
    expect(res.mask).toBe(m);
    expect(removeSmallRegions({ data: new Uint8Array(9), h: 3, w: 3 }, 5, 'islands')).toEqual({
      mask: { data: new Uint8Array(9), h: 3, w: 3 },
      changed: false,
    });
  });

  it('islands: 8-connectivity joins diagonal pixels', () => {
    const m = fromRows(['#....', '.#...', '..#..', '....#']);
    const res = removeSmallRegions(m, 3, 'islands');
    expect(res.changed).toBe(true);
    expect(toRows(res.mask)).toEqual(['#....', '.#...', '..#..', '.....']);
  });

  it('islands: when every region is small the largest is kept and changed is true', () => {
    const m = fromRows(['##...#', '#....#', '......', '.#....']);
    const res = removeSmallRegions(m, 10, 'islands');
    expect(res.changed).toBe(true);
    expect(toRows(res.mask)).toEqual(['##....', '#.....', '......', '......']);
    // A single small region: kept, but still reported as changed.
    const one = fromRows(['....', '.#..', '....']);
    const r1 = removeSmallRegions(one, 5, 'islands');
    expect(r1.changed).toBe(true);
    expect(r1.mask.data).toEqual(one.data);
  });

  it('islands: ties among the largest follow OpenCV label order (2x2 block raster scan)', () => {
    // Two 2-pixel regions. Pixel raster order meets B (row 0, col 5) first; OpenCV's 2x2 block
    // scan meets A (block rows 0-1, cols 0-1) first, so A gets the lower label and is kept.
    const m = fromRows(['.....#', '##...#', '......', '......']);
    const res = removeSmallRegions(m, 10, 'islands');
    expect(res.changed).toBe(true);
    expect(toRows(res.mask)).toEqual(['......', '##....', '......', '......']);
    // More cases whose expected output came from cv2.connectedComponentsWithStats (OpenCV 4.6)
    // through amg.py remove_small_regions; pixel-raster tie-breaking gets both wrong.
    const a = removeSmallRegions(fromRows(['....', '....', '...#', '##.#', '....', '....', '....', '.#..', '....']), 1e6, 'islands');
    expect(toRows(a.mask)).toEqual(['....', '....', '....', '##..', '....', '....', '....', '....', '....']);
    const b = removeSmallRegions(fromRows(['.........#', '.#...#....', '..........']), 1e6, 'islands');
    expect(toRows(b.mask)).toEqual(['..........', '.#........', '..........']);
  });

  it('holes: fills small holes and also small background regions touching the border', () => {
    const m = fromRows(['.#####', '##..##', '######', '######']);
    // Background components: {(0,0)} size 1 (border) and the 2-pixel hole.
    expect(toRows(removeSmallRegions(m, 2, 'holes').mask)).toEqual(['######', '##..##', '######', '######']);
    const both = removeSmallRegions(m, 3, 'holes');
    expect(both.changed).toBe(true);
    expect(toRows(both.mask)).toEqual(['######', '######', '######', '######']);
    // Background 8-connectivity: a diagonal gap joins the hole to the outside (size 2, not < 2).
    const diag = fromRows(['###.#', '##.##', '#####']);
    expect(removeSmallRegions(diag, 2, 'holes').changed).toBe(false);
  });

  it('holes on an empty mask smaller than the threshold fills everything', () => {
    const res = removeSmallRegions({ data: new Uint8Array(6), h: 2, w: 3 }, 7, 'holes');
    expect(res.changed).toBe(true);
    expect(Array.from(res.mask.data)).toEqual([1, 1, 1, 1, 1, 1]);
  });

  it('matches a flood-fill reference on random masks', () => {
    const r = rng(4);
    for (let t = 0; t < 100; t++) {
      const h = 1 + Math.floor(r() * 25);
      const w = 1 + Math.floor(r() * 25);
      const m = randomMask(r, h, w);
      const thresh = 1 + Math.floor(r() * 15);
      for (const mode of ['holes', 'islands'] as const) {
        const got = removeSmallRegions(m, thresh, mode);
        const want = floodFillReference(m, thresh, mode);
        expect(got.changed).toBe(want.changed);
        if (!(mode === 'islands' && want.allSmallTie)) expect(got.mask.data).toEqual(want.data);
      }
    }
  });
});

/** amg.py remove_small_regions with BFS labelling (ties in the all-small case flagged, not resolved). */
function floodFillReference(
  m: BinaryMask,
  thresh: number,
  mode: 'holes' | 'islands',
): { data: Uint8Array; changed: boolean; allSmallTie: boolean } {
  const { h, w } = m;
  const on = mode === 'holes' ? 0 : 1;
  const label = new Int32Array(h * w).fill(-1);
  const sizes: number[] = [];
  for (let i = 0; i < h * w; i++) {
    if (m.data[i] !== on || label[i] >= 0) continue;
    const c = sizes.length;
    let n = 0;
    const stack = [i];
    label[i] = c;
    while (stack.length > 0) {
      const p = stack.pop() as number;
      n++;
      const y = Math.floor(p / w);
      const x = p % w;
      for (let dy = -1; dy <= 1; dy++) {
        for (let dx = -1; dx <= 1; dx++) {
          const yy = y + dy;
          const xx = x + dx;
          if (yy < 0 || xx < 0 || yy >= h || xx >= w) continue;
          const q = yy * w + xx;
          if (m.data[q] === on && label[q] < 0) {
            label[q] = c;
            stack.push(q);
          }
        }
      }
    }
    sizes.push(n);
  }
  const small = sizes.map((s) => s < thresh);
  if (!small.includes(true)) return { data: m.data, changed: false, allSmallTie: false };
  const data = new Uint8Array(h * w);
  let allSmallTie = false;
  if (mode === 'holes') {
    for (let i = 0; i < data.length; i++) data[i] = label[i] < 0 || small[label[i]] ? 1 : 0;
  } else {
    let keep = sizes.map((_, c) => !small[c]);
    if (!keep.includes(true)) {
      const max = Math.max(...sizes);
      allSmallTie = sizes.filter((s) => s === max).length > 1;
      keep = sizes.map((_, c) => c === sizes.indexOf(max));
    }
    for (let i = 0; i < data.length; i++) data[i] = label[i] >= 0 && keep[label[i]] ? 1 : 0;
  }
  return { data, changed: true, allSmallTie };
}

describe('upscaler', () => {
  it('fast separable upscaler equals the two-step reference for many sizes', () => {
    const r = rng(5);
    const lowRes = new Float32Array(256 * 256);
    for (let i = 0; i < lowRes.length; i++) lowRes[i] = (r() - 0.5) * 40;
    const cases: [[number, number], [number, number]][] = [
      [[1024, 1024], [1024, 1024]],
      [[683, 1024], [534, 800]],
      [[1024, 576], [1500, 844]],
      [[1024, 6], [3000, 17]],
      [[379, 1024], [37, 100]],
      [[1, 1024], [1, 2000]],
      [[1024, 1024], [7, 5]],
      [[1024, 1024], [2048, 2048]],
    ];
    for (const [inputSize, origSize] of cases) {
      const fast = createUpscaler(inputSize, origSize)(lowRes);
      const ref = postprocessMasksReference(lowRes, inputSize, origSize);
      expect(fast.length).toBe(origSize[0] * origSize[1]);
      let worst = 0;
      for (let i = 0; i < ref.length; i++) worst = Math.max(worst, Math.abs(fast[i] - ref[i]));
      expect(worst, `${inputSize} → ${origSize}`).toBeLessThan(1e-4);
    }
  });

  it('a constant field stays constant', () => {
    const up = createUpscaler([683, 1024], [534, 800]);
    const out = up(new Float32Array(256 * 256).fill(3.25));
    let worst = 0;
    for (const v of out) worst = Math.max(worst, Math.abs(v - 3.25));
    expect(worst).toBeLessThan(1e-6);
  });
});
