/**
 * The converted MobileSAM TinyViT image encoder (vit_t) against the official PyTorch output
 * (../shared/golden/convert: random weights, the official preprocessed dog.jpg).
 *
 * Bar: image_embeddings within TOL.encoder (test/helpers/golden.ts).
 *
 * Two official embeddings exist: `build_sam_vit_t` runs `.eval()` before the weights are loaded,
 * so TinyViT's cached attention biases (`Attention.ab`) keep their zero initial value ("stale",
 * reproduced with `attentionBiases: 'zeros'`); MobileSAM's README calls `.eval()` again, which
 * re-caches the checkpoint's biases ("refreshed"): our default, what `models pull mobile_sam` gives.
 * The two differ by up to 5e-3, far above TOL, so each test tells them apart.
 */
import * as ort from 'onnxruntime-node';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadStateDict, type StateDict } from '../src/convert/checkpoint.js';
import { attentionBiasIdxs, buildTinyVitEncoder } from '../src/convert/tinyvit-encoder.js';
import { TOL, absErrors, convertGoldenPath, readGoldenNpy } from './helpers/golden.js';


let sd: StateDict;

beforeAll(async () => {
  sd = await loadStateDict(convertGoldenPath('vit_t-random.pth'));
});

describe('TinyViT encoder (vit_t)', () => {
  it('reproduces the official image embedding', async () => {
    let t = performance.now();
    const bytes = buildTinyVitEncoder(sd, 'image_encoder.', { attentionBiases: 'zeros' }).serialize();
    const buildMs = performance.now() - t;

    t = performance.now();
    const session = await ort.InferenceSession.create(bytes);
    const createMs = performance.now() - t;
    expect(session.inputNames).toEqual(['image']);
    expect(session.outputNames).toEqual(['image_embeddings']);

    const input = readGoldenNpy('dog.preprocessed_input.npy');
    const want = readGoldenNpy('vit_t-random.dog.image_embeddings.npy');
    expect(input.shape).toEqual([1, 3, 1024, 1024]);
    t = performance.now();
    const out = await session.run({ image: new ort.Tensor('float32', input.data, input.shape) });
    const runMs = performance.now() - t;
    await session.release();

    const got = out.image_embeddings;
    expect(got.dims).toEqual([1, 256, 64, 64]);
    expect(want.shape).toEqual([1, 256, 64, 64]);
    const g = got.data as Float32Array;
    const { max, mean } = absErrors(g, want.data);
    console.log(
      `vit_t encoder: max abs ${max.toExponential(3)}, mean abs ${mean.toExponential(3)}; ` +
        `build+serialize ${buildMs.toFixed(0)} ms, ${(bytes.length / 2 ** 20).toFixed(1)} MiB; ` +
        `session ${createMs.toFixed(0)} ms, run ${runMs.toFixed(0)} ms`,
    );
    expect(max).toBeLessThanOrEqual(TOL.encoder.max);
    expect(mean).toBeLessThanOrEqual(TOL.encoder.mean);
  });

  it('by default (checkpoint attention biases) reproduces the refreshed official embedding', async () => {
    const session = await ort.InferenceSession.create(buildTinyVitEncoder(sd).serialize());
    const input = readGoldenNpy('dog.preprocessed_input.npy');
    const out = await session.run({ image: new ort.Tensor('float32', input.data, input.shape) });
    await session.release();
    const refreshed = absErrors(out.image_embeddings.data as Float32Array, readGoldenNpy('vit_t-random.dog.image_embeddings.refreshed.npy').data);
    const stale = absErrors(out.image_embeddings.data as Float32Array, readGoldenNpy('vit_t-random.dog.image_embeddings.npy').data);
    console.log(`vit_t default encoder vs refreshed: max abs ${refreshed.max.toExponential(3)}, mean ${refreshed.mean.toExponential(3)}; vs stale max ${stale.max.toExponential(3)}`);
    expect(refreshed.max).toBeLessThanOrEqual(TOL.encoder.max);
    expect(refreshed.mean).toBeLessThanOrEqual(TOL.encoder.mean);
    // The stale and refreshed embeddings differ by 5.25e-3 (golden README): this is the refreshed one.
    expect(stale.max).toBeGreaterThan(1e-3);
  });

  it('runs window attention in MultiHeadAttention; the reference graph (MatMul/Softmax) gives the same embedding', async () => {
    const ops = (buildTinyVitEncoder(sd).toModel().graph?.node ?? []).map((n) => n.opType);
    expect(ops.filter((o) => o === 'MultiHeadAttention')).toHaveLength(10); // 2 + 6 + 2 TinyViT blocks
    expect(ops).not.toContain('Softmax');
    const reference = buildTinyVitEncoder(sd, 'image_encoder.', { attention: 'reference' });
    expect(reference.toModel().graph?.node?.filter((n) => n.opType === 'Softmax')).toHaveLength(10);
    const session = await ort.InferenceSession.create(reference.serialize());
    const input = readGoldenNpy('dog.preprocessed_input.npy');
    const out = await session.run({ image: new ort.Tensor('float32', input.data, input.shape) });
    await session.release();
    const e = absErrors(out.image_embeddings.data as Float32Array, readGoldenNpy('vit_t-random.dog.image_embeddings.refreshed.npy').data);
    expect(e.max).toBeLessThanOrEqual(TOL.encoder.max);
    expect(e.mean).toBeLessThanOrEqual(TOL.encoder.mean);
  });

  it('gathers attention_biases by the reference index table by default', () => {
    // Attention.__init__: offsets (|Δrow|, |Δcol|) numbered by first appearance, so the first
    // row of the table enumerates every offset once and the table is symmetric.
    const { idxs, numOffsets } = attentionBiasIdxs(7);
    const n = 49;
    expect(numOffsets).toBe(49);
    expect(Array.from(idxs.subarray(0, n))).toEqual(Array.from({ length: n }, (_, i) => i));
    // Tokens 8 = (1,1) and 15 = (2,1): offset (1,0), first met at token 7 = (1,0) from (0,0).
    expect(idxs[8 * n + 15]).toBe(7);
    expect(idxs[15 * n + 8]).toBe(7);

    const model = buildTinyVitEncoder(sd).toModel();
    const key = 'image_encoder.layers.2.blocks.3.attn';
    const ab = model.graph?.initializer?.find((t) => t.name === `${key}.ab`);
    expect(ab?.dims?.map(Number)).toEqual([1, 5, 196, 196]);
    const raw = ab?.rawData as Uint8Array;
    const values = new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength));
    const biases = sd.get(`${key}.attention_biases`)?.data as Float32Array;
    const table = attentionBiasIdxs(14);
    for (const [h, i, j] of [[0, 0, 0], [4, 17, 190], [2, 195, 3]]) {
      expect(values[(h * 196 + i) * 196 + j]).toBe(biases[h * table.numOffsets + table.idxs[i * 196 + j]]);
    }
    const zeros = buildTinyVitEncoder(sd, 'image_encoder.', { attentionBiases: 'zeros' }).toModel();
    expect(zeros.graph?.initializer?.some((t) => t.name?.endsWith('.ab'))).toBe(false);
  });

  it('refuses a checkpoint whose tensors do not match vit_t', () => {
    const wrong: StateDict = new Map(sd);
    const t = sd.get('image_encoder.layers.1.blocks.0.attn.qkv.weight');
    if (!t) throw new Error('missing qkv weight');
    wrong.set('image_encoder.layers.1.blocks.0.attn.qkv.weight', { ...t, shape: [192, 256] });
    expect(() => buildTinyVitEncoder(wrong)).toThrow(/layers\.1\.blocks\.0\.attn\.qkv\.weight has shape \[192,256\], expected \[384,128\]/);
    const missing: StateDict = new Map(sd);
    missing.delete('image_encoder.neck.2.weight');
    expect(() => buildTinyVitEncoder(missing)).toThrow(/missing tensor image_encoder\.neck\.2\.weight/);
    expect(() => buildTinyVitEncoder(sd, 'encoder.')).toThrow(/missing tensor encoder\.patch_embed/);
  });
});
