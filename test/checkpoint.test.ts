import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { deflateRawSync } from 'node:zlib';
import { afterAll, describe, expect, it } from 'vitest';
import { loadStateDict, type CheckpointTensor, type StateDict } from '../src/convert/checkpoint.js';
import { SamError } from '../src/util/errors.js';

const GOLDEN = join(import.meta.dirname, '..', '..', 'shared', 'golden', 'convert');
const VIT_T = join(GOLDEN, 'vit_t-random.pth');
const VIT_SMALL = join(GOLDEN, 'vit-small-random.image_encoder.pth');

const dir = mkdtempSync(join(tmpdir(), 'sam-ckpt-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let fileCount = 0;
function tempFile(bytes: Uint8Array, name = `f${fileCount++}.pth`): string {
  const p = join(dir, name);
  writeFileSync(p, bytes);
  return p;
}

// ---------------------------------------------------------------------------------------------
// Writers for hand-made checkpoints

const enc = new TextEncoder();

/** Emits pickle opcodes; `modern` switches to the protocol-4 encodings (STACK_GLOBAL, SHORT_BINUNICODE, MEMOIZE, FRAME). */
class PickleWriter {
  private readonly out: number[] = [];
  constructor(readonly modern = false) {
    this.op(0x80, modern ? 4 : 2);
  }
  op(...bytes: number[]): this {
    this.out.push(...bytes);
    return this;
  }
  private u32(n: number): number[] {
    return [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff];
  }
  str(s: string): this {
    const b = [...enc.encode(s)];
    if (this.modern && b.length < 256) this.op(0x8c, b.length, ...b, 0x94); // SHORT_BINUNICODE, MEMOIZE
    else this.op(0x58, ...this.u32(b.length), ...b); // BINUNICODE
    return this;
  }
  int(n: number): this {
    if (n >= 0 && n < 256) return this.op(0x4b, n);
    if (n >= 0 && n < 65536) return this.op(0x4d, n & 0xff, n >> 8);
    return this.op(0x4a, ...this.u32(n));
  }
  global(module: string, name: string): this {
    if (this.modern) return this.str(module).str(name).op(0x93);
    return this.op(0x63, ...enc.encode(`${module}\n${name}\n`));
  }
  mark(): this { return this.op(0x28); }
  tuple(): this { return this.op(0x74); }
  ints(values: number[]): this {
    this.mark();
    for (const v of values) this.int(v);
    return this.tuple();
  }
  /** An OrderedDict() call, as torch emits for backward_hooks. */
  orderedDict(): this { return this.global('collections', 'OrderedDict').op(0x29, 0x52); }
  /** _rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict()) over ('storage', <type>, key, 'cpu', numel). */
  tensor(storageType: string, key: string, numel: number, offset: number, size: number[], stride: number[]): this {
    this.global('torch._utils', '_rebuild_tensor_v2').mark();
    this.mark().str('storage').global('torch', storageType).str(key).str('cpu').int(numel).tuple().op(0x51);
    this.int(offset).ints(size).ints(stride).op(0x89).orderedDict();
    return this.tuple().op(0x52);
  }
  bytes(): Uint8Array {
    const body = [...this.out, 0x2e];
    if (!this.modern) return Uint8Array.from(body);
    // A single FRAME after PROTO: [0x80, 4] FRAME <u64 length> rest.
    const rest = body.slice(2);
    return Uint8Array.from([0x80, 4, 0x95, ...this.u32(rest.length), 0, 0, 0, 0, ...rest]);
  }
}

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();
function crc32(b: Uint8Array): number {
  let c = 0xffffffff;
  for (const x of b) c = CRC_TABLE[(c ^ x) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

class Bytes {
  private readonly parts: number[] = [];
  get length(): number { return this.parts.length; }
  u16(n: number): this { this.parts.push(n & 0xff, (n >>> 8) & 0xff); return this; }
  u32(n: number): this { this.parts.push(n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff); return this; }
  u64(n: number): this { return this.u32(n % 2 ** 32).u32(Math.floor(n / 2 ** 32)); }
  raw(b: ArrayLike<number>): this { for (let i = 0; i < b.length; i++) this.parts.push(b[i]); return this; }
  bytes(): Uint8Array { return Uint8Array.from(this.parts); }
}

interface ZipOptions { deflate?: boolean; zip64?: boolean }

/** A zip as torch.save writes it (stored entries, padded local extra fields), optionally deflated or with ZIP64 records. */
function makeZip(entries: [string, Uint8Array][], opts: ZipOptions = {}): Uint8Array {
  const out = new Bytes();
  const central = new Bytes();
  for (const [name, data] of entries) {
    const nameBytes = enc.encode(name);
    const packed = opts.deflate ? deflateRawSync(data) : data;
    const offset = out.length;
    const crc = crc32(data);
    const big = opts.zip64 ? 0xffffffff : undefined;
    // torch pads the local extra field so storages start 64-byte aligned; any padding must be skipped.
    const local64 = opts.zip64 ? new Bytes().u16(1).u16(16).u64(data.length).u64(packed.length).bytes() : new Uint8Array(0);
    const pad = new Uint8Array(13);
    out.u32(0x04034b50).u16(45).u16(0).u16(opts.deflate ? 8 : 0).u16(0).u16(0).u32(crc)
      .u32(big ?? packed.length).u32(big ?? data.length).u16(nameBytes.length).u16(local64.length + 4 + pad.length)
      .raw(nameBytes).raw(local64).u16(0x4246).u16(pad.length).raw(pad).raw(packed);
    const central64 = opts.zip64 ? new Bytes().u16(1).u16(24).u64(data.length).u64(packed.length).u64(offset).bytes() : new Uint8Array(0);
    central.u32(0x02014b50).u16(45).u16(45).u16(0).u16(opts.deflate ? 8 : 0).u16(0).u16(0).u32(crc)
      .u32(big ?? packed.length).u32(big ?? data.length).u16(nameBytes.length).u16(central64.length).u16(0)
      .u16(0).u16(0).u32(0).u32(big ?? offset).raw(nameBytes).raw(central64);
  }
  const cdOffset = out.length;
  const cd = central.bytes();
  out.raw(cd);
  if (opts.zip64) {
    const eocd64 = out.length;
    out.u32(0x06064b50).u64(44).u16(45).u16(45).u32(0).u32(0).u64(entries.length).u64(entries.length).u64(cd.length).u64(cdOffset);
    out.u32(0x07064b50).u32(0).u64(eocd64).u32(1);
    out.u32(0x06054b50).u16(0).u16(0).u16(0xffff).u16(0xffff).u32(0xffffffff).u32(0xffffffff).u16(0);
  } else {
    out.u32(0x06054b50).u16(0).u16(0).u16(entries.length).u16(entries.length).u32(cd.length).u32(cdOffset).u16(0);
  }
  return out.bytes();
}

function le(arr: Float32Array | Float64Array | Uint16Array | Int32Array | BigInt64Array | Uint8Array): Uint8Array {
  return new Uint8Array(arr.buffer, arr.byteOffset, arr.byteLength);
}

function torchZip(pkl: Uint8Array, storages: Record<string, Uint8Array>, opts: ZipOptions & { byteorder?: string } = {}): Uint8Array {
  const entries: [string, Uint8Array][] = [['archive/data.pkl', pkl]];
  if (opts.byteorder) entries.push(['archive/byteorder', enc.encode(opts.byteorder)]);
  for (const [k, v] of Object.entries(storages)) entries.push([`archive/data/${k}`, v]);
  entries.push(['archive/version', enc.encode('3\n')]);
  return makeZip(entries, opts);
}

function float16Bits(values: number[]): Uint16Array {
  // Exactly representable test values only: sign, exponent and 10-bit mantissa by hand.
  return Uint16Array.from(values, (v) => {
    if (v === 0) return Object.is(v, -0) ? 0x8000 : 0;
    const sign = v < 0 ? 0x8000 : 0;
    const a = Math.abs(v);
    const e = Math.floor(Math.log2(a));
    if (e < -14) return sign | Math.round(a / 2 ** -24);
    return sign | ((e + 15) << 10) | Math.round((a / 2 ** e - 1) * 1024);
  });
}

/** Storages and expected values of the hand-made state dict. */
const HALF = [1, -2, 0.5, 65504, 2 ** -24, -0.333251953125];
const MATRIX = Float32Array.from({ length: 13 }, (_, i) => i * 1.5 - 3); // a 3x4 matrix starts at element 1
const BF16_VALUES = [1, -3.5, 0.15625];
const DOUBLES = [0.1, -1e10, 3];

function stateDictStorages(): Record<string, Uint8Array> {
  return {
    '0': le(float16Bits(HALF)),
    '1': le(MATRIX),
    '2': le(BigInt64Array.from([-7n])),
    '3': le(Uint16Array.from(BF16_VALUES, (v) => new Uint32Array(Float32Array.of(v).buffer)[0] >>> 16)),
    '4': le(Float64Array.from(DOUBLES)),
    '5': le(Int32Array.from([5, -6, 7])),
    '6': Uint8Array.from([1, 0, 1]),
  };
}

/** Writes the items of the hand-made state dict (between a MARK and SETITEMS). */
function stateDictItems(p: PickleWriter): PickleWriter {
  p.str('half').tensor('HalfStorage', '0', 6, 0, [2, 3], [3, 1]);
  // The transpose of the 3x4 matrix at storage offset 1: shape [4,3], stride [1,4].
  p.str('transposed').tensor('FloatStorage', '1', 13, 1, [4, 3], [1, 4]);
  // Row 1 of the same matrix: contiguous, shares the storage.
  p.str('row').tensor('FloatStorage', '1', 13, 5, [4], [1]);
  p.str('scalar').tensor('LongStorage', '2', 1, 0, [], []);
  p.str('bf16').tensor('BFloat16Storage', '3', 3, 0, [3], [1]);
  p.str('double').tensor('DoubleStorage', '4', 3, 0, [1, 3], [3, 1]);
  p.str('int').tensor('IntStorage', '5', 3, 0, [3], [1]);
  p.str('mask').tensor('BoolStorage', '6', 3, 0, [3], [1]);
  // An nn.Parameter: _rebuild_parameter(tensor, requires_grad, OrderedDict()).
  p.str('param').global('torch._utils', '_rebuild_parameter').mark();
  p.tensor('FloatStorage', '1', 13, 0, [2, 2], [1, 2]).op(0x88).orderedDict().tuple().op(0x52);
  p.str('note').str('not a tensor');
  p.str('count').int(3);
  return p;
}

/** OrderedDict() SETITEMS ... BUILD {'_metadata': ...}, as module.state_dict() pickles. */
function stateDictPickle(modern = false): Uint8Array {
  const p = new PickleWriter(modern).orderedDict().mark();
  stateDictItems(p).op(0x75);
  p.op(0x7d).str('_metadata').orderedDict().mark().str('').op(0x7d).str('version').int(1).op(0x73).op(0x75).op(0x73).op(0x62);
  return p.bytes();
}

function expectHandMade(sd: StateDict): void {
  expect([...sd.keys()]).toEqual(['half', 'transposed', 'row', 'scalar', 'bf16', 'double', 'int', 'mask', 'param']);
  const get = (k: string): CheckpointTensor => sd.get(k) as CheckpointTensor;
  expect(get('half')).toMatchObject({ dtype: 'float16', shape: [2, 3] });
  expect(get('half').data).toBeInstanceOf(Float32Array);
  expect([...get('half').data]).toEqual(HALF);
  const m = (r: number, c: number) => MATRIX[1 + r * 4 + c];
  expect(get('transposed')).toMatchObject({ dtype: 'float32', shape: [4, 3] });
  expect([...get('transposed').data]).toEqual([0, 1, 2, 3].flatMap((c) => [0, 1, 2].map((r) => m(r, c))));
  expect([...get('row').data]).toEqual([0, 1, 2, 3].map((c) => m(1, c)));
  expect(get('scalar')).toMatchObject({ dtype: 'int64', shape: [] });
  expect(get('scalar').data).toEqual(BigInt64Array.of(-7n));
  expect([...get('bf16').data]).toEqual(BF16_VALUES);
  expect(get('double')).toMatchObject({ dtype: 'float64', shape: [1, 3] });
  expect([...get('double').data]).toEqual(DOUBLES.map(Math.fround));
  expect(get('int').data).toEqual(Int32Array.of(5, -6, 7));
  expect(get('mask')).toMatchObject({ dtype: 'bool', shape: [3] });
  expect(get('mask').data).toEqual(Uint8Array.of(1, 0, 1));
  expect(get('param').shape).toEqual([2, 2]);
  expect([...get('param').data]).toEqual([MATRIX[0], MATRIX[2], MATRIX[1], MATRIX[3]]);
}

async function loadError(path: string): Promise<SamError> {
  try {
    await loadStateDict(path);
  } catch (err) {
    expect(err).toBeInstanceOf(SamError);
    const e = err as SamError;
    expect(e.kind).toBe('input');
    expect(e.message).not.toContain('\n');
    expect(e.message.startsWith(path)).toBe(true);
    return e;
  }
  throw new Error(`${path} loaded without an error`);
}

// ---------------------------------------------------------------------------------------------

function allFinite(t: CheckpointTensor): boolean {
  if (!(t.data instanceof Float32Array)) return true;
  for (const v of t.data) if (!Number.isFinite(v)) return false;
  return true;
}

const numel = (shape: number[]) => shape.reduce((a, b) => a * b, 1);

describe('golden checkpoints written by torch.save', () => {
  it('reads the small ViT image encoder: keys, shapes and values', async () => {
    const sd = await loadStateDict(VIT_SMALL);
    expect(sd.size).toBe(37);
    for (const k of sd.keys()) expect(k.startsWith('image_encoder.')).toBe(true);
    // embed_dim 96, depth 2, 3 heads (head_dim 32), window 14 (block 0) and global (block 1) at 64x64 tokens, neck 256.
    const shapes: Record<string, number[]> = {
      'image_encoder.pos_embed': [1, 64, 64, 96],
      'image_encoder.patch_embed.proj.weight': [96, 3, 16, 16],
      'image_encoder.patch_embed.proj.bias': [96],
      'image_encoder.blocks.0.attn.rel_pos_h': [27, 32],
      'image_encoder.blocks.0.attn.rel_pos_w': [27, 32],
      'image_encoder.blocks.1.attn.rel_pos_h': [127, 32],
      'image_encoder.blocks.0.attn.qkv.weight': [288, 96],
      'image_encoder.blocks.1.mlp.lin1.weight': [384, 96],
      'image_encoder.neck.0.weight': [256, 96, 1, 1],
      'image_encoder.neck.2.weight': [256, 256, 3, 3],
      'image_encoder.neck.3.bias': [256],
    };
    for (const [k, shape] of Object.entries(shapes)) expect(sd.get(k)?.shape, k).toEqual(shape);
    for (const [k, t] of sd) {
      expect(t.dtype, k).toBe('float32');
      expect(t.data.length, k).toBe(numel(t.shape));
      expect(allFinite(t), k).toBe(true);
    }
    // Values read from the file's raw storages independently (Python stdlib + numpy, no torch).
    const first = (k: string) => [...(sd.get(k)?.data as Float32Array).subarray(0, 3)];
    expect(first('image_encoder.patch_embed.proj.weight')).toEqual([-0.011648555286228657, -0.020130544900894165, -0.02090512402355671]);
    expect(first('image_encoder.blocks.1.attn.rel_pos_h')).toEqual([0.04714339226484299, -0.003963826224207878, -0.010157222859561443]);
    const sum = (k: string) => (sd.get(k)?.data as Float32Array).reduce((a, b) => a + b, 0);
    expect(sum('image_encoder.neck.2.weight')).toBeCloseTo(-24.364444424267276, 3);
    expect(sum('image_encoder.blocks.0.norm1.weight')).toBeCloseTo(96.08825409412384, 4);
  });

  it('reads the MobileSAM vit_t state dict', async () => {
    const t0 = performance.now();
    const sd = await loadStateDict(VIT_T);
    const ms = performance.now() - t0;
    expect(sd.size).toBe(439);
    const count = (prefix: string) => [...sd.keys()].filter((k) => k.startsWith(prefix)).length;
    expect(count('image_encoder.') + count('prompt_encoder.') + count('mask_decoder.')).toBe(439);
    expect(sd.get('image_encoder.patch_embed.seq.0.c.weight')?.shape).toEqual([32, 3, 3, 3]);
    expect(sd.get('mask_decoder.iou_prediction_head.layers.0.weight')?.shape).toEqual([256, 256]);
    expect(sd.get('prompt_encoder.pe_layer.positional_encoding_gaussian_matrix')?.shape).toEqual([2, 128]);
    const gauss = sd.get('prompt_encoder.pe_layer.positional_encoding_gaussian_matrix')?.data as Float32Array;
    expect([...gauss.subarray(0, 3)]).toEqual([-1.2596946954727173, 0.4659241735935211, -0.34649044275283813]);
    expect(gauss.reduce((a, b) => a + b, 0)).toBeCloseTo(-11.385018861386925, 3);
    const tracked = sd.get('image_encoder.patch_embed.seq.0.bn.num_batches_tracked');
    expect(tracked).toMatchObject({ dtype: 'int64', shape: [] });
    expect(tracked?.data).toEqual(BigInt64Array.of(0n));
    for (const [k, t] of sd) {
      expect(t.data.length, k).toBe(numel(t.shape));
      expect(allFinite(t), k).toBe(true);
      if (t.dtype === 'float32') {
        // Random init: plausible magnitudes only.
        for (const v of t.data as Float32Array) if (Math.abs(v) > 100) throw new Error(`${k}: implausible value ${v}`);
      }
    }
    console.log(`vit_t-random.pth: ${sd.size} tensors in ${ms.toFixed(0)} ms`);
  });
});

describe('hand-made zip checkpoints', () => {
  it('float16, bfloat16, float64, int, bool storages; strided views, offsets, scalars, parameters', async () => {
    expectHandMade(await loadStateDict(tempFile(torchZip(stateDictPickle(), stateDictStorages()))));
  });

  it('shares one storage between contiguous views', async () => {
    const sd = await loadStateDict(tempFile(torchZip(stateDictPickle(), stateDictStorages())));
    const row = sd.get('row')?.data as Float32Array;
    expect(row.buffer.byteLength).toBe(MATRIX.byteLength);
    expect(row.byteOffset).toBe(5 * 4);
    expect(sd.get('transposed')?.data.buffer).not.toBe(row.buffer);
  });

  it('protocol-4 opcodes (FRAME, STACK_GLOBAL, SHORT_BINUNICODE, MEMOIZE)', async () => {
    expectHandMade(await loadStateDict(tempFile(torchZip(stateDictPickle(true), stateDictStorages()))));
  });

  it('deflated entries and ZIP64 records', async () => {
    expectHandMade(await loadStateDict(tempFile(torchZip(stateDictPickle(), stateDictStorages(), { deflate: true, zip64: true }))));
    expectHandMade(await loadStateDict(tempFile(torchZip(stateDictPickle(), stateDictStorages(), { zip64: true }))));
  });

  it('big-endian checkpoints are byte-swapped', async () => {
    const storages = stateDictStorages();
    const swapped: Record<string, Uint8Array> = {};
    const sizes: Record<string, number> = { '0': 2, '1': 4, '2': 8, '3': 2, '4': 8, '5': 4, '6': 1 };
    for (const [k, b] of Object.entries(storages)) {
      const s = new Uint8Array(b.length);
      for (let i = 0; i < b.length; i++) s[i] = b[i - (i % sizes[k]) + sizes[k] - 1 - (i % sizes[k])];
      swapped[k] = s;
    }
    expectHandMade(await loadStateDict(tempFile(torchZip(stateDictPickle(), swapped, { byteorder: 'big' }))));
    expectHandMade(await loadStateDict(tempFile(torchZip(stateDictPickle(), storages, { byteorder: 'little' }))));
  });

  it("unwraps {'model': state_dict} and {'state_dict': ...} training checkpoints", async () => {
    for (const key of ['model', 'state_dict']) {
      const p = new PickleWriter().op(0x7d).mark().str('epoch').int(12).str('lr').op(0x47, 0x3f, 0x50, 0x62, 0x4d, 0xd2, 0xf1, 0xa9, 0xfc);
      p.str(key).orderedDict().mark();
      stateDictItems(p).op(0x75).op(0x75);
      expectHandMade(await loadStateDict(tempFile(torchZip(p.bytes(), stateDictStorages()))));
    }
  });

  it('_rebuild_tensor_v3 over an UntypedStorage with a dtype global', async () => {
    const p = new PickleWriter().op(0x7d).str('w').global('torch._utils', '_rebuild_tensor_v3').mark();
    p.mark().str('storage').global('torch.storage', 'UntypedStorage').str('0').str('cpu').int(12).tuple().op(0x51);
    p.int(1).ints([2]).ints([1]).op(0x89).orderedDict().global('torch', 'float32').tuple().op(0x52).op(0x73);
    const sd = await loadStateDict(tempFile(torchZip(p.bytes(), { '0': le(Float32Array.of(1, 2, 3)) })));
    expect(sd.get('w')).toMatchObject({ dtype: 'float32', shape: [2] });
    expect([...(sd.get('w')?.data as Float32Array)]).toEqual([2, 3]);
  });
});

describe('refusals and errors', () => {
  it('refuses a pickle that references os.system, without running anything', async () => {
    const p = new PickleWriter().global('os', 'system').mark().str('touch /tmp/pwned-by-sam').tuple().op(0x52);
    const file = tempFile(torchZip(p.bytes(), {}));
    const e = await loadError(file);
    expect(e.message).toBe(
      `${file}: checkpoint contains a pickled object of type os.system, which sam refuses to load ` +
        '(only plain state_dicts are supported); re-save it with torch.save(model.state_dict(), path)',
    );
  });

  it('refuses builtins and module objects (torch.save(model))', async () => {
    const set = new PickleWriter().global('builtins', 'set').op(0x29, 0x52);
    expect((await loadError(tempFile(torchZip(set.bytes(), {})))).message).toContain('type builtins.set, which sam refuses');
    const mod = new PickleWriter().global('segment_anything.modeling.sam', 'Sam').op(0x29, 0x81);
    expect((await loadError(tempFile(torchZip(mod.bytes(), {})))).message).toContain('type segment_anything.modeling.sam.Sam,');
  });

  it('a dict without tensors', async () => {
    const p = new PickleWriter().op(0x7d).str('epoch').int(3).op(0x73);
    expect((await loadError(tempFile(torchZip(p.bytes(), {})))).message).toMatch(/no tensors .* re-save it with torch\.save\(model\.state_dict\(\), path\)/);
  });

  it('missing file, not a checkpoint, empty file, TorchScript archive', async () => {
    expect((await loadError(join(dir, 'nope.pth'))).message).toMatch(/no such file; check the checkpoint path/);
    expect((await loadError(tempFile(enc.encode('hello, this is not a checkpoint at all\n')))).message).toMatch(/not a PyTorch checkpoint .* or a \.safetensors file/);
    expect((await loadError(tempFile(new Uint8Array(0)))).message).toMatch(/empty/);
    const ts = makeZip([['m/data.pkl', new PickleWriter().op(0x7d).bytes()], ['m/constants.pkl', new PickleWriter().op(0x29).bytes()]]);
    expect((await loadError(tempFile(ts))).message).toMatch(/TorchScript/);
  });

  it('truncated files', async () => {
    const whole = readFileSync(VIT_SMALL);
    // Cut anywhere: the zip loses its central directory.
    expect((await loadError(tempFile(whole.subarray(0, whole.length >> 1)))).message).toMatch(/truncated or damaged.*download the checkpoint again/);
    // Storages cut off while the directory survives: a zip whose data entry claims more bytes than exist.
    const zip = torchZip(stateDictPickle(), stateDictStorages());
    const pkl = stateDictPickle();
    expect((await loadError(tempFile(zip.subarray(0, 200)))).message).toMatch(/truncated/);
    // A data.pkl that ends early.
    const short = torchZip(pkl.subarray(0, pkl.length - 40), stateDictStorages());
    expect((await loadError(tempFile(short))).message).toMatch(/truncated \(its pickle ends early\)/);
  });
});

describe('legacy (torch < 1.6) checkpoints', () => {
  function legacy(cut = 0): Uint8Array {
    const magic = Uint8Array.from([0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e]);
    const protocol = new PickleWriter().int(1001).bytes();
    const sysInfo = new PickleWriter().op(0x7d).mark().str('protocol_version').int(1001).str('little_endian').op(0x88)
      .str('type_sizes').op(0x7d).mark().str('short').int(2).str('int').int(4).str('long').int(8).op(0x75).op(0x75).bytes();
    // Persistent ids carry a sixth element, the view metadata (None, or a (key, offset, size) view).
    const p = new PickleWriter().orderedDict().mark();
    const tensor = (type: string, key: string, n: number, view: [string, number, number] | null, offset: number, size: number[], stride: number[]) => {
      p.global('torch._utils', '_rebuild_tensor_v2').mark();
      p.mark().str('storage').global('torch', type).str(key).str('cuda:0').int(n);
      if (view) p.mark().str(view[0]).int(view[1]).int(view[2]).tuple();
      else p.op(0x4e);
      p.tuple().op(0x51).int(offset).ints(size).ints(stride).op(0x89).orderedDict().tuple().op(0x52);
    };
    p.str('a');
    tensor('FloatStorage', '140', 6, null, 0, [2, 3], [3, 1]);
    p.str('b');
    tensor('HalfStorage', '77', 3, null, 0, [3], [1]);
    p.str('c');
    tensor('FloatStorage', '140', 6, ['141', 2, 4], 1, [2], [2]);
    p.op(0x75);
    const keys = new PickleWriter().mark().str('140').str('77').op(0x6c).bytes();
    const storage = (arr: Float32Array | Uint16Array) => new Bytes().u64(arr.length).raw(le(arr)).bytes();
    const all = new Bytes().raw(magic).raw(protocol).raw(sysInfo).raw(p.bytes()).raw(keys)
      .raw(storage(Float32Array.of(1, 2, 3, 4, 5, 6))).raw(storage(float16Bits([0.5, -1, 2]))).bytes();
    return all.subarray(0, all.length - cut);
  }

  it('reads tensors, views of storages and float16', async () => {
    const sd = await loadStateDict(tempFile(legacy()));
    expect([...sd.keys()]).toEqual(['a', 'b', 'c']);
    expect(sd.get('a')?.shape).toEqual([2, 3]);
    expect([...(sd.get('a')?.data as Float32Array)]).toEqual([1, 2, 3, 4, 5, 6]);
    expect([...(sd.get('b')?.data as Float32Array)]).toEqual([0.5, -1, 2]);
    // View starting at element 2 of the root storage, then tensor offset 1 with stride 2: elements 3 and 5.
    expect([...(sd.get('c')?.data as Float32Array)]).toEqual([4, 6]);
  });

  it('reports a truncated legacy file', async () => {
    expect((await loadError(tempFile(legacy(3)))).message).toMatch(/truncated/);
  });
});

describe('safetensors', () => {
  function safetensors(tensors: Record<string, { dtype: string; shape: number[]; bytes: Uint8Array }>): Uint8Array {
    const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
    let offset = 0;
    for (const [k, t] of Object.entries(tensors)) {
      header[k] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.bytes.length] };
      offset += t.bytes.length;
    }
    let json = JSON.stringify(header);
    json += ' '.repeat((8 - (json.length % 8)) % 8);
    const out = new Bytes().u64(json.length).raw(enc.encode(json));
    for (const t of Object.values(tensors)) out.raw(t.bytes);
    return out.bytes();
  }

  const tensors = {
    'image_encoder.w': { dtype: 'F32', shape: [2, 2], bytes: le(Float32Array.of(1.5, -2, 3.25, 0)) },
    'image_encoder.h': { dtype: 'F16', shape: [3], bytes: le(float16Bits([0.25, -8, 1024])) },
    'mask_decoder.n': { dtype: 'I64', shape: [], bytes: le(BigInt64Array.of(42n)) },
    'mask_decoder.b': { dtype: 'BF16', shape: [2], bytes: le(Uint16Array.of(0x3f80, 0xc000)) },
    empty: { dtype: 'F32', shape: [0, 4], bytes: new Uint8Array(0) },
  };

  it('round trip', async () => {
    const sd = await loadStateDict(tempFile(safetensors(tensors), 'model.safetensors'));
    expect([...sd.keys()]).toEqual(Object.keys(tensors));
    expect(sd.get('image_encoder.w')).toMatchObject({ dtype: 'float32', shape: [2, 2] });
    expect([...(sd.get('image_encoder.w')?.data as Float32Array)]).toEqual([1.5, -2, 3.25, 0]);
    expect(sd.get('image_encoder.h')?.dtype).toBe('float16');
    expect([...(sd.get('image_encoder.h')?.data as Float32Array)]).toEqual([0.25, -8, 1024]);
    expect(sd.get('mask_decoder.n')).toMatchObject({ dtype: 'int64', shape: [], data: BigInt64Array.of(42n) });
    expect([...(sd.get('mask_decoder.b')?.data as Float32Array)]).toEqual([1, -2]);
    expect(sd.get('empty')?.data.length).toBe(0);
  });

  it('truncated and malformed', async () => {
    const whole = safetensors(tensors);
    expect((await loadError(tempFile(whole.subarray(0, whole.length - 4)))).message).toMatch(/truncated \(tensor .* ends at byte/);
    expect((await loadError(tempFile(whole.subarray(0, 40)))).message).toMatch(/truncated \(its safetensors header ends/);
    const wrong = safetensors({ x: { dtype: 'F32', shape: [3], bytes: new Uint8Array(8) } });
    expect((await loadError(tempFile(wrong))).message).toMatch(/entry x has 8 bytes for a float32 tensor of shape \[3\]/);
  });
});
