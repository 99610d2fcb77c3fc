/**
 * The hand-written geometry of `sam export` against independent references: the crack-following
 * tracer against the masks themselves (rasterized back), Douglas-Peucker against simplify-js
 * (the same algorithm, recursive), the Label Studio RLE against @thi.ng/rle-pack (the codec Label
 * Studio's frontend uses), and the Ultralytics multi-piece merge against the union of the pieces.
 */
import { decode as rlePackDecode, encode as rlePackEncode } from '@thi.ng/rle-pack';
import simplifyJs from 'simplify-js';
import { describe, expect, it } from 'vitest';
import { encodeMask } from '../src/core/rle.js';
import { traceOuterRings } from '../src/core/contours.js';
import { decodeLabelStudioRle, encodeLabelStudioRle } from '../src/core/ls-rle.js';
import { decodeRleCrop, fillHoles, rasterizePolygons } from '../src/core/mask-crop.js';
import { maskPolygons, mergeMultiSegment } from '../src/core/polygons.js';
import { simplifyRing } from '../src/core/simplify.js';
import { rng } from './helpers/rng.js';

const same = (a: Uint8Array, b: Uint8Array): boolean => Buffer.from(a).equals(Buffer.from(b));

/** Random blobs: thresholded sums of discs, plus salt (islands, holes, diagonal pinches). */
function randomMask(w: number, h: number, seed: number): Uint8Array {
  const rnd = rng(seed);
  const m = new Uint8Array(w * h);
  const discs = Array.from({ length: 4 }, () => [rnd() * w, rnd() * h, 3 + rnd() * Math.min(w, h) * 0.3]);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const inside = discs.some(([cx, cy, r]) => (x - cx) ** 2 + (y - cy) ** 2 < r * r);
      m[y * w + x] = (inside ? rnd() > 0.05 : rnd() < 0.05) ? 1 : 0;
    }
  }
  return m;
}

/** The mask with holes filled, from the crop code, back at full size. */
function filledFull(mask: Uint8Array, w: number, h: number): Uint8Array {
  const crop = decodeRleCrop(encodeMask({ data: mask, h, w }))!;
  fillHoles(crop);
  const out = new Uint8Array(w * h);
  for (let y = 0; y < crop.h; y++) {
    for (let x = 0; x < crop.w; x++) {
      const ix = x + crop.x0;
      const iy = y + crop.y0;
      if (crop.data[y * crop.w + x] && ix >= 0 && iy >= 0 && ix < w && iy < h) out[iy * w + ix] = 1;
    }
  }
  return out;
}

describe('contour tracing', () => {
  it('traces rings that rasterize back to the hole-filled mask exactly, touching the image border too', () => {
    for (let seed = 1; seed <= 30; seed++) {
      const w = 40 + (seed % 7) * 5;
      const h = 30 + (seed % 5) * 7;
      const mask = randomMask(w, h, seed);
      const { rings } = maskPolygons(encodeMask({ data: mask, h, w }), 0);
      const back = rasterizePolygons(rings, w, h);
      expect(same(back, filledFull(mask, w, h)), `seed ${seed}`).toBe(true);
      for (const r of rings) expect(r.length).toBeGreaterThanOrEqual(8);
    }
  });

  it('keeps pieces that touch at a corner apart, and fills holes only when 8-closed', () => {
    // Two diagonal pixels; a ring of 8 pixels around a hole; a ring open at a corner (not a hole).
    const w = 12;
    const h = 5;
    const m = new Uint8Array(w * h);
    const set = (x: number, y: number) => (m[y * w + x] = 1);
    set(1, 1);
    set(2, 2);
    for (const [x, y] of [[5, 1], [6, 1], [7, 1], [5, 2], [7, 2], [5, 3], [6, 3], [7, 3]]) set(x, y);
    const crop = decodeRleCrop(encodeMask({ data: m, h, w }))!;
    expect(fillHoles(crop)).toBe(1);
    const rings = traceOuterRings(crop);
    expect(rings.length).toBe(3);
    expect(Array.from(rings[0])).toEqual([1, 1, 2, 1, 2, 2, 1, 2]);
  });
});

describe('Douglas-Peucker', () => {
  it('keeps the same vertices as simplify-js (highQuality) on closed rings', () => {
    for (let seed = 1; seed <= 20; seed++) {
      const mask = randomMask(80, 60, seed);
      const { rings } = maskPolygons(encodeMask({ data: mask, h: 60, w: 80 }), 0);
      for (const ring of rings) {
        for (const tol of [0.5, 1, 2.5]) {
          const pts: { x: number; y: number }[] = [];
          for (let i = 0; i < ring.length; i += 2) pts.push({ x: ring[i], y: ring[i + 1] });
          pts.push(pts[0]);
          const ref = simplifyJs(pts, tol, true).slice(0, -1);
          const mine = simplifyRing(ring, tol);
          if (ref.length < 3) expect(mine).toBe(ring);
          else expect(Array.from(mine)).toEqual(ref.flatMap((p) => [p.x, p.y]));
        }
      }
    }
  });

  it('runs without recursion on a 2e4-vertex staircase (simplify-js 1.2.4 overflows the stack there under plain node)', () => {
    const n = 20_000;
    const ring = new Int32Array(2 * n);
    for (let i = 0, x = 0, y = 0; i < n; i++) {
      ring[2 * i] = x;
      ring[2 * i + 1] = y;
      if (i % 2) x += 50;
      else y += 1;
    }
    expect(simplifyRing(ring, 0.01).length).toBeGreaterThan(3);
  });
});

describe('Label Studio brush RLE', () => {
  it('decodes with @thi.ng/rle-pack to the RGBA mask, and is rle-pack\'s own encoding but for encode_rle\'s padding', () => {
    for (let seed = 1; seed <= 10; seed++) {
      const w = 50 + seed;
      const h = 40;
      const mask = randomMask(w, h, seed);
      const crop = decodeRleCrop(encodeMask({ data: mask, h, w }))!;
      const mine = encodeLabelStudioRle(crop);
      const rgba = new Uint8Array(w * h * 4);
      mask.forEach((v, i) => v && rgba.fill(255, 4 * i, 4 * i + 4));
      expect(same(rlePackDecode(Uint8Array.from(mine)) as Uint8Array, rgba)).toBe(true);
      expect(same(decodeLabelStudioRle(mine), rgba)).toBe(true);
      // encode_rle pads with 8 - len % 8 zero bits: one extra zero byte when the stream ends on a byte.
      const theirs = Array.from(rlePackEncode(rgba, rgba.length));
      expect(mine.slice(0, theirs.length)).toEqual(theirs);
      expect(mine.length - theirs.length).toBeLessThanOrEqual(1);
      // Header: num, word size 8, repeat widths 3, 4, 8, 16.
      expect(mine.slice(0, 4)).toEqual([(w * h * 4) >>> 24, ((w * h * 4) >>> 16) & 255, ((w * h * 4) >>> 8) & 255, (w * h * 4) & 255]);
    }
  });

  it('splits runs over 65536 bytes the way encode_rle does', () => {
    const w = 300;
    const h = 300;
    const mask = new Uint8Array(w * h);
    mask.fill(1, 10, w * h - 10);
    const bytes = encodeLabelStudioRle(decodeRleCrop(encodeMask({ data: mask, h, w }))!);
    const rgba = new Uint8Array(w * h * 4);
    rgba.fill(255, 40, (w * h - 10) * 4);
    expect(same(rlePackDecode(Uint8Array.from(bytes)) as Uint8Array, rgba)).toBe(true);
  });
});

describe('Ultralytics merge_multi_segment', () => {
  it('joins pieces into one polygon whose even-odd fill is their union', () => {
    const w = 60;
    const h = 40;
    const m = new Uint8Array(w * h);
    const box = (x0: number, y0: number, x1: number, y1: number) => {
      for (let y = y0; y < y1; y++) for (let x = x0; x < x1; x++) m[y * w + x] = 1;
    };
    box(2, 2, 10, 10);
    box(20, 5, 30, 30);
    box(40, 20, 55, 38);
    box(12, 30, 16, 36);
    const { rings } = maskPolygons(encodeMask({ data: m, h, w }), 0);
    expect(rings.length).toBe(4);
    const merged = mergeMultiSegment(rings);
    expect(same(rasterizePolygons([merged], w, h), m)).toBe(true);
  });
});
