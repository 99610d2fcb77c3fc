import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeRle } from '../src/amg/rle.js';
import type { CocoRle, MaskRecord } from '../src/amg/types.js';
import { maskIou, runSam, tempDir } from './helpers/cli.js';
import { sharedDir } from './helpers/golden.js';

/**
 * A model converted from the golden MobileSAM checkpoint (random weights) through the CLI, then
 * used as a user would: its batched decoder must give `sam auto` the same masks as the official
 * single-prompt decoder.
 */
const tmp = tempDir('sam-convert-auto-');
const modelDir = join(tmp.dir, 'vit_t');
afterAll(() => tmp.cleanup());

beforeAll(async () => {
  const r = await runSam(['models', 'convert', join(sharedDir(), 'golden', 'convert', 'vit_t-random.pth'), '--type', 'vit_t', '--out', modelDir, '-q']);
  expect(r.stderr).not.toMatch(/error/);
  expect(r.code).toBe(0);
});

const read = (p: string) => JSON.parse(readFileSync(p, 'utf8')) as MaskRecord<CocoRle>[];

describe('sam auto on a converted vit_t model', () => {
  it('gives the same masks with the batched decoder as with the single-prompt decoder', async () => {
    const photo = join(sharedDir(), 'images', 'dog.jpg');
    const outputs: Record<string, MaskRecord<CocoRle>[]> = {};
    for (const decoder of ['single', 'batched']) {
      const out = join(tmp.dir, `auto-${decoder}`);
      // Random weights predict low IoU: keep every mask so there is something to compare.
      const r = await runSam(['auto', photo, '-m', modelDir, '-o', out, '--decoder', decoder, '--points-per-side', '4', '--points-per-batch', '8', '--pred-iou-thresh', '0', '--stability-score-thresh', '0', '-q']);
      expect(r.code).toBe(0);
      outputs[decoder] = read(join(out, 'dog.json'));
    }
    const [single, batched] = [outputs.single, outputs.batched];
    expect(single.length).toBeGreaterThan(0);
    expect(batched.length).toBe(single.length);
    single.forEach((s, i) => {
      const b = batched[i];
      expect(b.point_coords).toEqual(s.point_coords);
      expect(b.predicted_iou).toBeCloseTo(s.predicted_iou, 4);
      expect(b.stability_score).toBeCloseTo(s.stability_score, 3);
      // Logits agree to ~1e-6; only pixels whose logit is within that of 0 may flip.
      expect(maskIou(decodeRle(b.segmentation).data, decodeRle(s.segmentation).data)).toBeGreaterThan(0.999);
    });
  });

  it('answers prompts through sam segment at the photo size', async () => {
    const out = join(tmp.dir, 'seg.json');
    const r = await runSam(['segment', join(sharedDir(), 'images', 'dog.jpg'), '-m', modelDir, '--points', '400,250', '--out', out]);
    expect(r.code).toBe(0);
    const doc = JSON.parse(readFileSync(out, 'utf8')) as { size: number[]; masks: unknown[] };
    expect(doc.size).toEqual([534, 800]);
    expect(doc.masks).toHaveLength(3);
  });
});
