import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeRle } from '../src/core/rle.js';
import type { CocoRle, MaskRecord } from '../src/core/types.js';
import { maskIou, runSam, tempDir } from './helpers/cli.js';
import { TOL, absErrors, convertGoldenPath, readGoldenNpy, sharedDir } from './helpers/golden.js';
import { EXIT } from '../src/commands/exit.js';
import { parseModel } from '../src/convert/onnx-builder.js';
import { readEmbeddingFile } from '../src/io/embedding-file.js';

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

describe('an int8-quantized vit_t (sam models convert --quantize int8)', () => {
  const int8Dir = join(tmp.dir, 'vit_t-int8');
  const photo = join(sharedDir(), 'images', 'dog.jpg');

  beforeAll(async () => {
    const r = await runSam(['models', 'convert', convertGoldenPath('vit_t-random.pth'), '--quantize', 'int8', '--out', int8Dir]);
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/id vit_t-[0-9a-f]{12}-int8\b.*; \d+ encoder Linears int8 \(/);
  });

  it('has its own model id, int8 weights in its encoder, and verify says it is quantized', async () => {
    const manifest = (d: string) => JSON.parse(readFileSync(join(d, 'manifest.json'), 'utf8')) as { id: string; quantization?: string };
    expect(manifest(int8Dir).quantization).toBe('int8');
    expect(manifest(int8Dir).id).toBe(`${manifest(modelDir).id}-int8`);
    expect(manifest(modelDir).quantization).toBeUndefined();

    const graph = parseModel(readFileSync(join(int8Dir, 'encoder.onnx'))).graph;
    const ops = (graph?.node ?? []).map((n) => n.opType);
    expect(ops.filter((o) => o === 'DynamicQuantizeMatMul').length).toBeGreaterThan(20);
    expect(ops).not.toContain('Gemm');
    // The MatMuls left are attention's and the relative positions' (activation × activation).
    const weights = new Set((graph?.initializer ?? []).map((t) => t.name));
    expect((graph?.node ?? []).filter((n) => n.opType === 'MatMul' && weights.has(n.input?.[1] ?? ''))).toEqual([]);
    // About a quarter of the float encoder's weight bytes (convolutions stay float).
    expect(statSync(join(int8Dir, 'encoder.onnx.data')).size).toBeLessThan(0.5 * statSync(join(modelDir, 'encoder.onnx.data')).size);

    const v = await runSam(['models', 'verify', int8Dir]);
    expect(v.code).toBe(0);
    expect(v.stdout).toMatch(/ok\s+manifest\.json: .*, weights int8 \(quantized encoder\)/);
    expect(v.stdout).toMatch(/ok\s+split decoder: /);
    expect((await runSam(['models', 'verify', modelDir])).stdout).toMatch(/ok\s+manifest\.json: .*, weights float32/);
  });

  it('embeds close to the float model, and segment and auto run on it', async () => {
    const emb = (d: string) => join(tmp.dir, `emb-${d}`);
    for (const [dir, name] of [[modelDir, 'float'], [int8Dir, 'int8']]) {
      expect((await runSam(['embed', photo, '-m', dir, '-o', emb(name), '-q'])).code).toBe(0);
    }
    const [f, q] = await Promise.all(['float', 'int8'].map((n) => readEmbeddingFile(join(emb(n), 'dog.safetensors'))));
    let dot = 0;
    let nf = 0;
    let nq = 0;
    for (let i = 0; i < f.embeddings.length; i++) {
      dot += f.embeddings[i] * q.embeddings[i];
      nf += f.embeddings[i] ** 2;
      nq += q.embeddings[i] ** 2;
    }
    const cosine = dot / Math.sqrt(nf * nq);
    console.log(`vit_t int8 vs float embedding of dog.jpg: cosine ${cosine.toFixed(5)}`);
    expect(cosine).toBeGreaterThan(0.99);
    expect(cosine).toBeLessThan(1); // it is quantized: not the float numbers

    const seg = join(tmp.dir, 'seg-int8.json');
    const s = await runSam(['segment', photo, '-m', int8Dir, '--points', '400,250', '--out', seg]);
    expect(s.code).toBe(0);
    expect((JSON.parse(readFileSync(seg, 'utf8')) as { masks: unknown[] }).masks).toHaveLength(3);
    const out = join(tmp.dir, 'auto-int8');
    const a = await runSam(['auto', photo, '-m', int8Dir, '-o', out, '--points-per-side', '4', '--pred-iou-thresh', '0', '--stability-score-thresh', '0', '--box-nms-thresh', '1', '-q']);
    expect(a.code).toBe(0);
    expect(read(join(out, 'dog.json'))).toHaveLength(4 * 4 * 3);

    // An int8 embedding given to the float model (and the other way round): one line naming the fix.
    for (const [model, file, made] of [
      [modelDir, join(emb('int8'), 'dog.safetensors'), 'the int8-quantized'],
      [int8Dir, join(emb('float'), 'dog.safetensors'), 'the float'],
    ]) {
      const r = await runSam(['segment', photo, '-m', model, '--embedding', file, '--points', '400,250', '--out', join(tmp.dir, 'x.json')]);
      expect(r.code).toBe(EXIT.input);
      const lines = r.stderr.trim().split('\n');
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(new RegExp(`^sam: error: .*dog\\.safetensors: embedding was made by ${made} model 'vit_t-[0-9a-f]{12}(-int8)?' and this --model is its .* conversion .*; pass the --model it was made with, or rerun 'sam embed' with this one$`));
    }
  });

  it('refuses an unknown --quantize value in one line that lists the choices', async () => {
    const r = await runSam(['models', 'convert', convertGoldenPath('vit_t-random.pth'), '--quantize', 'int4', '--out', join(tmp.dir, 'int4')]);
    expect(r.code).toBe(EXIT.usage);
    expect(r.stderr.trim()).toBe("sam: error: option '--quantize <kind>' argument 'int4' is invalid. Allowed choices are int8. (run with --help for usage)");
  });
});
