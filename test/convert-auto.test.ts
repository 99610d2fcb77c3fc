import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeRle } from '../src/core/rle.js';
import type { CocoRle, MaskRecord } from '../src/core/types.js';
import { maskIou, runSam, tempDir } from './helpers/cli.js';
import { TOL, absErrors, convertGoldenPath, readGoldenNpy, sharedDir } from './helpers/golden.js';

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

/** Records of two decoders agree: same prompts, scores within 1e-4, masks IoU > 0.999. */
function expectSameRecords(got: MaskRecord<CocoRle>[], want: MaskRecord<CocoRle>[]): void {
  expect(want.length).toBeGreaterThan(0);
  expect(got.length).toBe(want.length);
  want.forEach((s, i) => {
    const b = got[i];
    expect(b.point_coords).toEqual(s.point_coords);
    expect(Math.abs(b.predicted_iou - s.predicted_iou)).toBeLessThan(1e-4);
    expect(Math.abs(b.stability_score - s.stability_score)).toBeLessThan(1e-4);
    // Logits agree to ~1e-6; only pixels whose logit is within that of 0 may flip.
    expect(maskIou(decodeRle(b.segmentation).data, decodeRle(s.segmentation).data)).toBeGreaterThan(0.999);
  });
}

describe('sam auto on a converted vit_t model', () => {
  const photo = join(sharedDir(), 'images', 'dog.jpg');
  const autoRun = async (decoder: string, predIouThresh: string): Promise<MaskRecord<CocoRle>[]> => {
    const out = join(tmp.dir, `auto-${decoder}-${predIouThresh}`);
    // Random weights predict low IoU and stability 0: keep masks by a low IoU bar and no NMS, so
    // there is something to compare.
    const r = await runSam(['auto', photo, '-m', modelDir, '-o', out, '--decoder', decoder, '--points-per-side', '4', '--points-per-batch', '8', '--pred-iou-thresh', predIouThresh, '--stability-score-thresh', '0', '--box-nms-thresh', '1', '-q']);
    expect(r.stderr).not.toMatch(/error|warn/i);
    expect(r.code).toBe(0);
    return read(join(out, 'dog.json'));
  };

  it('gives the same masks with the batched and the split decoder as with the single-prompt decoder (thresholds 0)', async () => {
    const single = await autoRun('single', '0');
    expect(single).toHaveLength(4 * 4 * 3);
    expectSameRecords(await autoRun('batched', '0'), single);
    expectSameRecords(await autoRun('split', '0'), single);
  });

  it('two-stage decoding: with an IoU bar that drops about half the masks, the split decoder still gives the same records', async () => {
    // The random-weight IoU predictions of this photo spread over about -0.1..0.16, median ~0.06.
    const single = await autoRun('single', '0.06');
    expect(single.length).toBeGreaterThan(8);
    expect(single.length).toBeLessThan(40);
    expectSameRecords(await autoRun('split', '0.06'), single);
    // 'auto' picks the split decoder of a converted model.
    expectSameRecords(await autoRun('auto', '0.06'), single);
  });

  it('answers prompts through sam segment at the photo size', async () => {
    const out = join(tmp.dir, 'seg.json');
    const r = await runSam(['segment', join(sharedDir(), 'images', 'dog.jpg'), '-m', modelDir, '--points', '400,250', '--out', out]);
    expect(r.code).toBe(0);
    const doc = JSON.parse(readFileSync(out, 'utf8')) as { size: number[]; masks: unknown[] };
    expect(doc.size).toEqual([534, 800]);
    expect(doc.masks).toHaveLength(3);
  });

  it('with --attention-biases zeros, the converted files reproduce the official embedding and low-res masks', async () => {
    const quirk = join(tmp.dir, 'vit_t-zero-biases');
    const r = await runSam(['models', 'convert', convertGoldenPath('vit_t-random.pth'), '--out', quirk, '--attention-biases', 'zeros', '-q']);
    expect(r.code).toBe(0);
    const ids = [modelDir, quirk].map((d) => (JSON.parse(readFileSync(join(d, 'manifest.json'), 'utf8')) as { id: string }).id);
    // Different encoders from one checkpoint never share embedding files.
    expect(ids[1]).not.toBe(ids[0]);

    const input = readGoldenNpy('dog.preprocessed_input.npy');
    const encoder = await ort.InferenceSession.create(join(quirk, 'encoder.onnx'));
    const emb = (await encoder.run({ image: new ort.Tensor('float32', input.data, input.shape) })).image_embeddings;
    const e = absErrors(emb.data as Float32Array, readGoldenNpy('vit_t-random.dog.image_embeddings.npy').data);
    console.log(`CLI-converted vit_t encoder vs official: max ${e.max.toExponential(2)}, mean ${e.mean.toExponential(2)}`);
    expect(e.max).toBeLessThanOrEqual(TOL.encoder.max);
    expect(e.mean).toBeLessThanOrEqual(TOL.encoder.mean);

    const decoder = await ort.InferenceSession.create(join(quirk, 'decoder.onnx'));
    const out = await decoder.run({
      image_embeddings: emb,
      point_coords: new ort.Tensor('float32', Float32Array.from([512.0, 320.2247314453125, 0, 0]), [1, 2, 2]),
      point_labels: new ort.Tensor('float32', Float32Array.from([1, -1]), [1, 2]),
      mask_input: new ort.Tensor('float32', new Float32Array(256 * 256), [1, 1, 256, 256]),
      has_mask_input: new ort.Tensor('float32', Float32Array.from([0]), [1]),
      orig_im_size: new ort.Tensor('float32', Float32Array.from([534, 800]), [2]),
    });
    const d = absErrors(out.low_res_masks.data as Float32Array, readGoldenNpy('vit_t-random.dog.point.low_res_masks.npy').data);
    expect(d.max).toBeLessThanOrEqual(TOL.decoderLogits.max);
    expect(d.mean).toBeLessThanOrEqual(TOL.decoderLogits.mean);
  });
});
