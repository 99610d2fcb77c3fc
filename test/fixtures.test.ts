/**
 * The fixture generator (fixtures/): ONNX oracle models with SAM's exact I/O contract, synthetic
 * images with true masks, determinism. Runs the models directly with onnxruntime-node, with a
 * minimal inline preprocessing (no dependency on src/engine).
 */
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateFixtures, type FixturePaths, type ModelManifest, type SceneFile } from '../fixtures/generate.js';
import { GraphBuilder, parseModel, attr } from '../src/convert/onnx-builder.js';
import { PIXEL_MEAN, PIXEL_STD } from '../fixtures/oracle-model.js';
import { loadGolden } from './helpers/golden.js';
import { listScenes, makeScene, maskIou, type Scene } from '../fixtures/synthetic.js';

const IMG = 1024;
let tmpRoot = '';
let fx: FixturePaths;
const sessions = new Map<string, ort.InferenceSession>();

async function session(file: string): Promise<ort.InferenceSession> {
  let s = sessions.get(file);
  if (!s) {
    s = await ort.InferenceSession.create(file, { intraOpNumThreads: 1 });
    sessions.set(file, s);
  }
  return s;
}

beforeAll(async () => {
  tmpRoot = await mkdtemp(path.join(os.tmpdir(), 'sam-fixtures-'));
  fx = await generateFixtures(path.join(tmpRoot, 'a'));
});

afterAll(async () => {
  for (const s of sessions.values()) await s.release();
  if (tmpRoot) await rm(tmpRoot, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------------------------
// helpers

/** Upright 8-bit RGB of a PNG: EXIF applied, alpha dropped, grey expanded, 16-bit reduced. */
async function decodeUpright(file: string): Promise<{ data: Uint8Array; width: number; height: number }> {
  const { data, info } = await sharp(file).autoOrient().removeAlpha().toColourspace('srgb').raw().toBuffer({ resolveWithObject: true });
  expect(info.channels).toBe(3);
  return { data: new Uint8Array(data.buffer, data.byteOffset, data.length), width: info.width, height: info.height };
}

interface Prepared {
  image: ort.Tensor;
  w: number;
  h: number;
  nw: number;
  nh: number;
}

/** Minimal SAM preprocessing: longest side 1024, normalize, zero-pad bottom/right, NCHW. */
async function preprocess(rgb: Uint8Array, w: number, h: number): Promise<Prepared> {
  const s = IMG / Math.max(w, h);
  const nw = Math.floor(w * s + 0.5);
  const nh = Math.floor(h * s + 0.5);
  const resized = await sharp(rgb, { raw: { width: w, height: h, channels: 3 } })
    .resize(nw, nh, { fit: 'fill', kernel: 'linear' })
    .raw()
    .toBuffer();
  const t = new Float32Array(3 * IMG * IMG);
  for (let y = 0; y < nh; y++) {
    for (let x = 0; x < nw; x++) {
      for (let c = 0; c < 3; c++) {
        t[c * IMG * IMG + y * IMG + x] = ((resized[(y * nw + x) * 3 + c] as number) - PIXEL_MEAN[c]) / PIXEL_STD[c];
      }
    }
  }
  return { image: new ort.Tensor('float32', t, [1, 3, IMG, IMG]), w, h, nw, nh };
}

async function embed(prep: Prepared, model = fx.models.oracle.encoder): Promise<ort.Tensor> {
  const out = await (await session(model)).run({ image: prep.image });
  return out.image_embeddings as ort.Tensor;
}

type Prompt = [x: number, y: number, label: number][];

interface DecodeOptions {
  maskInput?: Float32Array;
  hasMaskInput?: number;
}

/** Decoder feeds for one prompt set; points in original pixels, mapped to the 1024 frame. */
function feeds(emb: ort.Tensor, prep: Prepared, prompt: Prompt, o: DecodeOptions = {}): Record<string, ort.Tensor> {
  const coords = new Float32Array(prompt.length * 2);
  prompt.forEach(([x, y, label], i) => {
    coords[i * 2] = label === -1 ? 0 : x * (prep.nw / prep.w);
    coords[i * 2 + 1] = label === -1 ? 0 : y * (prep.nh / prep.h);
  });
  return {
    image_embeddings: emb,
    point_coords: new ort.Tensor('float32', coords, [1, prompt.length, 2]),
    point_labels: new ort.Tensor('float32', Float32Array.from(prompt.map((p) => p[2])), [1, prompt.length]),
    mask_input: new ort.Tensor('float32', o.maskInput ?? new Float32Array(256 * 256), [1, 1, 256, 256]),
    has_mask_input: new ort.Tensor('float32', new Float32Array([o.hasMaskInput ?? 0]), [1]),
    orig_im_size: new ort.Tensor('float32', new Float32Array([prep.h, prep.w]), [2]),
  };
}

interface Decoded {
  masks: Float32Array;
  iou: Float32Array;
  lowRes: Float32Array;
  M: number;
  dims: readonly number[];
}

async function decode(
  emb: ort.Tensor,
  prep: Prepared,
  prompt: Prompt,
  o: DecodeOptions = {},
  model = fx.models.oracle.decoder,
): Promise<Decoded> {
  const out = await (await session(model)).run(feeds(emb, prep, prompt, o));
  const masks = out.masks as ort.Tensor;
  return {
    masks: masks.data as Float32Array,
    iou: (out.iou_predictions as ort.Tensor).data as Float32Array,
    lowRes: (out.low_res_masks as ort.Tensor).data as Float32Array,
    M: masks.dims[1] as number,
    dims: masks.dims,
  };
}

/** Mask k of a decoder result, binarized at 0 (SAM's mask threshold). */
function binary(d: Decoded, k: number, hw: number): Uint8Array {
  const out = new Uint8Array(hw);
  for (let i = 0; i < hw; i++) out[i] = (d.masks[k * hw + i] as number) > 0 ? 1 : 0;
  return out;
}

const area = (m: Uint8Array): number => m.reduce((a, v) => a + v, 0);

/** The bytes of a typed array (views included), for exact comparisons. */
const bytes = (a: Float32Array | Uint8Array): Buffer => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

interface Loaded {
  scene: Scene;
  prep: Prepared;
  emb: ort.Tensor;
}
const loaded = new Map<string, Loaded>();

async function load(name: string): Promise<Loaded> {
  let l = loaded.get(name);
  if (!l) {
    const scene = makeScene(name);
    const file = fx.scenes[name]?.png as string;
    const { data, width, height } = await decodeUpright(file);
    const prep = await preprocess(data, width, height);
    l = { scene, prep, emb: await embed(prep) };
    loaded.set(name, l);
  }
  return l;
}

/** SAM's postprocess_masks in float64: bilinear (align_corners=False) 256 -> 1024, crop, -> orig. */
function bilinear(src: ArrayLike<number>, ih: number, iw: number, oh: number, ow: number): Float64Array {
  const out = new Float64Array(oh * ow);
  const sh = ih / oh;
  const sw = iw / ow;
  for (let y = 0; y < oh; y++) {
    const v = Math.max(0, sh * (y + 0.5) - 0.5);
    const y0 = Math.floor(v);
    const y1 = y0 < ih - 1 ? y0 + 1 : y0;
    const ly = v - y0;
    for (let x = 0; x < ow; x++) {
      const u = Math.max(0, sw * (x + 0.5) - 0.5);
      const x0 = Math.floor(u);
      const x1 = x0 < iw - 1 ? x0 + 1 : x0;
      const lx = u - x0;
      const top = (1 - lx) * (src[y0 * iw + x0] as number) + lx * (src[y0 * iw + x1] as number);
      const bottom = (1 - lx) * (src[y1 * iw + x0] as number) + lx * (src[y1 * iw + x1] as number);
      out[y * ow + x] = (1 - ly) * top + ly * bottom;
    }
  }
  return out;
}

function postprocessReference(low: ArrayLike<number>, h: number, w: number): Float64Array {
  const s = IMG / Math.max(h, w);
  const ph = Math.floor(h * s + 0.5);
  const pw = Math.floor(w * s + 0.5);
  const big = bilinear(low, 256, 256, IMG, IMG);
  const crop = new Float64Array(ph * pw);
  for (let y = 0; y < ph; y++) crop.set(big.subarray(y * IMG, y * IMG + pw), y * pw);
  return bilinear(crop, ph, pw, h, w);
}

/** An oracle embedding from a 256x256 map of sub-cell colours (normalized RGB). */
function embeddingFromColours(colour: (X: number, Y: number) => readonly number[]): ort.Tensor {
  const e = new Float32Array(256 * 64 * 64);
  for (let Y = 0; Y < 256; Y++) {
    for (let X = 0; X < 256; X++) {
      const rgb = colour(X, Y);
      const [y, x, sub] = [Y >> 2, X >> 2, (Y & 3) * 4 + (X & 3)];
      for (let c = 0; c < 3; c++) e[(3 + sub * 3 + c) * 4096 + y * 64 + x] = rgb[c] as number;
    }
  }
  return new ort.Tensor('float32', e, [1, 256, 64, 64]);
}

async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...(await listFiles(p)));
    else out.push(p);
  }
  return out.sort();
}

// ---------------------------------------------------------------------------------------------

describe('onnx-builder', () => {
  it('builds, serializes and runs a small graph with symbolic dims and typed attributes', async () => {
    const g = new GraphBuilder('tiny');
    const x = g.input('x', 'float32', [1, 'n']);
    const y = g.op('Mul', [x, g.constFloat([2], [])]);
    const clipped = g.op('Clip', [y, g.constFloat([0], []), g.constFloat([5], [])]);
    const summed = g.op('ReduceSum', [clipped, g.constInt64([1])], { keepdims: 1 });
    const lrelu = g.op('LeakyRelu', [g.op('Sub', [clipped, g.constFloat([1], [])])], { alpha: attr.float(0.5) });
    g.output(summed, 'sum', 'float32', [1, 1]);
    g.output(lrelu, 'act', 'float32', [1, 'n']);
    const bytes = g.serialize();
    const model = parseModel(bytes);
    expect(Number(model.irVersion)).toBe(8);
    expect(Number(model.opsetImport?.[0]?.version)).toBe(17);
    expect(bytes.equals(g.serialize())).toBe(true);
    const s = await ort.InferenceSession.create(bytes);
    expect(s.inputMetadata[0]).toMatchObject({ name: 'x', shape: [1, 'n'] });
    const r = await s.run({ x: new ort.Tensor('float32', new Float32Array([1, 2, 3]), [1, 3]) });
    expect(Array.from((r.sum as ort.Tensor).data as Float32Array)).toEqual([11]);
    expect(Array.from((r.act as ort.Tensor).data as Float32Array)).toEqual([1, 3, 4]);
    await s.release();
  });

  it('refuses a float where an INT attribute is implied', () => {
    const g = new GraphBuilder('bad');
    const x = g.input('x', 'float32', [1]);
    expect(() => g.op('LeakyRelu', [x], { alpha: 0.5 })).toThrow(/not an integer/);
  });
});

describe('generated files', () => {
  it('writes every model folder with the exact manifest format', () => {
    const expected: Record<string, [string, boolean] | undefined> = {
      oracle: ['oracle-v1', false],
      oracleSingle: ['oracle-single-v1', false],
      oracleBatched: ['oracle-batched-v1', true],
      oracleNoManifest: undefined,
      brokenDecoder: ['broken-decoder-v1', false],
      badEncoder: ['bad-encoder-v1', false],
    };
    for (const [key, paths] of Object.entries(fx.models)) {
      expect(existsSync(paths.encoder)).toBe(true);
      expect(existsSync(paths.decoder)).toBe(true);
      const want = expected[key];
      if (!want) {
        expect(paths.manifest).toBeUndefined();
        expect(existsSync(path.join(paths.dir, 'manifest.json'))).toBe(false);
        continue;
      }
      const manifest = JSON.parse(readFileSync(paths.manifest as string, 'utf8')) as ModelManifest;
      expect(manifest).toEqual({
        format: 'sam-onnx/1',
        id: want[0],
        type: 'oracle',
        encoder: 'encoder.onnx',
        decoder: 'decoder.onnx',
        decoderBatched: want[1],
        description: expect.any(String) as unknown,
        ...(key === 'oracle' ? { splitDecoder: { image: 'decoder_image.onnx', prompt: 'decoder_prompt.onnx', masks: 'decoder_masks.onnx' } } : {}),
      });
    }
    for (const f of Object.values(fx.models.oracle.splitDecoder ?? {})) expect(existsSync(f)).toBe(true);
    expect(path.basename(fx.models.oracle.dir)).toBe('oracle');
    expect(path.basename(fx.models.oracleNoManifest.dir)).toBe('oracle-nomanifest');
  });

  it('writes each scene as PNG + JSON + one mask PNG per shape, and an index', async () => {
    const index = JSON.parse(readFileSync(path.join(fx.imagesDir, 'index.json'), 'utf8')) as { scenes: string[] };
    expect(index.scenes).toEqual(listScenes());
    for (const name of listScenes()) {
      const scene = makeScene(name);
      const file = JSON.parse(readFileSync(fx.scenes[name]?.json as string, 'utf8')) as SceneFile;
      expect(file.width).toBe(scene.width);
      expect(file.height).toBe(scene.height);
      expect(file.shapes.map((s) => s.name)).toEqual(scene.shapes.map((s) => s.name));
      for (const shape of scene.shapes) {
        const maskFile = path.join(fx.imagesDir, `${name}.mask-${shape.name}.png`);
        const meta = await sharp(maskFile).metadata();
        expect([meta.width, meta.height, meta.channels, meta.depth]).toEqual([scene.width, scene.height, 1, 'uchar']);
        const { data, info } = await sharp(maskFile).raw().toBuffer({ resolveWithObject: true });
        const decoded = Uint8Array.from({ length: scene.width * scene.height }, (_, i) => ((data[i * info.channels] as number) > 127 ? 1 : 0));
        expect(Buffer.from(decoded).equals(Buffer.from(shape.mask))).toBe(true);
        expect(area(shape.mask)).toBe(shape.area);
        const [px, py] = shape.point;
        expect(shape.mask[py * scene.width + px]).toBe(1);
      }
    }
  });

  it('stores the image variants as promised and they decode to the upright pixels', async () => {
    for (const name of listScenes()) {
      const scene = makeScene(name);
      const file = fx.scenes[name]?.png as string;
      const meta = await sharp(file).metadata();
      const decoded = await decodeUpright(file);
      expect([decoded.width, decoded.height]).toEqual([scene.width, scene.height]);
      expect(Buffer.from(decoded.data).equals(Buffer.from(scene.pixels)), name).toBe(true);
      switch (scene.format) {
        case 'rgb16':
          expect([meta.depth, meta.channels]).toEqual(['ushort', 3]);
          break;
        case 'gray8':
          expect([meta.depth, meta.channels]).toEqual(['uchar', 1]);
          break;
        case 'rgba8':
          expect([meta.depth, meta.channels, meta.hasAlpha]).toEqual(['uchar', 4, true]);
          break;
        default:
          expect([meta.depth, meta.channels]).toEqual(['uchar', 3]);
      }
      if (scene.orientation === 6) {
        expect(meta.orientation).toBe(6);
        // stored on its side: a reader that ignores EXIF sees a different, transposed image
        expect([meta.width, meta.height]).toEqual([scene.height, scene.width]);
      } else {
        expect(meta.orientation ?? 1).toBe(1);
        expect([meta.width, meta.height]).toEqual([scene.width, scene.height]);
      }
    }
    // the RGBA variant really has a non-opaque background
    const { data } = await sharp(fx.scenes['rgba-320x240']?.png as string).raw().toBuffer({ resolveWithObject: true });
    expect(data[3]).toBe(160);
  });

  it('is deterministic and idempotent', async () => {
    const again = await generateFixtures(path.join(tmpRoot, 'b'));
    const filesA = await listFiles(fx.root);
    const filesB = await listFiles(again.root);
    expect(filesA.map((f) => path.relative(fx.root, f))).toEqual(filesB.map((f) => path.relative(again.root, f)));
    for (let i = 0; i < filesA.length; i++) {
      const [a, b] = [await readFile(filesA[i] as string), await readFile(filesB[i] as string)];
      expect(a.equals(b), path.relative(fx.root, filesA[i] as string)).toBe(true);
    }
    // generating again into the same folder rewrites nothing
    const before = await Promise.all(filesA.map(async (f) => (await stat(f)).mtimeMs));
    await new Promise((r) => setTimeout(r, 20));
    await generateFixtures(fx.root);
    const after = await Promise.all(filesA.map(async (f) => (await stat(f)).mtimeMs));
    expect(after).toEqual(before);
  });
});

describe('model I/O contract', () => {
  const officialInputs = (batch: number | string) => [
    { name: 'image_embeddings', shape: [1, 256, 64, 64] },
    { name: 'point_coords', shape: [batch, 'num_points', 2] },
    { name: 'point_labels', shape: [batch, 'num_points'] },
    { name: 'mask_input', shape: [batch, 1, 256, 256] },
    { name: 'has_mask_input', shape: [batch] },
    { name: 'orig_im_size', shape: [2] },
  ];
  const outputs = (batch: number | string, m: number) => [
    { name: 'masks', shape: [batch, m, 'orig_h', 'orig_w'] },
    { name: 'iou_predictions', shape: [batch, m] },
    { name: 'low_res_masks', shape: [batch, m, 256, 256] },
  ];
  const io = (s: ort.InferenceSession) => ({
    inputs: s.inputMetadata.map((m) => ({ name: m.name, shape: m.isTensor ? [...m.shape] : [] })),
    outputs: s.outputMetadata.map((m) => ({ name: m.name, shape: m.isTensor ? [...m.shape] : [] })),
    types: [...s.inputMetadata, ...s.outputMetadata].map((m) => (m.isTensor ? m.type : 'none')),
  });

  it('encoders: image [1,3,1024,1024] -> image_embeddings [1,256,64,64] (bad encoder: 32x32)', async () => {
    for (const key of ['oracle', 'oracleSingle', 'oracleBatched', 'oracleNoManifest', 'brokenDecoder'] as const) {
      expect(io(await session(fx.models[key].encoder))).toEqual({
        inputs: [{ name: 'image', shape: [1, 3, 1024, 1024] }],
        outputs: [{ name: 'image_embeddings', shape: [1, 256, 64, 64] }],
        types: ['float32', 'float32'],
      });
    }
    const bad = await session(fx.models.badEncoder.encoder);
    expect(io(bad).outputs).toEqual([{ name: 'image_embeddings', shape: [1, 256, 32, 32] }]);
    const out = await bad.run({ image: new ort.Tensor('float32', new Float32Array(3 * IMG * IMG), [1, 3, IMG, IMG]) });
    expect((out.image_embeddings as ort.Tensor).dims).toEqual([1, 256, 32, 32]);
  });

  it('decoders: the official signature (M=4), single-mask (M=1), batched, broken', async () => {
    const float = Array(9).fill('float32');
    expect(io(await session(fx.models.oracle.decoder))).toEqual({ inputs: officialInputs(1), outputs: outputs(1, 4), types: float });
    expect(io(await session(fx.models.oracleNoManifest.decoder))).toEqual({ inputs: officialInputs(1), outputs: outputs(1, 4), types: float });
    expect(io(await session(fx.models.badEncoder.decoder))).toEqual({ inputs: officialInputs(1), outputs: outputs(1, 4), types: float });
    expect(io(await session(fx.models.oracleSingle.decoder))).toEqual({ inputs: officialInputs(1), outputs: outputs(1, 1), types: float });
    expect(io(await session(fx.models.oracleBatched.decoder))).toEqual({
      inputs: officialInputs('batch'),
      outputs: outputs('batch', 4),
      types: float,
    });
    const broken = io(await session(fx.models.brokenDecoder.decoder));
    expect(broken.inputs.map((i) => i.name)).toEqual([
      'image_embeddings',
      'point_coords',
      'point_label',
      'mask_input',
      'has_mask_input',
      'orig_im_size',
    ]);
  });
});

describe('oracle encoder', () => {
  it('puts cell colours in channels 0..2, sub-cell colours in 3..50 and zeros after', async () => {
    const { scene, emb } = await load('basic-320x240');
    const e = emb.data as Float32Array;
    expect(emb.dims).toEqual([1, 256, 64, 64]);
    const shape = scene.shapes[0] as Scene['shapes'][number];
    // a cell well inside the red rectangle: (x, y) * 3.2 / 16
    const [px, py] = shape.point;
    const cx = Math.floor((px * 3.2) / 16);
    const cy = Math.floor((py * 3.2) / 16);
    for (let c = 0; c < 3; c++) {
      const want = ((shape.colour[c] as number) - PIXEL_MEAN[c]) / PIXEL_STD[c];
      expect(e[c * 4096 + cy * 64 + cx]).toBeCloseTo(want, 4);
      for (let sub = 0; sub < 16; sub++) expect(e[(3 + sub * 3 + c) * 4096 + cy * 64 + cx]).toBeCloseTo(want, 4);
    }
    // padding (rows >= 768 of the 1024 frame = cells >= 48) is 0 after normalization
    expect(e[0 * 4096 + 60 * 64 + 10]).toBe(0);
    let maxTail = 0;
    for (let i = 51 * 4096; i < e.length; i++) maxTail = Math.max(maxTail, Math.abs(e[i] as number));
    expect(maxTail).toBe(0);
  });
});

describe('oracle decoder semantics', () => {
  const segScenes = listScenes();

  it.each(segScenes)('%s: one click per shape gives that shape in masks 0..3 (IoU >= 0.9)', async (name) => {
    const { scene, prep, emb } = await load(name);
    const hw = scene.width * scene.height;
    for (const shape of scene.shapes) {
      const d = await decode(emb, prep, [[shape.point[0], shape.point[1], 1], [0, 0, -1]]);
      expect(d.dims).toEqual([1, 4, scene.height, scene.width]);
      if (shape.name === 'blue-speck') continue; // same colour as the square: its click gives the square
      for (let k = 0; k < 4; k++) {
        expect(maskIou(binary(d, k, hw), shape.mask), `${name} ${shape.name} mask ${k}`).toBeGreaterThanOrEqual(0.9);
      }
      const multi = Array.from(d.iou.subarray(1, 4));
      for (const v of multi) expect(v).toBeGreaterThan(0.88);
      expect(multi.indexOf(Math.max(...multi))).toBe(1); // mask 2 is the best multimask output
      expect(d.iou[0]).toBeCloseTo(d.iou[2] as number, 6);
    }
  });

  it('speck-hole: the square click keeps the hole out and takes the same-coloured speck in', async () => {
    const { scene, prep, emb } = await load('speck-hole-256');
    const square = scene.shapes.find((s) => s.name === 'blue-square') as Scene['shapes'][number];
    const speck = scene.shapes.find((s) => s.name === 'blue-speck') as Scene['shapes'][number];
    const d = await decode(emb, prep, [[square.point[0], square.point[1], 1], [0, 0, -1]]);
    const m = binary(d, 2, scene.width * scene.height);
    let speckIn = 0;
    speck.mask.forEach((v, i) => (speckIn += v && m[i] ? 1 : 0));
    expect(speckIn).toBe(speck.area);
    // hole: rect(116, 96, 8, 8) is background
    for (let y = 97; y < 103; y++) for (let x = 117; x < 123; x++) expect(m[y * scene.width + x]).toBe(0);
  });

  it('box prompt: the box centre picks the colour, cells outside the box are cut', async () => {
    const { scene, prep, emb } = await load('basic-320x240');
    const hw = scene.width * scene.height;
    const rect = scene.shapes.find((s) => s.name === 'red-rect') as Scene['shapes'][number];
    const [bx, by, bw, bh] = rect.bbox;
    const whole = await decode(emb, prep, [[bx - 4, by - 4, 2], [bx + bw + 4, by + bh + 4, 3]]);
    for (let k = 0; k < 4; k++) expect(maskIou(binary(whole, k, hw), rect.mask)).toBeGreaterThanOrEqual(0.9);
    // a box over the left half of the blue disc: the disc, cut at the box's right edge
    const disc = scene.shapes.find((s) => s.name === 'blue-disc') as Scene['shapes'][number];
    const [dx, dy, dw, dh] = disc.bbox;
    const cut = Math.round(dx + dw / 2);
    const expected = disc.mask.map((v, i) => (v && i % scene.width <= cut ? 1 : 0));
    const half = await decode(emb, prep, [[dx - 3, dy - 3, 2], [cut, dy + dh + 3, 3]]);
    expect(maskIou(binary(half, 2, hw), expected)).toBeGreaterThanOrEqual(0.9);
    // a box + a foreground point: mean of both colours is used; a point of the same colour changes nothing
    const both = await decode(emb, prep, [[rect.point[0], rect.point[1], 1], [bx - 4, by - 4, 2], [bx + bw + 4, by + bh + 4, 3]]);
    expect(maskIou(binary(both, 0, hw), rect.mask)).toBeGreaterThanOrEqual(0.9);
  });

  it('a background point next to the foreground point shrinks the mask', async () => {
    const { scene, prep, emb } = await load('basic-320x240');
    const hw = scene.width * scene.height;
    const rect = scene.shapes.find((s) => s.name === 'red-rect') as Scene['shapes'][number];
    const [bx, by, bw, bh] = rect.bbox;
    const fg: [number, number, number] = [bx + 20, by + bh / 2, 1];
    const plain = await decode(emb, prep, [fg, [0, 0, -1]]);
    const bgX = bx + bw - 15;
    const bgY = Math.round(by + bh / 2);
    const withBg = await decode(emb, prep, [fg, [bgX, bgY, 0]]);
    for (let k = 0; k < 4; k++) {
      const [a, b] = [binary(plain, k, hw), binary(withBg, k, hw)];
      expect(area(b)).toBeLessThan(area(a) - 300);
      expect(b[bgY * scene.width + bgX]).toBe(0);
      expect(b[fg[1] * scene.width + fg[0]]).toBe(1);
      for (let i = 0; i < hw; i++) if (b[i]) expect(a[i]).toBe(1); // only shrinks
    }
  });

  it('mask_input is added (x0.5) only when has_mask_input is 1', async () => {
    const { scene, prep, emb } = await load('basic-320x240');
    const rect = scene.shapes.find((s) => s.name === 'red-rect') as Scene['shapes'][number];
    const prompt: Prompt = [[rect.point[0], rect.point[1], 1], [0, 0, -1]];
    const plain = await decode(emb, prep, prompt);
    const maskInput = new Float32Array(256 * 256);
    for (let y = 150; y < 180; y++) for (let x = 200; x < 240; x++) maskInput[y * 256 + x] = 100;
    const ignored = await decode(emb, prep, prompt, { maskInput, hasMaskInput: 0 });
    expect(bytes(ignored.lowRes).equals(bytes(plain.lowRes))).toBe(true);
    const used = await decode(emb, prep, prompt, { maskInput, hasMaskInput: 1 });
    const i = 165 * 256 + 220;
    for (let k = 0; k < 4; k++) expect(used.lowRes[k * 65536 + i]).toBeCloseTo((plain.lowRes[k * 65536 + i] as number) + 50, 3);
    // low-res (row 165, col 220) is frame (882, 662), pixel (275, 206) of the original: white background
    const hw = scene.width * scene.height;
    const at = 206 * scene.width + 275;
    expect(binary(plain, 2, hw)[at]).toBe(0);
    expect(binary(used, 2, hw)[at]).toBe(1);
  });

  it('a click on a blended edge sub-cell is ambiguous (predicted IoU < 0.88), one beside it is not', async () => {
    // colour map: A for X < 100, the A/B blend at X = 100, B for 100 < X < 140, C beyond
    const A = [2, 0, 0];
    const B = [-2, 0, 0];
    const C = [-2, 2, 0];
    const emb = embeddingFromColours((X) => (X < 100 ? A : X === 100 ? [0, 0, 0] : X < 140 ? B : C));
    const frame: Prepared = { image: new ort.Tensor('float32', new Float32Array(1), [1]), w: IMG, h: IMG, nw: IMG, nh: IMG };
    const onBlend = await decode(emb, frame, [[100 * 4 + 2, 500, 1], [0, 0, -1]]);
    for (let k = 1; k < 4; k++) expect(onBlend.iou[k]).toBeLessThan(0.88);
    const beside = await decode(emb, frame, [[101 * 4 + 2, 500, 1], [0, 0, -1]]);
    for (let k = 1; k < 4; k++) expect(beside.iou[k]).toBeGreaterThan(0.88);
    // and the B mask ends halfway through the blended column (x = 402 in the 1024 frame)
    const row = 500 * IMG;
    expect(beside.masks[2 * IMG * IMG + row + 401]).toBeLessThan(0);
    expect(beside.masks[2 * IMG * IMG + row + 403]).toBeGreaterThan(0);
  });

  it('stability: clicked shapes have stability score >= 0.95 (offset 1.0)', async () => {
    const { scene, prep, emb } = await load('wide-640x360');
    const hw = scene.width * scene.height;
    for (const shape of scene.shapes) {
      const d = await decode(emb, prep, [[shape.point[0], shape.point[1], 1], [0, 0, -1]]);
      for (let k = 1; k < 4; k++) {
        let hi = 0;
        let lo = 0;
        for (let i = 0; i < hw; i++) {
          const v = d.masks[k * hw + i] as number;
          if (v > 1) hi++;
          if (v > -1) lo++;
        }
        expect(hi / lo).toBeGreaterThanOrEqual(0.95);
      }
    }
  });
});

describe('decoder variants', () => {
  it('batched: B=3 equals three single calls', async () => {
    const { scene, prep, emb } = await load('basic-320x240');
    const prompts: Prompt[] = [
      [[(scene.shapes[0] as Scene['shapes'][number]).point[0], 60, 1], [0, 0, -1]],
      [[200, 80, 1], [230, 80, 0]],
      [[30, 30, 2], [150, 130, 3]],
    ];
    const singles = await Promise.all(prompts.map((p) => decode(emb, prep, p)));
    const single = prompts.map((p) => feeds(emb, prep, p));
    const cat = (key: string): Float32Array => {
      const parts = single.map((f) => (f[key] as ort.Tensor).data as Float32Array);
      const out = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
      let o = 0;
      for (const p of parts) {
        out.set(p, o);
        o += p.length;
      }
      return out;
    };
    const s = await session(fx.models.oracleBatched.decoder);
    const out = await s.run({
      image_embeddings: emb,
      point_coords: new ort.Tensor('float32', cat('point_coords'), [3, 2, 2]),
      point_labels: new ort.Tensor('float32', cat('point_labels'), [3, 2]),
      mask_input: new ort.Tensor('float32', cat('mask_input'), [3, 1, 256, 256]),
      has_mask_input: new ort.Tensor('float32', cat('has_mask_input'), [3]),
      orig_im_size: new ort.Tensor('float32', new Float32Array([prep.h, prep.w]), [2]),
    });
    expect((out.masks as ort.Tensor).dims).toEqual([3, 4, prep.h, prep.w]);
    expect((out.iou_predictions as ort.Tensor).dims).toEqual([3, 4]);
    expect((out.low_res_masks as ort.Tensor).dims).toEqual([3, 4, 256, 256]);
    const pieces = { masks: 'masks', iou: 'iou_predictions', lowRes: 'low_res_masks' } as const;
    for (const [field, outName] of Object.entries(pieces) as [keyof typeof pieces, string][]) {
      const all = (out[outName] as ort.Tensor).data as Float32Array;
      const per = all.length / 3;
      for (let b = 0; b < 3; b++) {
        const mine = all.subarray(b * per, (b + 1) * per);
        const theirs = (singles[b] as Decoded)[field];
        expect(bytes(mine).equals(bytes(theirs)), `${field}[${b}]`).toBe(true);
      }
    }
  });

  it('split: image side + prompt side + mask side give the batched decoder\'s iou_predictions and low_res_masks bit for bit', async () => {
    const split = fx.models.oracle.splitDecoder!;
    const [image, prompt, masks, batched] = await Promise.all([session(split.image), session(split.prompt), session(split.masks), session(fx.models.oracleBatched.decoder)]);
    for (const name of ['basic-320x240', 'speck-hole-256']) {
      const { emb } = await load(name);
      const side = await image.run({ image_embeddings: emb });
      // Points of every label, boxes, background points and padding; batches of equal N.
      let seed = 7;
      const rnd = (): number => (seed = (seed * 16807) % 2147483647) / 2147483647;
      for (const n of [2, 3, 5]) {
        const b = 6;
        const coords = Float32Array.from({ length: b * n * 2 }, () => rnd() * 1024);
        const labels = Float32Array.from({ length: b * n }, () => [0, 1, 1, 2, 3, -1][Math.floor(rnd() * 6)]);
        const pointCoords = new ort.Tensor('float32', coords, [b, n, 2]);
        const pointLabels = new ort.Tensor('float32', labels, [b, n]);
        const want = await batched.run({
          image_embeddings: emb,
          point_coords: pointCoords,
          point_labels: pointLabels,
          mask_input: new ort.Tensor('float32', new Float32Array(b * 256 * 256), [b, 1, 256, 256]),
          has_mask_input: new ort.Tensor('float32', new Float32Array(b), [b]),
          orig_im_size: new ort.Tensor('float32', new Float32Array([64, 64]), [2]),
        });
        const stage1 = await prompt.run({ ...side, point_coords: pointCoords, point_labels: pointLabels });
        const stage2 = await masks.run({ oracle_logits: stage1.oracle_logits });
        expect(bytes(stage1.iou_predictions.data as Float32Array).equals(bytes(want.iou_predictions.data as Float32Array)), `${name} N=${n} iou`).toBe(true);
        const got = stage2.low_res_masks.data as Float32Array;
        const ref = want.low_res_masks.data as Float32Array;
        // The same values; a zero may differ in sign only (x + +0 vs x + -0 orders), which no threshold sees.
        let differ = 0;
        for (let i = 0; i < ref.length; i++) if (got[i] !== ref[i]) differ++;
        expect(differ, `${name} N=${n} low_res_masks`).toBe(0);
      }
    }
  });

  it("single-mask export: M=1, SAM's select_masks (best of 1..3 for one point, mask 0 for more)", async () => {
    const { scene, prep, emb } = await load('tall-200x500');
    const hw = scene.width * scene.height;
    const shape = scene.shapes[1] as Scene['shapes'][number];
    const [x, y] = shape.point;
    for (const prompt of [
      [[x, y, 1], [0, 0, -1]],
      [[x, y, 1], [x + 5, y + 5, 1], [0, 0, -1]],
    ] as Prompt[]) {
      const multi = await decode(emb, prep, prompt);
      const single = await decode(emb, prep, prompt, {}, fx.models.oracleSingle.decoder);
      expect(single.dims).toEqual([1, 1, scene.height, scene.width]);
      const iou = Array.from(multi.iou);
      const pick = prompt.length > 2 ? 0 : 1 + iou.slice(1).indexOf(Math.max(...iou.slice(1)));
      expect(single.iou[0]).toBe(multi.iou[pick]);
      expect(bytes(single.masks).equals(bytes(multi.masks.subarray(pick * hw, (pick + 1) * hw)))).toBe(true);
      expect(maskIou(binary(single, 0, hw), shape.mask)).toBeGreaterThanOrEqual(0.9);
    }
  });

  it('broken decoder: no point_labels input, ORT refuses the official feeds', async () => {
    const { prep, emb } = await load('basic-320x240');
    const s = await session(fx.models.brokenDecoder.decoder);
    await expect(s.run(feeds(emb, prep, [[10, 10, 1], [0, 0, -1]]))).rejects.toThrow();
  });
});

describe("masks = SAM's postprocess_masks(low_res_masks)", () => {
  it.each([
    [240, 320],
    [500, 200],
    [64, 96],
    [1, 7],
    [1024, 1024],
    [1500, 2250],
  ])('orig %ix%i', async (h, w) => {
    const emb = new Float32Array(256 * 64 * 64);
    for (let i = 3 * 4096; i < 51 * 4096; i++) emb[i] = Math.sin(i * 0.0007) * 2;
    const prep: Prepared = { image: new ort.Tensor('float32', new Float32Array(1), [1]), w, h, nw: w, nh: h };
    const maskInput = Float32Array.from({ length: 65536 }, (_, i) => Math.cos(i * 0.01) * 10);
    const d = await decode(new ort.Tensor('float32', emb, [1, 256, 64, 64]), prep, [[w / 3, h / 2, 1], [0, 0, -1]], {
      maskInput,
      hasMaskInput: 1,
    });
    expect(d.dims).toEqual([1, 4, h, w]);
    for (let k = 0; k < 4; k++) {
      const ref = postprocessReference(d.lowRes.subarray(k * 65536, (k + 1) * 65536), h, w);
      let maxErr = 0;
      for (let i = 0; i < h * w; i++) maxErr = Math.max(maxErr, Math.abs((d.masks[k * h * w + i] as number) - (ref[i] as number)));
      if (k === 0) console.log(`oracle in-graph upscaling ${h}x${w} vs float64 reference: max abs ${maxErr.toExponential(2)}`);
      // float32 sampling coordinates (ORT) vs float64 here: ~1e-4 of a pixel times logit slopes up to ~10/px
      expect(maxErr).toBeLessThan(2e-3);
    }
  });

  it('matches the golden postprocess_masks of ../shared/golden (official PyTorch output)', async () => {
    const golden = loadGolden<{
      postprocess_masks: { orig_size: [number, number]; low_res_logits_256x256: number[]; upscaled_logits: number[] }[];
    }>().postprocess_masks;
    expect(golden.length).toBeGreaterThan(0);
    // A flat colour map at distance exactly 1 (= the tolerance of masks 0 and 2) from the colour of
    // the clicked corner sub-cell makes mask 0's colour logits 0 wherever the crop reads them, so
    // its logits are 0.5 * mask_input = the golden low-res logits.
    const emb = embeddingFromColours((X, Y) => (X === 255 && Y === 255 ? [0, 0, 0] : [1, 0, 0]));
    for (const g of golden) {
      const [h, w] = g.orig_size;
      const frame: Prepared = { image: new ort.Tensor('float32', new Float32Array(1), [1]), w, h, nw: w, nh: h };
      // nw = w, nh = h: feeds() passes the click as is, in the 1024 frame
      const d = await decode(emb, frame, [[1022, 1022, 1], [0, 0, -1]], {
        maskInput: Float32Array.from(g.low_res_logits_256x256, (v) => 2 * v),
        hasMaskInput: 1,
      });
      let maxErr = 0;
      for (let i = 0; i < h * w; i++) maxErr = Math.max(maxErr, Math.abs((d.masks[i] as number) - (g.upscaled_logits[i] as number)));
      console.log(`oracle in-graph postprocess_masks ${h}x${w} vs PyTorch: max abs ${maxErr.toExponential(2)}`);
      expect(maxErr).toBeLessThan(3e-4);
    }
  });
});

describe('many-small-512 and crop layers', () => {
  const grid = (n: number, x0: number, y0: number, w: number, h: number): [number, number][] => {
    const pts: [number, number][] = [];
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) pts.push([x0 + ((j + 0.5) / n) * w, y0 + ((i + 0.5) / n) * h]);
    return pts;
  };

  it('no point of the whole-image 32x32 grid falls on a small shape; a crop-layer-1 grid point does', () => {
    const scene = makeScene('many-small-512');
    const small = scene.shapes.filter((s) => s.small);
    expect(small.length).toBe(4);
    const inside = (s: Scene['shapes'][number], [x, y]: [number, number], margin: number): boolean => {
      const [bx, by, bw, bh] = s.bbox;
      return x >= bx + margin && x <= bx + bw - margin && y >= by + margin && y <= by + bh - margin;
    };
    const layer0 = grid(32, 0, 0, 512, 512);
    // SAM's crop boxes for layer 1 on 512x512: overlap int(512 * 512/1500) = 174, crop 343
    const crops = [
      [0, 0],
      [169, 0],
      [0, 169],
      [169, 169],
    ].map(([x, y]) => [x, y, 343, 343] as const);
    for (const s of small) {
      expect(s.bbox[2] / 512).toBeGreaterThan(0.02);
      expect(s.bbox[2] / 512).toBeLessThan(0.03);
      expect(layer0.some((p) => inside(s, p, -1))).toBe(false);
      const found = crops.some(([cx, cy, cw, ch]) => {
        const [bx, by, bw, bh] = s.bbox;
        const awayFromInnerEdges =
          (cx === 0 || bx - cx > 20) && (cx + cw >= 512 || cx + cw - (bx + bw) > 20) && (cy === 0 || by - cy > 20) && (cy + ch >= 512 || cy + ch - (by + bh) > 20);
        return awayFromInnerEdges && grid(32, cx, cy, cw, ch).some((p) => inside(s, p, 3));
      });
      expect(found, s.name).toBe(true);
    }
  });

  it('in the crop [169,169,512,512] the oracle segments the small cyan square from a grid point', async () => {
    const scene = makeScene('many-small-512');
    const cyan = scene.shapes.find((s) => s.name === 'small-cyan') as Scene['shapes'][number];
    const [cx, cy, cw, ch] = [169, 169, 343, 343];
    const rgb = await sharp(scene.pixels, { raw: { width: 512, height: 512, channels: 3 } })
      .extract({ left: cx, top: cy, width: cw, height: ch })
      .raw()
      .toBuffer();
    const prep = await preprocess(new Uint8Array(rgb), cw, ch);
    const emb = await embed(prep);
    const [bx, by, bw, bh] = cyan.bbox;
    const pts = grid(32, 0, 0, cw, ch).filter(([x, y]) => x + cx > bx + 3 && x + cx < bx + bw - 3 && y + cy > by + 3 && y + cy < by + bh - 3);
    expect(pts.length).toBeGreaterThan(0);
    const [px, py] = pts[0] as [number, number];
    const d = await decode(emb, prep, [[px, py, 1], [0, 0, -1]]);
    const crop = new Uint8Array(cw * ch);
    for (let y = 0; y < ch; y++) for (let x = 0; x < cw; x++) crop[y * cw + x] = cyan.mask[(y + cy) * 512 + x + cx] as number;
    for (let k = 1; k < 4; k++) {
      expect(maskIou(binary(d, k, cw * ch), crop)).toBeGreaterThanOrEqual(0.9);
      expect(d.iou[k]).toBeGreaterThan(0.88);
    }
  });
});
