/**
 * The SAM 2.1 image encoder converter (src/convert/hiera-encoder.ts: Hiera trunk + FPN neck +
 * conv_s0 / conv_s1 + no_mem_embed) against the official PyTorch features of a random-weight
 * sam2.1_hiera_tiny (../shared/golden/sam2), and SAM 2 type detection (src/convert/sam2-configs.ts).
 *
 * Two input paths:
 * - (a) `input_image_fp16.npy` upcast: the official preprocessed image, but stored as float16
 *   (rounding error up to 9.8e-4), while the references were computed from the float32 image. The
 *   rounding alone moves image_embed by ~4e-4 (golden README), so this path cannot reach 1e-4 on
 *   image_embed; it is bounded by what that rounding gives.
 * - (b) our float32 reproduction of the official preprocessing of dog.jpg (ToTensor /255,
 *   torchvision Resize((1024,1024)) bilinear antialias=True: the separable triangle-filter pass,
 *   width then height, in float32; Normalize with the ImageNet mean/std). This is the path that
 *   must meet the issue's 1e-4 per feature.
 */
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadStateDict, type CheckpointTensor, type StateDict } from '../src/convert/checkpoint.js';
import { bicubicResize, buildSam2Encoder, sam2EncoderMacs } from '../src/convert/hiera-encoder.js';
import { GraphBuilder, attr, parseModel } from '../src/convert/onnx-builder.js';
import {
  SAM2_CONFIGS,
  SAM2_MODEL_TYPES,
  checkSam2TypeMatches,
  detectSam2Type,
  hieraBlocks,
  hieraStageEnds,
  type Sam2ModelType,
} from '../src/convert/sam2-configs.js';
import { decodeNpyFloat32 } from '../src/io/npy.js';
import { loadImage, preprocessSam2 } from '../src/io/image.js';
import { SamError } from '../src/util/errors.js';
import { TOL, absErrors, sharedDir } from './helpers/golden.js';
import { thrown } from './helpers/decoder-feeds.js';

const OUTPUTS = ['image_embed', 'high_res_feats_0', 'high_res_feats_1'] as const;
type OutputName = (typeof OUTPUTS)[number];
const SHAPES: Record<OutputName, number[]> = {
  image_embed: [1, 256, 64, 64],
  high_res_feats_0: [1, 32, 256, 256],
  high_res_feats_1: [1, 64, 128, 128],
};

/**
 * Acceptance of issue 12: each feature's max abs error on the float32 input path. The converter
 * reaches 3.0e-6 (image_embed) / 9e-8 / 1.2e-7 there, so each feature is also held to the
 * project's encoder bound TOL.encoder (max 6e-5, mean 1e-5: ~10x what the encoders reach, above
 * the CPU noise across SIMD widths and thread counts).
 */
const MAX_ABS = 1e-4;
/**
 * Bounds on the float16-input path (a), about 1.5x what it gives (image_embed max 4.2e-4 /
 * mean 5.1e-5, high_res_feats_0 3.7e-5 / 2.9e-6, high_res_feats_1 2.6e-5 / 3.1e-6): the input's
 * rounding, not the converter, sets these.
 */
const FP16_INPUT_BOUND: Record<OutputName, { max: number; mean: number }> = {
  image_embed: { max: 6.5e-4, mean: 8e-5 },
  high_res_feats_0: { max: 6e-5, mean: 5e-6 },
  high_res_feats_1: { max: 4e-5, mean: 5e-6 },
};

const sam2Dir = (): string => path.join(sharedDir(), 'golden', 'sam2');

interface GoldenIndex {
  checkpoint: {
    architecture: {
      hiera: {
        stage_ends: number[];
        q_pool_blocks: number[];
        global_att_blocks: number[];
        window_spec: number[];
        blocks: { i: number; dim: number; dim_out: number; heads: number; window_size: number; q_pool: boolean }[];
        pos_embed: number[];
        pos_embed_window: number[];
        channel_list: number[];
      };
      neck: { backbone_channel_list: number[]; fpn_top_down_levels: number[]; fpn_interp_model: string; fuse_type: string; scalp: number };
    };
  };
}

/** A .npy of float16 (little-endian '<f2', C order) upcast to float32. */
function readNpyFloat16(file: string): { data: Float32Array; shape: number[] } {
  const buf = readFileSync(file);
  const major = buf[6];
  const headerLen = major === 1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8);
  const start = major === 1 ? 10 : 12;
  const header = buf.subarray(start, start + headerLen).toString('latin1');
  if (!/'descr':\s*'<f2'/.test(header) || /'fortran_order':\s*True/.test(header)) throw new Error(`${file}: not a C-order float16 .npy`);
  const m = /'shape':\s*\(([^)]*)\)/.exec(header);
  if (!m) throw new Error(`${file}: no shape`);
  const shape = m[1].split(',').map((s) => s.trim()).filter((s) => s !== '').map(Number);
  const n = shape.reduce((a, b) => a * b, 1);
  const out = new Float32Array(n);
  const off = start + headerLen;
  for (let i = 0; i < n; i++) {
    const h = buf.readUInt16LE(off + 2 * i);
    const e = (h >> 10) & 31;
    const f = h & 1023;
    const v = e === 0 ? f * 2 ** -24 : e === 31 ? (f ? NaN : Infinity) : (1 + f / 1024) * 2 ** (e - 15);
    out[i] = h & 0x8000 ? -v : v;
  }
  return { data: out, shape };
}

function readNpyFloat32(file: string): { data: Float32Array; shape: number[] } {
  const arr = decodeNpyFloat32(readFileSync(file));
  if (!arr) throw new Error(`${file}: not a float32 .npy`);
  return arr;
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

/** The shapes detection looks at, for an official checkpoint of `type`. */
function fakeSam2(type: Sam2ModelType, { video = true } = {}): StateDict {
  const cfg = SAM2_CONFIGS[type];
  const t = cfg.trunk;
  const entries: Record<string, number[]> = {
    'image_encoder.trunk.patch_embed.proj.weight': [t.embedDim, 3, 7, 7],
    'image_encoder.trunk.pos_embed': [1, t.embedDim, ...t.windowPosEmbedBkgSpatialSize],
    no_mem_embed: [1, 1, 256],
  };
  for (const b of hieraBlocks(t)) entries[`image_encoder.trunk.blocks.${b.i}.norm1.weight`] = [b.dim];
  if (video) {
    entries['memory_encoder.out_proj.weight'] = [64, 256, 1, 1];
    if (cfg.version === '2.1') {
      entries.no_obj_embed_spatial = [1, 64];
      entries['obj_ptr_tpos_proj.weight'] = [64, 256];
    }
  }
  return shapeOnly(entries);
}

let sd: StateDict;
let session: ort.InferenceSession;
let modelBytes: Buffer;
let buildMs = 0;
let sessionMs = 0;
let tmp = '';
const golden = {} as Record<OutputName, Float32Array>;
const cfg = SAM2_CONFIGS['sam2.1_hiera_tiny'];

beforeAll(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'sam-convert-hiera-'));
  sd = await loadStateDict(path.join(sam2Dir(), 'sam2.1_hiera_tiny-random-fp16.pt'));
  let t = performance.now();
  modelBytes = buildSam2Encoder(sd, cfg);
  buildMs = performance.now() - t;
  t = performance.now();
  session = await ort.InferenceSession.create(modelBytes);
  sessionMs = performance.now() - t;
  for (const name of OUTPUTS) {
    const arr = readNpyFloat32(path.join(sam2Dir(), `${name}.npy`));
    expect(arr.shape).toEqual(SHAPES[name]);
    golden[name] = arr.data;
  }
});

afterAll(async () => {
  await session?.release();
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

async function runEncoder(s: ort.InferenceSession, image: Float32Array): Promise<{ out: Record<OutputName, Float32Array>; ms: number }> {
  const t = performance.now();
  const res = await s.run({ image: new ort.Tensor('float32', image, [1, 3, 1024, 1024]) });
  const ms = performance.now() - t;
  const out = {} as Record<OutputName, Float32Array>;
  for (const name of OUTPUTS) {
    expect(res[name].dims).toEqual(SHAPES[name]);
    out[name] = res[name].data as Float32Array;
  }
  return { out, ms };
}

function report(label: string, out: Record<OutputName, Float32Array>): Record<OutputName, { max: number; mean: number }> {
  const errs = {} as Record<OutputName, { max: number; mean: number }>;
  for (const name of OUTPUTS) errs[name] = absErrors(out[name], golden[name]);
  console.log(
    `sam2.1_hiera_tiny encoder, ${label}: ` +
      OUTPUTS.map((n) => `${n} max ${errs[n].max.toExponential(2)} mean ${errs[n].mean.toExponential(2)}`).join('; '),
  );
  return errs;
}

describe('SAM 2 configs', () => {
  it('reproduces the golden sam2.1_hiera_tiny architecture (index.json)', () => {
    const arch = (JSON.parse(readFileSync(path.join(sam2Dir(), 'index.json'), 'utf8')) as GoldenIndex).checkpoint.architecture;
    const blocks = hieraBlocks(cfg.trunk);
    expect(blocks.map((b) => ({ i: b.i, dim: b.dim, dim_out: b.dimOut, heads: b.heads, window_size: b.windowSize, q_pool: b.qPool }))).toEqual(arch.hiera.blocks);
    expect(hieraStageEnds(cfg.trunk)).toEqual(arch.hiera.stage_ends);
    expect(blocks.filter((b) => b.qPool).map((b) => b.i)).toEqual(arch.hiera.q_pool_blocks);
    expect([...cfg.trunk.globalAttBlocks]).toEqual(arch.hiera.global_att_blocks);
    expect([...cfg.trunk.windowSpec]).toEqual(arch.hiera.window_spec);
    expect([1, cfg.trunk.embedDim, ...cfg.trunk.windowPosEmbedBkgSpatialSize]).toEqual(arch.hiera.pos_embed);
    expect(hieraStageEnds(cfg.trunk).map((e) => blocks[e].dimOut).reverse()).toEqual(arch.hiera.channel_list);
    expect(cfg.neck).toMatchObject({
      backboneChannelList: arch.neck.backbone_channel_list,
      fpnTopDownLevels: arch.neck.fpn_top_down_levels,
      fpnInterpModel: arch.neck.fpn_interp_model,
      fuseType: arch.neck.fuse_type,
      scalp: arch.neck.scalp,
    });
  });

  it('has every official type, 2.0 and 2.1 sharing their image encoder', () => {
    expect(SAM2_MODEL_TYPES).toHaveLength(8);
    const depth = (t: Sam2ModelType) => SAM2_CONFIGS[t].trunk.stages.reduce((a, b) => a + b, 0);
    expect(['tiny', 'small', 'base_plus', 'large'].map((s) => depth(`sam2.1_hiera_${s}` as Sam2ModelType))).toEqual([12, 16, 24, 48]);
    expect(SAM2_CONFIGS['sam2.1_hiera_base_plus'].trunk).toMatchObject({ embedDim: 112, numHeads: 2, globalAttBlocks: [12, 16, 20], windowPosEmbedBkgSpatialSize: [14, 14] });
    expect(SAM2_CONFIGS['sam2.1_hiera_large'].neck.backboneChannelList).toEqual([1152, 576, 288, 144]);
    for (const s of ['tiny', 'small', 'base_plus', 'large']) {
      const a = SAM2_CONFIGS[`sam2.1_hiera_${s}` as Sam2ModelType];
      const b = SAM2_CONFIGS[`sam2_hiera_${s}` as Sam2ModelType];
      expect(a.trunk).toEqual(b.trunk);
      expect(a.neck).toEqual(b.neck);
      expect([a.version, b.version]).toEqual(['2.1', '2.0']);
    }
    // MACs of one run (folded high-res convs) for the closing report.
    console.log(`SAM 2 encoder GMACs: ${SAM2_MODEL_TYPES.slice(0, 4).map((t) => `${t} ${(sam2EncoderMacs(SAM2_CONFIGS[t]) / 1e9).toFixed(1)}`).join(', ')}`);
  });

  it('detects each type from shapes, and the golden checkpoint as sam2.1_hiera_tiny', () => {
    for (const type of SAM2_MODEL_TYPES) {
      const fake = fakeSam2(type);
      expect(detectSam2Type(fake).type).toBe(type);
      expect(() => checkSam2TypeMatches(fake, type)).not.toThrow();
    }
    expect(detectSam2Type(sd).type).toBe('sam2.1_hiera_tiny');
    // Image-only state dicts carry no version marker: either version is accepted.
    const imageOnly = fakeSam2('sam2_hiera_small', { video: false });
    expect(detectSam2Type(imageOnly).type).toBe('sam2.1_hiera_small');
    expect(() => checkSam2TypeMatches(imageOnly, 'sam2_hiera_small')).not.toThrow();
  });

  it('refuses a wrong --type with a one-line model error naming the right one', () => {
    let e = thrown(() => checkSam2TypeMatches(sd, 'sam2.1_hiera_small', 'sam2.1_hiera_tiny.pt'));
    expect(e.kind).toBe('model');
    expect(e.message).toBe(
      'checkpoint sam2.1_hiera_tiny.pt is sam2.1_hiera_tiny (a Hiera encoder 96 wide with 12 blocks, pos_embed 7×7), not sam2.1_hiera_small; pass --type sam2.1_hiera_tiny',
    );
    e = thrown(() => checkSam2TypeMatches(sd, 'sam2_hiera_tiny', 'sam2.1_hiera_tiny.pt'));
    expect(e.message).toMatch(/^checkpoint sam2\.1_hiera_tiny\.pt is sam2\.1_hiera_tiny \(it has the SAM 2\.1-only tensors .*\), not sam2_hiera_tiny; pass --type sam2\.1_hiera_tiny$/);
    e = thrown(() => checkSam2TypeMatches(fakeSam2('sam2_hiera_large'), 'sam2.1_hiera_large', 'sam2_hiera_large.pt'));
    expect(e.message).toMatch(/is sam2_hiera_large .*; pass --type sam2_hiera_large$/);
    // A SAM 1 checkpoint is named as such.
    const v1 = shapeOnly({ 'image_encoder.patch_embed.proj.weight': [768, 3, 16, 16] });
    expect(detectSam2Type(v1).reason).toMatch(/SAM 1 ViT checkpoint.*--type vit_b/);
    e = thrown(() => checkSam2TypeMatches(v1, 'sam2.1_hiera_tiny', 'sam_vit_b.pth'));
    expect(e.message).toMatch(/^checkpoint sam_vit_b\.pth is not a sam2\.1_hiera_tiny checkpoint: .* but it is a SAM 1 ViT checkpoint/);
    for (const err of [e]) expect(err.message).not.toContain('\n');
  });

  it('refuses a truncated state dict: detection says why, the builder names the missing tensor', () => {
    const truncated = new Map(sd);
    for (const key of [...truncated.keys()]) if (key.startsWith('image_encoder.trunk.blocks.11.')) truncated.delete(key);
    const det = detectSam2Type(truncated);
    expect(det.type).toBeUndefined();
    expect(det.reason).toMatch(/a Hiera encoder 96 wide with 11 blocks, pos_embed 7×7, which matches none of tiny \(.*12 blocks.*\).*is the checkpoint complete\?$/);
    const e = thrown(() => checkSam2TypeMatches(truncated, 'sam2.1_hiera_tiny', 'x.pt'));
    expect(e.kind).toBe('model');
    expect(thrown(() => buildSam2Encoder(truncated, cfg)).message).toMatch(
      /^checkpoint has no tensor image_encoder\.trunk\.blocks\.11\.norm1\.weight and 11 more \(needed by the sam2\.1_hiera_tiny image encoder\); is the checkpoint complete\?$/,
    );
    const noHighRes = new Map(sd);
    noHighRes.delete('sam_mask_decoder.conv_s1.bias');
    expect(thrown(() => buildSam2Encoder(noHighRes, cfg)).message).toMatch(/^checkpoint has no tensor sam_mask_decoder\.conv_s1\.bias \(needed/);
    const wrongShape = new Map(sd);
    wrongShape.set('no_mem_embed', { dtype: 'float32', shape: [1, 256], data: new Float32Array(256) });
    expect(thrown(() => buildSam2Encoder(wrongShape, cfg)).message).toBe(
      'checkpoint tensor no_mem_embed has shape [1,256], expected [1,1,256] for sam2.1_hiera_tiny',
    );
    // Building tiny's graph from another config fails on the first tensor that differs.
    expect(thrown(() => buildSam2Encoder(sd, SAM2_CONFIGS['sam2.1_hiera_base_plus'])).message).toBe(
      'checkpoint tensor image_encoder.trunk.pos_embed has shape [1,96,7,7], expected [1,112,14,14] for sam2.1_hiera_base_plus',
    );
    expect(thrown(() => buildSam2Encoder(sd, SAM2_CONFIGS['sam2.1_hiera_small'])).message).toBe(
      'checkpoint tensor image_encoder.trunk.blocks.10.attn.qkv.weight has shape [2304,384], expected [1152,384] for sam2.1_hiera_small',
    );
  });

  it('refuses a truncated checkpoint file (the reader)', async () => {
    const file = path.join(tmp, 'truncated.pt');
    const bytes = readFileSync(path.join(sam2Dir(), 'sam2.1_hiera_tiny-random-fp16.pt'));
    await writeFile(file, bytes.subarray(0, Math.floor(bytes.length / 2)));
    await expect(loadStateDict(file)).rejects.toBeInstanceOf(SamError);
  });
});

describe('bicubic pos_embed upsampling (PyTorch align_corners=False, a=-0.75, clamped taps)', () => {
  it('keeps constants, and matches hand-computed taps', () => {
    const flat = bicubicResize(new Float32Array(49).fill(0.25), 1, 7, 7, 256, 256);
    expect(Math.max(...flat.map((v) => Math.abs(v - 0.25)))).toBeLessThan(1e-7);
    // 1-D ramp 0..6 along x, 7 → 16: output 0's source coordinate is (0.5)·7/16 − 0.5 = −0.28125,
    // taps at −2..1 clamped to 0,0,0,1.
    const ramp = Float32Array.from({ length: 7 }, (_, i) => i);
    const out = bicubicResize(ramp, 1, 1, 7, 1, 16);
    const t = 1 - 0.28125; // fraction from floor(−0.28125) = −1
    const A = -0.75;
    const near = (x: number) => ((A + 2) * x - (A + 3)) * x * x + 1;
    const far = (x: number) => ((A * x - 5 * A) * x + 8 * A) * x - 4 * A;
    const w = [far(t + 1), near(t), near(1 - t), far(2 - t)];
    expect(out[0]).toBeCloseTo(w[0] * 0 + w[1] * 0 + w[2] * 0 + w[3] * 1, 6);
    // Output 8: source 8.5·7/16 − 0.5 = 3.21875, taps 2..5 (no clamping). The a = −0.75 kernel
    // does not reproduce a linear ramp (only a = −0.5 does), so compare with the weights.
    const u = 0.21875;
    const v = [far(u + 1), near(u), near(1 - u), far(2 - u)];
    expect(v.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 12);
    expect(out[8]).toBeCloseTo(2 * v[0] + 3 * v[1] + 4 * v[2] + 5 * v[3], 6);
  });

  it('agrees with onnxruntime Resize (cubic, half_pixel, a=-0.75, exclude_outside=0)', async () => {
    const C = 3;
    const src = Float32Array.from({ length: C * 7 * 7 }, (_, i) => Math.sin(i * 1.7) + 0.3 * Math.cos(i * 0.37));
    const g = new GraphBuilder('bicubic');
    const x = g.input('x', 'float32', [1, C, 7, 7]);
    const y = g.op('Resize', [x, '', '', g.constInt64([1, C, 256, 256])], {
      mode: 'cubic',
      coordinate_transformation_mode: 'half_pixel',
      cubic_coeff_a: attr.float(-0.75),
      exclude_outside: 0,
    });
    g.output(y, 'y', 'float32', [1, C, 256, 256]);
    const s = await ort.InferenceSession.create(g.serialize());
    const ref = (await s.run({ x: new ort.Tensor('float32', src, [1, C, 7, 7]) })).y.data as Float32Array;
    await s.release();
    const { max } = absErrors(bicubicResize(src, C, 7, 7, 256, 256), ref);
    expect(max).toBeLessThan(1e-5);
  });
});

describe('SAM 2.1 tiny image encoder (random weights, official PyTorch features of dog.jpg)', () => {
  it('builds the samexporter encoder contract', () => {
    expect(session.inputNames).toEqual(['image']);
    expect(session.outputNames).toEqual([...OUTPUTS]);
    const model = parseModel(modelBytes);
    const ops = (model.graph?.node ?? []).map((n) => `${n.domain ? `${n.domain}.` : ''}${n.opType}`);
    // One MultiHeadAttention per block, no [heads, L, L] scores.
    expect(ops.filter((o) => o === 'com.microsoft.MultiHeadAttention')).toHaveLength(12);
    expect(ops).not.toContain('Softmax');
    const names = new Set(model.graph?.initializer?.map((t) => t.name));
    for (const key of [
      'image_encoder.trunk.patch_embed.proj.weight',
      'image_encoder.trunk.pos_embed.resized',
      'image_encoder.trunk.blocks.1.proj.weight',
      'image_encoder.trunk.blocks.11.mlp.layers.1.bias',
      'image_encoder.neck.convs.1.conv.bias_plus_no_mem_embed',
      'sam_mask_decoder.conv_s0.weight_folded',
    ]) {
      expect(names.has(key), key).toBe(true);
    }
    console.log(
      `sam2.1_hiera_tiny encoder: build+serialize ${buildMs.toFixed(0)} ms, ${(modelBytes.length / 2 ** 20).toFixed(1)} MiB, ` +
        `session ${sessionMs.toFixed(0)} ms, ${(sam2EncoderMacs(cfg) / 1e9).toFixed(1)} GMAC`,
    );
  });

  it('(a) float16-rounded official input: within the bounds that rounding gives', async () => {
    const input = readNpyFloat16(path.join(sam2Dir(), 'input_image_fp16.npy'));
    expect(input.shape).toEqual([1, 3, 1024, 1024]);
    const { out, ms } = await runEncoder(session, input.data);
    console.log(`sam2.1_hiera_tiny encoder run: ${ms.toFixed(0)} ms`);
    const errs = report('input_image_fp16.npy upcast', out);
    for (const name of OUTPUTS) {
      expect(errs[name].max, name).toBeLessThanOrEqual(FP16_INPUT_BOUND[name].max);
      expect(errs[name].mean, name).toBeLessThanOrEqual(FP16_INPUT_BOUND[name].mean);
    }
  });

  describe('(b) our float32 preprocessing of dog.jpg', () => {
    let input: Float32Array;
    beforeAll(async () => {
      input = preprocessSam2(await loadImage(path.join(sharedDir(), 'images', 'dog.jpg')));
    });

    it('reproduces the official preprocessed input to its float16 rounding', () => {
      const stored = readNpyFloat16(path.join(sam2Dir(), 'input_image_fp16.npy')).data;
      const { max, mean } = absErrors(input, stored);
      console.log(`SAM 2 preprocessing of dog.jpg vs input_image_fp16.npy: max ${max.toExponential(3)}, mean ${mean.toExponential(3)}`);
      // Half an fp16 ulp at |x| in [2, 4) is 9.766e-4; the float32 values may differ from the
      // official ones by float32 reordering (~1e-6).
      expect(max).toBeLessThanOrEqual(9.766e-4 + 2e-6);
    });

    it(`matches every feature within ${MAX_ABS}`, async () => {
      const { out, ms } = await runEncoder(session, input);
      console.log(`sam2.1_hiera_tiny encoder run: ${ms.toFixed(0)} ms`);
      const errs = report('float32 preprocessing of dog.jpg', out);
      for (const name of OUTPUTS) {
        expect(errs[name].max, name).toBeLessThanOrEqual(Math.min(MAX_ABS, TOL.encoder.max));
        expect(errs[name].mean, name).toBeLessThanOrEqual(TOL.encoder.mean);
      }
    });

    it('the reference graph (MatMul/Softmax attention, unfolded conv_s0/conv_s1) gives the same features', async () => {
      const model = buildSam2Encoder(sd, cfg, { attention: 'reference', foldHighResConvs: false });
      const ops = (parseModel(model).graph?.node ?? []).map((n) => n.opType);
      expect(ops.filter((o) => o === 'Softmax')).toHaveLength(12);
      expect(ops).not.toContain('MultiHeadAttention');
      const s = await ort.InferenceSession.create(model);
      try {
        const errs = report('reference graph, float32 preprocessing', (await runEncoder(s, input)).out);
        for (const name of OUTPUTS) expect(errs[name].max, name).toBeLessThanOrEqual(Math.min(MAX_ABS, TOL.encoder.max));
      } finally {
        await s.release();
      }
    });
  });
});
