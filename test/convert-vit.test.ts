/**
 * The plain-ViT image encoder converter (src/convert/vit-encoder.ts) against the official PyTorch
 * output for a small random-weight ViT (same code path as vit_b/l/h), model-type detection from
 * state-dict shapes (src/convert/configs.ts), and ONNX external-data serialization
 * (src/convert/onnx-builder.ts serializeWithExternalData) round-tripped through onnxruntime.
 */
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import onnxProto from 'onnx-proto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadStateDict, type CheckpointTensor, type StateDict } from '../src/convert/checkpoint.js';
import {
  checkConfigMatches,
  detectModelType,
  VIT_CONFIGS,
  vitConfigFromGolden,
  type VitConfig,
  type VitConfigJson,
} from '../src/convert/configs.js';
import { GraphBuilder, parseModel, serializeWithExternalData } from '../src/convert/onnx-builder.js';
import { buildVitEncoder } from '../src/convert/vit-encoder.js';
import { SamError } from '../src/util/errors.js';
import { TOL, absErrors, convertGoldenPath, loadGolden, readGoldenNpy } from './helpers/golden.js';

const EXTERNAL = onnxProto.onnx.TensorProto.DataLocation.EXTERNAL;

interface ConvertGolden {
  vit_small_config: VitConfigJson;
}


/** A state dict holding only shapes (detection reads nothing else). */
function shapeOnly(entries: Record<string, number[]>): StateDict {
  const sd: StateDict = new Map();
  for (const [key, shape] of Object.entries(entries)) {
    const t: CheckpointTensor = { dtype: 'float32', shape, data: new Float32Array(0) };
    sd.set(key, t);
  }
  return sd;
}

/** The patch embedding and block norms of an official ViT checkpoint of the given config. */
function fakeVit(cfg: VitConfig): StateDict {
  const entries: Record<string, number[]> = { 'image_encoder.patch_embed.proj.weight': [cfg.embedDim, 3, 16, 16] };
  for (let i = 0; i < cfg.depth; i++) entries[`image_encoder.blocks.${i}.norm1.weight`] = [cfg.embedDim];
  return shapeOnly(entries);
}

let tmp = '';
const sessions: ort.InferenceSession[] = [];

async function session(model: string | Uint8Array): Promise<ort.InferenceSession> {
  const s = typeof model === 'string' ? await ort.InferenceSession.create(model) : await ort.InferenceSession.create(model);
  sessions.push(s);
  return s;
}

beforeAll(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'sam-convert-vit-'));
});

afterAll(async () => {
  for (const s of sessions) await s.release();
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

describe('ViT image encoder (small random ViT, official PyTorch output)', () => {
  let sd: StateDict;
  let cfg: VitConfig;

  beforeAll(async () => {
    sd = await loadStateDict(convertGoldenPath('vit-small-random.image_encoder.pth'));
    cfg = vitConfigFromGolden(loadGolden<ConvertGolden>('convert/convert-golden.json').vit_small_config);
  });

  it('reproduces the image embedding of dog.jpg (within TOL.encoder)', async () => {
    expect(cfg).toMatchObject({ embedDim: 96, depth: 2, numHeads: 3, globalAttnIndexes: [1], windowSize: 14 });
    let t = performance.now();
    const g = buildVitEncoder(sd, cfg);
    const buildMs = performance.now() - t;
    t = performance.now();
    const onnxPath = path.join(tmp, 'vit-small.encoder.onnx');
    const written = await serializeWithExternalData(g.toModel(), onnxPath);
    const writeMs = performance.now() - t;
    expect(written.externalTensors).toBeGreaterThan(0);
    expect((await stat(onnxPath)).size).toBeLessThan(64 * 1024);

    t = performance.now();
    const s = await session(onnxPath);
    const loadMs = performance.now() - t;
    expect(s.inputNames).toEqual(['image']);
    expect(s.outputNames).toEqual(['image_embeddings']);

    const input = readGoldenNpy('dog.preprocessed_input.npy');
    expect(input.shape).toEqual([1, 3, 1024, 1024]);
    t = performance.now();
    const out = await s.run({ image: new ort.Tensor('float32', input.data, input.shape) });
    const runMs = performance.now() - t;

    const expected = readGoldenNpy('vit-small-random.dog.image_embeddings.npy');
    const y = out.image_embeddings;
    expect(y.dims).toEqual([1, 256, 64, 64]);
    const { max, mean } = absErrors(y.data as Float32Array, expected.data);
    console.log(
      `vit-small encoder: max abs error ${max.toExponential(3)}, mean ${mean.toExponential(3)}; ` +
        `build ${buildMs.toFixed(0)} ms, write ${writeMs.toFixed(0)} ms (${written.modelBytes} + ${written.dataBytes} bytes), ` +
        `ORT load ${loadMs.toFixed(0)} ms, run ${runMs.toFixed(0)} ms`,
    );
    expect(max).toBeLessThanOrEqual(TOL.encoder.max);
    expect(mean).toBeLessThanOrEqual(TOL.encoder.mean);
  });

  it('runs attention in MultiHeadAttention without [heads, L, L] scores; the reference graph gives the same embedding', async () => {
    const fused = buildVitEncoder(sd, cfg).toModel();
    const ops = (fused.graph?.node ?? []).map((n) => `${n.domain ? `${n.domain}.` : ''}${n.opType}`);
    // Block 0 windowed: one call over its 25 windows; block 1 global: 64 rows / 2 per call.
    expect(ops.filter((o) => o === 'com.microsoft.MultiHeadAttention')).toHaveLength(1 + 64 / 2);
    expect(ops).not.toContain('Softmax');
    expect(fused.opsetImport).toContainEqual({ domain: 'com.microsoft', version: 1 });

    const input = readGoldenNpy('dog.preprocessed_input.npy');
    const expected = readGoldenNpy('vit-small-random.dog.image_embeddings.npy');
    const reference = await session(buildVitEncoder(sd, cfg, 'image_encoder.', { attention: 'reference' }).serialize());
    const y = (await reference.run({ image: new ort.Tensor('float32', input.data, input.shape) })).image_embeddings;
    const { max, mean } = absErrors(y.data as Float32Array, expected.data);
    expect(max).toBeLessThanOrEqual(TOL.encoder.max);
    expect(mean).toBeLessThanOrEqual(TOL.encoder.mean);
  });

  it('names initializers after the state-dict keys', () => {
    const names = new Set(buildVitEncoder(sd, cfg).toGraph().initializer?.map((t) => t.name));
    for (const key of [
      'image_encoder.patch_embed.proj.weight',
      'image_encoder.pos_embed',
      'image_encoder.blocks.0.norm1.weight',
      'image_encoder.blocks.1.attn.proj.weight',
      'image_encoder.blocks.1.mlp.lin2.bias',
      'image_encoder.neck.2.weight',
      'image_encoder.blocks.0.attn.rel_pos_h.gathered',
      'image_encoder.blocks.0.attn.qkv.weight_k_scaled',
    ]) {
      expect(names.has(key), key).toBe(true);
    }
  });

  it('refuses a checkpoint whose tensors do not fit the config', () => {
    const wrongRelPos = new Map(sd);
    wrongRelPos.set('image_encoder.blocks.0.attn.rel_pos_h', { dtype: 'float32', shape: [29, 32], data: new Float32Array(29 * 32) });
    expect(() => buildVitEncoder(wrongRelPos, cfg)).toThrow(/has 29 relative positions, expected 27.*interpolating/);
    expect(() => buildVitEncoder(sd, { ...cfg, embedDim: 768, numHeads: 12 })).toThrow(
      /image_encoder\.patch_embed\.proj\.weight has shape \[96,3,16,16\], expected \[768,3,16,16\]/,
    );
    const missing = new Map(sd);
    missing.delete('image_encoder.neck.3.bias');
    expect(() => buildVitEncoder(missing, cfg)).toThrow(/no tensor image_encoder\.neck\.3\.bias/);
  });

  it('detects no SAM type for the 96-wide ViT and refuses --type vit_b clearly', () => {
    expect(detectModelType(sd)).toBeUndefined();
    let err: unknown;
    try {
      checkConfigMatches(sd, 'vit_b', 'vit-small-random.image_encoder.pth');
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(SamError);
    expect((err as SamError).kind).toBe('model');
    expect((err as SamError).message).toMatch(
      /^checkpoint vit-small-random\.image_encoder\.pth is not a vit_b checkpoint: vit_b has a ViT encoder 768 wide with 12 blocks, it has a ViT encoder 96 wide with 2 blocks/,
    );
  });
});

describe('model type from state-dict shapes', () => {
  it('detects vit_b, vit_l, vit_h and vit_t', () => {
    for (const type of ['vit_b', 'vit_l', 'vit_h'] as const) {
      const sd = fakeVit(VIT_CONFIGS[type]);
      expect(detectModelType(sd)).toBe(type);
      expect(() => checkConfigMatches(sd, type)).not.toThrow();
    }
    const tiny = shapeOnly({ 'image_encoder.patch_embed.seq.0.c.weight': [32, 3, 3, 3] });
    expect(detectModelType(tiny)).toBe('vit_t');
    expect(detectModelType(shapeOnly({ 'mask_decoder.iou_token.weight': [1, 256] }))).toBeUndefined();
  });

  it('names the right --type when the given one disagrees', () => {
    expect(() => checkConfigMatches(fakeVit(VIT_CONFIGS.vit_l), 'vit_b', 'sam_vit_l_0b3195.pth')).toThrow(
      'checkpoint sam_vit_l_0b3195.pth is vit_l (patch embedding 1024 wide, 24 blocks), not vit_b; pass --type vit_l',
    );
    const tiny = shapeOnly({ 'image_encoder.patch_embed.seq.0.c.weight': [32, 3, 3, 3] });
    expect(() => checkConfigMatches(tiny, 'vit_h', 'mobile_sam.pt')).toThrow(/^checkpoint mobile_sam\.pt is vit_t .*pass --type vit_t$/);
    expect(() => checkConfigMatches(fakeVit(VIT_CONFIGS.vit_h), 'vit_t', 'x.pth')).toThrow(/pass --type vit_h$/);
  });
});

describe('ONNX external data', () => {
  /** y = x · W + b with W [4,300] large enough to go external, b inline. */
  function tinyModel(): GraphBuilder {
    const g = new GraphBuilder('external_data_roundtrip');
    const x = g.input('x', 'float32', [1, 4]);
    const w = g.initializer('W', Float32Array.from({ length: 4 * 300 }, (_, i) => Math.sin(i) * 3), [4, 300]);
    const w2 = g.initializer('W2', Float32Array.from({ length: 300 * 2 }, (_, i) => Math.cos(i)), [300, 2]);
    const b = g.initializer('b', Float32Array.from([0.25, -1.5]), [2]);
    g.output(g.op('Add', [g.op('MatMul', [g.op('MatMul', [x, w]), w2]), b]), 'y', 'float32', [1, 2]);
    return g;
  }

  it('writes large initializers to the side file and runs in onnxruntime like the inline model', async () => {
    const g = tinyModel();
    const model = g.toModel();
    const onnxPath = path.join(tmp, 'tiny.onnx');
    const result = await serializeWithExternalData(model, onnxPath, 'tiny.weights', { threshold: 1024 });
    expect(result.externalTensors).toBe(2);
    expect(result.dataPath).toBe(path.join(tmp, 'tiny.weights'));
    expect(existsSync(path.join(tmp, 'tiny.onnx.data'))).toBe(false);

    // The caller's model still holds its data inline.
    expect(model.graph?.initializer?.every((t) => t.rawData && t.rawData.length > 0 && !t.externalData?.length)).toBe(true);

    const written = parseModel(await readFile(onnxPath));
    const byName = new Map(written.graph?.initializer?.map((t) => [t.name, t]));
    const data = await readFile(result.dataPath);
    expect(data.length).toBe(result.dataBytes);
    const original = new Map(model.graph?.initializer?.map((t) => [t.name, t]));
    for (const name of ['W', 'W2']) {
      const t = byName.get(name);
      expect(t?.dataLocation).toBe(EXTERNAL);
      expect(t?.rawData?.length ?? 0).toBe(0);
      const entries = Object.fromEntries((t?.externalData ?? []).map((e) => [e.key, e.value]));
      expect(entries.location).toBe('tiny.weights');
      const offset = Number(entries.offset);
      const length = Number(entries.length);
      expect(offset % 64).toBe(0);
      expect(Buffer.from(data.subarray(offset, offset + length)).equals(Buffer.from(original.get(name)?.rawData ?? []))).toBe(true);
    }
    expect(byName.get('b')?.dataLocation ?? 0).not.toBe(EXTERNAL);
    expect(byName.get('b')?.rawData?.length).toBe(8);

    const x = new ort.Tensor('float32', Float32Array.from([0.5, -2, 1, 3]), [1, 4]);
    const external = (await (await session(onnxPath)).run({ x })).y.data as Float32Array;
    const inline = (await (await session(g.serialize())).run({ x })).y.data as Float32Array;
    expect(Array.from(external)).toEqual(Array.from(inline));
  });

  it('aligns tensors of 1 MiB or more to the mapping granularity', async () => {
    const g = new GraphBuilder('aligned');
    const x = g.input('x', 'float32', [1, 3]);
    const small = g.initializer('small', new Float32Array(300).fill(1), [300]);
    const big = g.initializer('big', Float32Array.from({ length: 3 * 100_000 }, (_, i) => (i % 7) - 3), [3, 100_000]);
    const y = g.op('ReduceSum', [g.op('MatMul', [x, big]), g.constInt64([1])], { keepdims: 0 });
    g.output(g.op('Add', [y, g.op('ReduceSum', [small], { keepdims: 0 })]), 'y', 'float32', [1]);
    const onnxPath = path.join(tmp, 'aligned.onnx');
    await serializeWithExternalData(g.toModel(), onnxPath);
    const written = parseModel(await readFile(onnxPath));
    const offsetOf = (name: string): number =>
      Number(written.graph?.initializer?.find((t) => t.name === name)?.externalData?.find((e) => e.key === 'offset')?.value);
    expect(offsetOf('small')).toBe(0);
    expect(offsetOf('big')).toBe(65536);
    const out = await (await session(onnxPath)).run({ x: new ort.Tensor('float32', Float32Array.from([1, 2, 3]), [1, 3]) });
    // Column sums of big: rows are (i%7)-3 patterns; compare with the inline model.
    const inline = await (await session(g.serialize())).run({ x: new ort.Tensor('float32', Float32Array.from([1, 2, 3]), [1, 3]) });
    expect(Array.from(out.y.data as Float32Array)).toEqual(Array.from(inline.y.data as Float32Array));
  });

  it('refuses a data file name that is not a plain file name', async () => {
    const model = tinyModel().toModel();
    await expect(serializeWithExternalData(model, path.join(tmp, 'bad.onnx'), '../bad.data')).rejects.toThrow(/plain file name/);
    await expect(serializeWithExternalData(model, path.join(tmp, 'bad.onnx'), 'sub/bad.data')).rejects.toThrow(/plain file name/);
  });
});
