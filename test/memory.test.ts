/**
 * The generator keeps each final mask compactly (issue: memory must not grow with the number or
 * complexity of masks): RLE counts as pycocotools' compressed bytes in a Uint8Array, never a JS
 * array of numbers per run, and masks whose RLE would outgrow their 256x256 low-res logits kept
 * as those logits until they survive NMS. Checked against a naive column-major RLE and a naive
 * pycocotools string encoder written here; no timing or memory assertion.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { rng } from './helpers/rng.js';
import { SamAutomaticMaskGenerator } from '../src/amg/generator.js';
import type { AmgPredictor } from '../src/amg/predictor.js';
import {
  RleEncoder,
  cocoToCompact,
  compactCounts,
  compactToCoco,
  compactToUncompressed,
  decodeRle,
  encodeMaskCompact,
  encodeMaskInCropCompact,
  rleArea,
  rleToBbox,
  uncompressedToCompact,
} from '../src/core/rle.js';
import { createUpscaler } from '../src/core/upscale.js';
import { getPreprocessShape } from '../src/core/transforms.js';
import type { BinaryMask, BoxXyxy, CompactRle, MaskRecord, Size } from '../src/core/types.js';
import { recordsToJson, writePngFolder, writeRecordsJson } from '../src/output/records.js';


/** Naive COCO RLE: walk the mask column-major, runs alternate starting with zeros. */
function naiveCounts(mask: BinaryMask): number[] {
  const { data, h, w } = mask;
  const counts: number[] = [];
  let cur = 0;
  let run = 0;
  for (let x = 0; x < w; x++) {
    for (let y = 0; y < h; y++) {
      const v = data[y * w + x] ? 1 : 0;
      if (v !== cur) {
        counts.push(run);
        run = 0;
        cur = v;
      }
      run++;
    }
  }
  counts.push(run);
  return counts;
}

/** Naive pycocotools rleToString (maskApi.c): `x >>= 5` as floor division, `x & 0x1f` as its remainder. */
function naiveCocoString(counts: number[]): string {
  let s = '';
  for (let i = 0; i < counts.length; i++) {
    let x = counts[i];
    if (i > 2) x -= counts[i - 2];
    let more = true;
    while (more) {
      const q = Math.floor(x / 32);
      let c = x - 32 * q;
      x = q;
      more = c & 0x10 ? x !== -1 : x !== 0;
      if (more) c |= 0x20;
      s += String.fromCharCode(c + 48);
    }
  }
  return s;
}

function noiseMask(r: () => number, h: number, w: number, density: number): BinaryMask {
  const data = new Uint8Array(h * w);
  for (let i = 0; i < data.length; i++) data[i] = r() < density ? 1 : 0;
  return { data, h, w };
}

function padded(crop: BinaryMask, box: BoxXyxy, size: Size): BinaryMask {
  const [h, w] = size;
  const data = new Uint8Array(h * w);
  for (let y = 0; y < crop.h; y++) data.set(crop.data.subarray(y * crop.w, (y + 1) * crop.w), (y + box[1]) * w + box[0]);
  return { data, h, w };
}

describe('compact RLE (counts as compressed bytes in a typed array)', () => {
  it('round-trips noise and blob masks, whole and placed in a crop, against naive encoders', () => {
    const r = rng(7);
    for (let t = 0; t < 40; t++) {
      const h = 1 + Math.floor(r() * 60);
      const w = 1 + Math.floor(r() * 60);
      const mask = noiseMask(r, h, w, [0, 1, 0.5, 0.05, 0.95][t % 5]);
      const counts = naiveCounts(mask);
      const rle = encodeMaskCompact(mask);
      expect(rle.bytes).toBeInstanceOf(Uint8Array);
      expect(rle.size).toEqual([h, w]);
      expect('counts' in rle).toBe(false);
      // One byte per character of pycocotools' string.
      const coco = compactToCoco(rle);
      expect(coco.counts).toBe(naiveCocoString(counts));
      expect(rle.bytes.length).toBe(coco.counts.length);
      expect(Array.from(compactCounts(rle))).toEqual(counts);
      expect(compactToUncompressed(rle)).toEqual({ size: [h, w], counts });
      expect(uncompressedToCompact({ size: [h, w], counts })).toEqual(rle);
      expect(cocoToCompact(coco)).toEqual(rle);
      expect(decodeRle(rle)).toEqual(mask);
      expect(rleArea(rle)).toBe(mask.data.reduce((a, v) => a + v, 0));
      expect(rleToBbox(rle)).toEqual(rleToBbox(coco));

      // The same mask placed at a crop box of a larger image.
      const H = h + Math.floor(r() * 20);
      const W = w + Math.floor(r() * 20);
      const x0 = Math.floor(r() * (W - w + 1));
      const y0 = Math.floor(r() * (H - h + 1));
      const box: BoxXyxy = [x0, y0, x0 + w, y0 + h];
      const full = padded(mask, box, [H, W]);
      const inCrop = encodeMaskInCropCompact(mask, box, [H, W]);
      expect(compactToCoco(inCrop).counts).toBe(naiveCocoString(naiveCounts(full)));
      expect(decodeRle(inCrop)).toEqual(full);
    }
  });

  it('one encoder reused across masks of different sizes gives the same as fresh ones', () => {
    const r = rng(11);
    const enc = new RleEncoder();
    for (let t = 0; t < 20; t++) {
      // From tiny masks to one of ~1e5 runs, so the scratch buffers grow and are then reused.
      const side = t === 10 ? 700 : 1 + Math.floor(r() * 50);
      const mask = noiseMask(r, side, side, 0.5);
      const runs = enc.scan(mask);
      const counts = naiveCounts(mask);
      expect(runs).toBe(counts.length);
      expect(enc.area()).toBe(mask.data.reduce((a, v) => a + v, 0));
      const rle = enc.compact();
      expect(compactToCoco(rle).counts).toBe(naiveCocoString(counts));
      expect(enc.countsArray()).toEqual(counts);
      // An exact-size copy: the encoder's scratch is not shared with the result.
      expect(rle.bytes.byteLength).toBe(rle.bytes.buffer.byteLength);
    }
  });

  it('refuses bytes that are not pycocotools characters', () => {
    expect(() => cocoToCompact({ size: [1, 1], counts: '1 ' })).toThrow(/invalid character/);
    expect(() => compactCounts({ size: [1, 1], bytes: Uint8Array.of(0x20) })).toThrow(/invalid byte/);
  });
});

const LOW = 256;

/**
 * Low-res logits of pure noise (what random-weight models give, the worst case) or, for
 * `checker`, a checkerboard of low-res cells (every cell edge is a run edge: ~256 runs a column).
 */
class NoisePredictor implements AmgPredictor {
  private inputSize: Size = [0, 0];
  constructor(
    private readonly seed: number,
    private readonly checker = false,
  ) {}

  async setCrop(cropBox: BoxXyxy): Promise<{ cropSize: Size; inputSize: Size }> {
    const cropSize: Size = [cropBox[3] - cropBox[1], cropBox[2] - cropBox[0]];
    this.inputSize = getPreprocessShape(cropSize[0], cropSize[1]);
    return { cropSize, inputSize: this.inputSize };
  }

  /** The logits for the point (x, y): a function of the point, so tests can recompute them. */
  logitsFor(x: number, y: number, k: number): Float32Array {
    const out = new Float32Array(LOW * LOW);
    const r = rng(this.seed + Math.round(x * 1000) * 7919 + Math.round(y * 1000) * 104729 + k);
    for (let i = 0; i < out.length; i++) {
      out[i] = this.checker ? (((i >> 8) + (i & 255) + k) % 2 === 0 ? 1 : -1) * (5 + r()) : r() * 2 - 1;
    }
    return out;
  }

  async predictPoints(points: Float32Array) {
    const b = points.length / 2;
    const k = 3;
    const lowResLogits = new Float32Array(b * k * LOW * LOW);
    const iouPredictions = new Float32Array(b * k);
    for (let p = 0; p < b; p++) {
      for (let m = 0; m < k; m++) {
        lowResLogits.set(this.logitsFor(points[2 * p], points[2 * p + 1], m), (p * k + m) * LOW * LOW);
        iouPredictions[p * k + m] = 0.5 + 0.1 * m + 0.001 * p;
      }
    }
    return { lowResLogits, iouPredictions, masksPerPoint: k };
  }
}

/** The record's mask computed naively from the predictor's logits for its point. */
function expectedCounts(predictor: NoisePredictor, size: Size, record: MaskRecord<CompactRle>, k: number): string {
  const [h, w] = size;
  const [px, py] = record.point_coords[0];
  const logits = createUpscaler(getPreprocessShape(h, w), size)(predictor.logitsFor(Math.fround(px), Math.fround(py), k));
  const data = new Uint8Array(h * w);
  for (let i = 0; i < data.length; i++) data[i] = logits[i] > 0 ? 1 : 0;
  return naiveCocoString(naiveCounts({ data, h, w }));
}

/** Which of the point's three masks a record is (scores differ by 0.1 per mask). */
const maskIndex = (r: MaskRecord<CompactRle>): number => Math.round((r.predicted_iou - 0.5) / 0.1) % 3;

const tmp = mkdtempSync(path.join(tmpdir(), 'sam-memory-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe('generator with many noisy masks', () => {
  const thresholdsOff = { pointsPerSide: 4, predIouThresh: 0, stabilityScoreThresh: 0, boxNmsThresh: 1 };

  it('keeps every mask as compact bytes, and the records are the masks of the logits', async () => {
    const size: Size = [300, 400];
    const predictor = new NoisePredictor(3);
    const records = await new SamAutomaticMaskGenerator(predictor, thresholdsOff).generate(size);
    // NMS at IoU 1 keeps all 4 x 4 points x 3 masks.
    expect(records).toHaveLength(48);
    let runs = 0;
    for (const r of records) {
      const seg = r.segmentation;
      expect(seg.bytes).toBeInstanceOf(Uint8Array);
      expect(Object.keys(seg).sort()).toEqual(['bytes', 'size']);
      expect(seg.size).toEqual(size);
      const counts = compactCounts(seg);
      runs += counts.length;
      expect(compactToCoco(seg).counts).toBe(expectedCounts(predictor, size, r, maskIndex(r)));
      expect(r.area).toBe(decodeRle(seg).data.reduce((a, v) => a + v, 0));
      // Noise: far less than 4 bytes a run (what a Uint32Array of counts would take).
      expect(seg.bytes.length).toBeLessThan(counts.length * 2);
    }
    // Masks of pure noise: thousands of runs each.
    expect(runs / records.length).toBeGreaterThan(5000);
  });

  it('masks whose RLE outgrows the low-res logits are kept as logits and encoded after NMS, to the same records', async () => {
    // A checkerboard of low-res cells over 1100x1100 pixels: ~256 runs a column, >262144 bytes a
    // mask, more than the 256 KiB of its logits; the 2x2 grid keeps the test small.
    const size: Size = [1100, 1100];
    const predictor = new NoisePredictor(5, true);
    const options = { ...thresholdsOff, pointsPerSide: 2 };
    const records = await new SamAutomaticMaskGenerator(predictor, options).generate(size);
    expect(records).toHaveLength(12);
    for (const r of records) {
      expect(r.segmentation.bytes.length).toBeGreaterThan(LOW * LOW * 4);
      expect(compactToCoco(r.segmentation).counts).toBe(expectedCounts(predictor, size, r, maskIndex(r)));
    }
    // NMS still sees every candidate: at the default IoU threshold the overlapping masks collapse.
    const nms = await new SamAutomaticMaskGenerator(predictor, { ...options, boxNmsThresh: 0.7 }).generate(size);
    expect(nms.length).toBeLessThan(records.length);
    for (const r of nms) expect(compactToCoco(r.segmentation).counts).toBe(expectedCounts(predictor, size, r, maskIndex(r)));
  });

  it('writes the records streamed per record, byte for byte what the whole-document writer gives', async () => {
    const size: Size = [120, 90];
    const records = await new SamAutomaticMaskGenerator(new NoisePredictor(9), thresholdsOff).generate(size);
    // A backslash (char 92) appears in pycocotools strings and must be escaped in JSON: a run of
    // 44 zeros is written '\\1'.
    const zeros = encodeMaskCompact({ data: new Uint8Array(44), h: 4, w: 11 });
    expect(compactToCoco(zeros).counts).toBe('\\1');
    records.push({ ...records[0], segmentation: zeros, area: 0 });
    const coco = path.join(tmp, 'coco.json');
    await writeRecordsJson(coco, records, 'coco_rle');
    const text = readFileSync(coco, 'utf8');
    expect(text).toBe(recordsToJson(records));
    const parsed = JSON.parse(text) as { segmentation: { counts: string } }[];
    expect(parsed.map((p) => p.segmentation.counts)).toEqual(records.map((r) => compactToCoco(r.segmentation).counts));

    const raw = path.join(tmp, 'raw.json');
    await writeRecordsJson(raw, records, 'uncompressed_rle');
    const rawText = readFileSync(raw, 'utf8');
    expect(rawText).toBe(recordsToJson(records.map((r) => ({ ...r, segmentation: compactToUncompressed(r.segmentation) }))));
    const rawParsed = JSON.parse(rawText) as { segmentation: { counts: number[] } }[];
    expect(rawParsed.map((p) => p.segmentation.counts)).toEqual(records.map((r) => Array.from(compactCounts(r.segmentation))));

    const dir = path.join(tmp, 'png');
    await writePngFolder(dir, records, true);
    expect(readFileSync(path.join(dir, 'rle.json'), 'utf8')).toBe(text);
  });
});
