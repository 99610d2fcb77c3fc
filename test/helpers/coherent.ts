/**
 * The coherent-mask vit_t of ../shared/golden/amg-coherent/: rebuilt from
 * golden/convert/vit_t-random.pth by replaying `transform.json` `ops` in order with the arithmetic
 * the file defines (float64, then one Math.fround per value), checked tensor by tensor against the
 * recorded sha256, and written as a .safetensors checkpoint for `sam models convert`.
 *
 * The result is cached in .cache/coherent/ under the sha256 of transform.json (and re-verified
 * on every use), so only the first run pays for the rebuild.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { endianness } from 'node:os';
import path from 'node:path';
import { loadStateDict, type CheckpointTensor, type StateDict } from '../../src/convert/checkpoint.js';
import { sha256File } from '../../src/util/hash.js';
import { REPO_ROOT, tempDir } from './cli.js';
import { convertGoldenPath, goldenPath } from './golden.js';

export const COHERENT_CACHE_DIR = path.join(REPO_ROOT, '.cache', 'coherent');

type Op =
  | { step: string; op: 'tie_taps'; tensor: string }
  | { step: string; op: 'scale'; tensor: string; factor: number }
  | { step: string; op: 'scale_out_channels'; tensor: string; divide_dim1_by: number[] }
  | { step: string; op: 'set'; tensor: string; values: number[] };

interface TensorRecord {
  shape: number[];
  dtype: string;
  changed: boolean;
  sha256: string;
  sum: number;
  sum_abs: number;
}

export interface CoherentTransform {
  source_checkpoint: { file: string; sha256: string };
  ops: Op[];
  changed_tensors: string[];
  tensors: Record<string, TensorRecord>;
}

export const coherentGoldenPath = (name: string): string => goldenPath(path.join('amg-coherent', name));

export function loadTransform(): { transform: CoherentTransform; sha256: string } {
  const file = coherentGoldenPath('transform.json');
  const bytes = readFileSync(file);
  const transform = JSON.parse(bytes.toString('utf8')) as CoherentTransform;
  if (!Array.isArray(transform.ops) || transform.ops.length === 0 || typeof transform.tensors !== 'object') {
    throw new Error(`${file}: no ops/tensors; is this the amg-coherent transform?`);
  }
  return { transform, sha256: createHash('sha256').update(bytes).digest('hex') };
}

const tensorBytes = (t: CheckpointTensor): Buffer => {
  if (endianness() !== 'LE') throw new Error('the coherent checkpoint helper assumes a little-endian machine');
  return Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength);
};

const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

function float32(sd: StateDict, name: string): Float32Array {
  const t = sd.get(name);
  if (!t) throw new Error(`transform.json edits ${name}, which vit_t-random.pth does not hold`);
  if (t.dtype !== 'float32' || !(t.data instanceof Float32Array)) throw new Error(`transform.json edits ${name}, a ${t.dtype} tensor`);
  return t.data;
}

/** Applies one op in place (the tensor must already be a private copy). */
function applyOp(sd: StateDict, op: Op): void {
  const t = sd.get(op.tensor);
  const data = float32(sd, op.tensor);
  const shape = t!.shape;
  switch (op.op) {
    case 'tie_taps': {
      if (shape.length < 2) throw new Error(`tie_taps on ${op.tensor} of shape [${shape}]`);
      const taps = shape[shape.length - 1] * shape[shape.length - 2];
      for (let base = 0; base < data.length; base += taps) {
        let sum = 0;
        for (let i = 0; i < taps; i++) sum += data[base + i];
        const mean = Math.fround(sum / taps);
        data.fill(mean, base, base + taps);
      }
      return;
    }
    case 'scale':
      for (let i = 0; i < data.length; i++) data[i] = Math.fround(data[i] * op.factor);
      return;
    case 'scale_out_channels': {
      // ConvTranspose2d weight [in, out, kh, kw]: divide output channel c (dim 1) by divide_dim1_by[c].
      if (shape.length !== 4 || op.divide_dim1_by.length !== shape[1]) {
        throw new Error(`scale_out_channels on ${op.tensor} [${shape}] with ${op.divide_dim1_by.length} divisors`);
      }
      const [d0, d1, kh, kw] = shape;
      const taps = kh * kw;
      for (let a = 0; a < d0; a++) {
        for (let c = 0; c < d1; c++) {
          const base = (a * d1 + c) * taps;
          const div = op.divide_dim1_by[c];
          for (let i = 0; i < taps; i++) data[base + i] = Math.fround(data[base + i] / div);
        }
      }
      return;
    }
    case 'set':
      if (op.values.length !== data.length) throw new Error(`set on ${op.tensor}: ${op.values.length} values for ${data.length} elements`);
      for (let i = 0; i < data.length; i++) data[i] = Math.fround(op.values[i]);
      return;
    default:
      throw new Error(`transform.json: unknown op ${(op as { op: string }).op} on ${(op as { tensor: string }).tensor}`);
  }
}

/**
 * Every tensor of `sd` against transform.json's `tensors` (names, shape, dtype, sha256 of the
 * little-endian C-order bytes). Throws listing each mismatch, with sum / sum_abs for a hint.
 */
export function verifyAgainstTransform(sd: StateDict, transform: CoherentTransform, what: string): void {
  const problems: string[] = [];
  const expected = Object.keys(transform.tensors);
  for (const name of expected) if (!sd.has(name)) problems.push(`${name}: missing`);
  for (const name of sd.keys()) if (!Object.hasOwn(transform.tensors, name)) problems.push(`${name}: not in transform.json tensors`);
  for (const [name, rec] of Object.entries(transform.tensors)) {
    const t = sd.get(name);
    if (!t) continue;
    if (t.dtype !== rec.dtype || t.shape.join(',') !== rec.shape.join(',')) {
      problems.push(`${name}: ${t.dtype} [${t.shape}] but expected ${rec.dtype} [${rec.shape}]`);
      continue;
    }
    const got = sha256(tensorBytes(t));
    if (got !== rec.sha256) {
      let sum = 0;
      let sumAbs = 0;
      for (const v of t.data) {
        sum += Number(v);
        sumAbs += Math.abs(Number(v));
      }
      problems.push(`${name}: sha256 ${got} != ${rec.sha256} (sum ${sum} vs ${rec.sum}, sum_abs ${sumAbs} vs ${rec.sum_abs})`);
    }
  }
  if (problems.length > 0) {
    throw new Error(`${what}: ${problems.length} tensor(s) differ from amg-coherent/transform.json:\n  ${problems.slice(0, 20).join('\n  ')}`);
  }
}

/** Replays transform.json on vit_t-random.pth (state dict in, new state dict out; untouched tensors shared). */
export async function rebuildCoherentStateDict(transform: CoherentTransform): Promise<StateDict> {
  const source = convertGoldenPath(path.basename(transform.source_checkpoint.file));
  const sourceSha = await sha256File(source);
  if (sourceSha !== transform.source_checkpoint.sha256) {
    throw new Error(`${source}: sha256 ${sourceSha}, but transform.json was made from ${transform.source_checkpoint.sha256}`);
  }
  const sd = await loadStateDict(source);
  const copied = new Set<string>();
  for (const op of transform.ops) {
    if (!copied.has(op.tensor)) {
      const t = sd.get(op.tensor);
      if (!t) throw new Error(`transform.json edits ${op.tensor}, which ${source} does not hold`);
      // The reader may hand out views into a shared storage: edit a private copy.
      sd.set(op.tensor, { dtype: t.dtype, shape: [...t.shape], data: float32(sd, op.tensor).slice() });
      copied.add(op.tensor);
    }
    applyOp(sd, op);
  }
  const changed = [...copied].sort();
  const listed = [...transform.changed_tensors].sort();
  if (changed.join('\n') !== listed.join('\n')) {
    throw new Error(`transform.json ops edit ${changed.length} tensors, but changed_tensors lists ${listed.length}`);
  }
  verifyAgainstTransform(sd, transform, 'rebuilt coherent checkpoint');
  return sd;
}

const SAFETENSORS_CODE: Record<string, string> = { float32: 'F32', int64: 'I64', int32: 'I32', uint8: 'U8', bool: 'BOOL' };

/** A .safetensors file of the state dict, tensors in its order, data 8-byte aligned. */
export function encodeSafetensors(sd: StateDict, metadata: Record<string, string> = {}): Buffer {
  const header: Record<string, unknown> = { __metadata__: metadata };
  const chunks: Buffer[] = [];
  let offset = 0;
  for (const [name, t] of sd) {
    const code = SAFETENSORS_CODE[t.dtype];
    if (!code) throw new Error(`${name}: no safetensors code for dtype ${t.dtype}`);
    const bytes = tensorBytes(t);
    header[name] = { dtype: code, shape: t.shape, data_offsets: [offset, offset + bytes.length] };
    chunks.push(bytes);
    offset += bytes.length;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - ((8 + Buffer.byteLength(json)) % 8)) % 8);
  const head = Buffer.alloc(8);
  head.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  return Buffer.concat([head, Buffer.from(json, 'utf8'), ...chunks]);
}

/**
 * Path of the coherent checkpoint (.safetensors), rebuilt and verified when not cached. A cached
 * file is loaded with the project's reader and verified again, so a stale or damaged one fails.
 */
export async function coherentCheckpoint(): Promise<{ file: string; rebuilt: boolean; transformSha256: string }> {
  const { transform, sha256: transformSha256 } = loadTransform();
  const file = path.join(COHERENT_CACHE_DIR, `vit_t-coherent-${transformSha256.slice(0, 16)}.safetensors`);
  if (existsSync(file)) {
    verifyAgainstTransform(await loadStateDict(file), transform, file);
    return { file, rebuilt: false, transformSha256 };
  }
  const sd = await rebuildCoherentStateDict(transform);
  const tmp = tempDir('sam-coherent-');
  try {
    const staged = path.join(tmp.dir, path.basename(file));
    writeFileSync(staged, encodeSafetensors(sd, { source: 'vit_t-random.pth + amg-coherent/transform.json', transform_sha256: transformSha256 }));
    // What the converter will read must be what was verified.
    verifyAgainstTransform(await loadStateDict(staged), transform, staged);
    mkdirSync(COHERENT_CACHE_DIR, { recursive: true });
    // Copy next to the target, then rename: never a half-written file under the cached name.
    const sibling = `${file}.${process.pid}.tmp`;
    writeFileSync(sibling, readFileSync(staged));
    try {
      renameSync(sibling, file);
    } catch (err) {
      rmSync(sibling, { force: true });
      throw err;
    }
  } finally {
    tmp.cleanup();
  }
  return { file, rebuilt: true, transformSha256 };
}
