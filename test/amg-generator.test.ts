/**
 * SamAutomaticMaskGenerator against a fake predictor in plain TypeScript (no ONNX): the scene is
 * a set of discs; a point inside a disc gets that disc's logits, any other point an empty mask.
 */
import { describe, expect, it } from 'vitest';
import { AMG_DEFAULTS, SamAutomaticMaskGenerator, type AmgOptions } from '../src/amg/generator.js';
import { buildPointGrid } from '../src/amg/grid.js';
import { postprocessMasksReference } from './helpers/reference.js';
import { decodeRle } from '../src/core/rle.js';
import type { BoxXyxy, Size } from '../src/core/types.js';
import { maskLogitStats } from '../src/core/masks.js';
import { DiscPredictor, LOW, type Disc } from './helpers/disc-predictor.js';

async function generate(size: Size, discs: Disc[], options: Partial<AmgOptions>, iou = 0.95) {
  const predictor = new DiscPredictor(discs, iou);
  const records = await new SamAutomaticMaskGenerator(predictor, options).generate(size);
  return { records, predictor };
}

function discMask(size: Size, d: Disc): Uint8Array {
  const [h, w] = size;
  const m = new Uint8Array(h * w);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) m[y * w + x] = (x + 0.5 - d.cx) ** 2 + (y + 0.5 - d.cy) ** 2 < d.r * d.r ? 1 : 0;
  return m;
}

function iou(a: Uint8Array, b: Uint8Array): number {
  let i = 0;
  let u = 0;
  for (let k = 0; k < a.length; k++) {
    if (a[k] && b[k]) i++;
    if (a[k] || b[k]) u++;
  }
  return u === 0 ? 1 : i / u;
}

/** Distance from a float32 value to the next float32 above it. */
function ulp32(v: number): number {
  const f = new Float32Array([v]);
  const i = new Int32Array(f.buffer);
  i[0] += 1;
  return f[0] - v;
}

const SIZE: Size = [256, 256];
const DISC: Disc = { cx: 100, cy: 120, r: 40 };
const BASE: Partial<AmgOptions> = { pointsPerSide: 8 };

describe('SamAutomaticMaskGenerator with a fake predictor', () => {
  it('finds the disc once, with records in SAM’s conventions', async () => {
    const { records } = await generate(SIZE, [DISC], BASE);
    expect(records).toHaveLength(1);
    const r = records[0];
    const mask = decodeRle(r.segmentation);
    expect([mask.h, mask.w]).toEqual(SIZE);
    expect(iou(mask.data, discMask(SIZE, DISC))).toBeGreaterThan(0.95);
    expect(r.area).toBe(mask.data.reduce((a, v) => a + v, 0));
    // bbox XYWH of the inclusive-max box: w = x1 - x0.
    let [x0, y0, x1, y1] = [Infinity, Infinity, -1, -1];
    mask.data.forEach((v, i) => {
      if (!v) return;
      const x = i % 256;
      const y = (i - x) / 256;
      [x0, y0, x1, y1] = [Math.min(x0, x), Math.min(y0, y), Math.max(x1, x), Math.max(y1, y)];
    });
    expect(r.bbox).toEqual([x0, y0, x1 - x0, y1 - y0]);
    expect(r.crop_box).toEqual([0, 0, 256, 256]);
    // The prompt is a grid point (image pixels) inside the disc.
    const [px, py] = r.point_coords[0];
    expect((px / 256) * 8 - 0.5).toBeCloseTo(Math.round((px / 256) * 8 - 0.5), 9);
    expect((py / 256) * 8 - 0.5).toBeCloseTo(Math.round((py / 256) * 8 - 0.5), 9);
    expect(Math.hypot(px - DISC.cx, py - DISC.cy)).toBeLessThan(DISC.r);
    expect(r.predicted_iou).toBe(Math.fround(0.95));
  });

  it('keeps predicted IoU strictly above pred_iou_thresh (compared in float32, as torch)', async () => {
    const v = Math.fround(0.9);
    expect((await generate(SIZE, [DISC], { ...BASE, predIouThresh: v }, v)).records).toHaveLength(0);
    expect((await generate(SIZE, [DISC], { ...BASE, predIouThresh: v - ulp32(v) }, v)).records).toHaveLength(1);
    // A threshold that rounds to v in float32 is v for torch: not strictly above it.
    expect((await generate(SIZE, [DISC], { ...BASE, predIouThresh: v - ulp32(v) / 4 }, v)).records).toHaveLength(0);
    // 0 switches the filter off.
    expect((await generate(SIZE, [DISC], { ...BASE, predIouThresh: 0 }, 0)).records).toHaveLength(1);
  });

  it('keeps stability scores at or above stability_score_thresh (compared in float32, as torch)', async () => {
    const { records } = await generate(SIZE, [DISC], { ...BASE, stabilityScoreThresh: 0 });
    const s = records[0].stability_score;
    expect(s).toBeGreaterThan(0.5);
    expect(s).toBeLessThan(1);
    expect((await generate(SIZE, [DISC], { ...BASE, stabilityScoreThresh: s })).records).toHaveLength(1);
    expect((await generate(SIZE, [DISC], { ...BASE, stabilityScoreThresh: s + ulp32(s) })).records).toHaveLength(0);
    expect((await generate(SIZE, [DISC], { ...BASE, stabilityScoreThresh: s + ulp32(s) / 4 })).records).toHaveLength(1);
  });

  it('stability score is the float32 ratio of the counts above +offset and -offset', async () => {
    const offset = 2;
    const { records } = await generate(SIZE, [DISC], { ...BASE, stabilityScoreThresh: 0, stabilityScoreOffset: offset });
    // Recompute from the same fake output, upscaled by the naive reference (not src's upscaler).
    const p = new DiscPredictor([DISC]);
    const { inputSize } = await p.setCrop([0, 0, 256, 256]);
    const { lowResLogits } = await p.predictPoints(Float32Array.from(records[0].point_coords[0]));
    const logits = postprocessMasksReference(lowResLogits.subarray(0, LOW * LOW), inputSize, SIZE);
    let hi = 0;
    let lo = 0;
    for (const v of logits) {
      if (v > offset) hi++;
      if (v > -offset) lo++;
    }
    expect(records[0].stability_score).toBe(Math.fround(hi / lo));
    expect(maskLogitStats(logits, 0, 256, 256, 0, offset).stabilityScore).toBe(Math.fround(hi / lo));
  });

  it('gives the same records for points_per_batch 1 and 64', async () => {
    const discs = [DISC, { cx: 200, cy: 60, r: 30 }];
    const a = await generate(SIZE, discs, { ...BASE, pointsPerBatch: 1 });
    const b = await generate(SIZE, discs, { ...BASE, pointsPerBatch: 64 });
    expect(a.predictor.calls).toHaveLength(64);
    expect(b.predictor.calls).toHaveLength(1);
    expect(a.records).toHaveLength(2);
    expect(a.records).toEqual(b.records);
  });

  describe('crop layers', () => {
    // 256x256, one layer: overlap int(512/1500 * 256) = 87, crop side ceil((87 + 256) / 2) = 172,
    // origins int((172 - 87) * i) = 0, 85.
    const crops: BoxXyxy[] = [
      [0, 0, 256, 256],
      [0, 0, 172, 172],
      [0, 85, 172, 256],
      [85, 0, 256, 172],
      [85, 85, 256, 256],
    ];

    it('drops masks near a crop edge that is not an image edge', async () => {
      // Box [98, 158]: within 20 px of the inner edges 172 and 85 in every layer-1 crop.
      const centre: Disc = { cx: 128, cy: 128, r: 30 };
      const { records, predictor } = await generate(SIZE, [centre], { ...BASE, cropNLayers: 1 });
      expect(predictor.crops).toEqual(crops);
      expect(records).toHaveLength(1);
      expect(records[0].crop_box).toEqual([0, 0, 256, 256]);
    });

    it('keeps the smallest crop’s mask of a duplicate, with crop_box XYWH and points in image pixels', async () => {
      // Inside crop [85, 85, 256, 256] only, far from its inner edges; also found in crop 0.
      const corner: Disc = { cx: 200, cy: 200, r: 25 };
      const { records } = await generate(SIZE, [corner], { ...BASE, cropNLayers: 1 });
      expect(records).toHaveLength(1);
      const r = records[0];
      expect(r.crop_box).toEqual([85, 85, 171, 171]);
      expect(iou(decodeRle(r.segmentation).data, discMask(SIZE, corner))).toBeGreaterThan(0.9);
      // The prompt is a point of the layer grid scaled to the crop and shifted by its origin.
      const grid = buildPointGrid(8);
      const candidates: [number, number][] = [];
      for (let i = 0; i < grid.length; i += 2) candidates.push([grid[i] * 171 + 85, grid[i + 1] * 171 + 85]);
      expect(candidates).toContainEqual(r.point_coords[0]);
      expect(Math.hypot(r.point_coords[0][0] - corner.cx, r.point_coords[0][1] - corner.cy)).toBeLessThan(corner.r);
    });
  });

  it('uses explicit point grids per layer instead of points_per_side', async () => {
    const pointGrids = [Float64Array.from([DISC.cx / 256, DISC.cy / 256, 0.9, 0.9])];
    const { records, predictor } = await generate(SIZE, [DISC], { pointsPerSide: null, pointGrids });
    expect(predictor.calls).toHaveLength(1);
    expect(records).toHaveLength(1);
    expect(records[0].point_coords).toEqual([[DISC.cx, DISC.cy]]);
  });

  it('defaults are those of SAM', () => {
    expect(AMG_DEFAULTS).toMatchObject({
      pointsPerSide: 32,
      pointsPerBatch: 64,
      predIouThresh: 0.88,
      stabilityScoreThresh: 0.95,
      stabilityScoreOffset: 1,
      boxNmsThresh: 0.7,
      cropNLayers: 0,
      cropNmsThresh: 0.7,
      cropOverlapRatio: 512 / 1500,
      cropNPointsDownscaleFactor: 1,
      minMaskRegionArea: 0,
    });
  });
});
