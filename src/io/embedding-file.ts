import { EMBEDDING_DIMS } from '../core/constants.js';
import { readFile } from 'node:fs/promises';
import type { Size } from '../core/types.js';
import { inputError } from '../util/errors.js';
import { writeFileAtomic } from '../util/atomic.js';

/**
 * Image embeddings are stored as safetensors: float32 tensors and string metadata.
 * `safetensors.numpy.load_file(path)` reads it, and so does a 10-line numpy reader (8-byte
 * little-endian header length, JSON header, raw data).
 * - SAM (family "sam", the default when the metadata has none): `image_embeddings` [1,256,64,64];
 * - SAM 2 (family "sam2"): `image_embed` [1,256,64,64], `high_res_feats_0` [1,32,256,256] and
 *   `high_res_feats_1` [1,64,128,128], the three outputs of its encoder, under their own names.
 */
export const EMBEDDING_FORMAT = 'sam-embedding/1';

/** Which model family made an embedding (and reads it): SAM 1 / MobileSAM, or SAM 2. */
export type ModelFamily = 'sam' | 'sam2';
export const MODEL_FAMILIES: readonly ModelFamily[] = ['sam', 'sam2'];

/** SAM 2's high-resolution features: [1,32,256,256] and [1,64,128,128]. */
export const SAM2_HIGH_RES_DIMS = [
  [1, 32, 256, 256],
  [1, 64, 128, 128],
] as const;

export interface EmbeddingRecord {
  /** [1, 256, 64, 64] */
  embeddings: Float32Array;
  modelId: string;
  /** Original image size [h, w] (after EXIF orientation). */
  originalSize: Size;
  /** Pre-padding size in the 1024 frame [h', w']. */
  inputSize: Size;
  /** Source image path as given, for people reading the file. */
  image?: string;
  /** Absent: 'sam'. */
  family?: ModelFamily;
  /** SAM 2 only: high_res_feats_0 [1,32,256,256], high_res_feats_1 [1,64,128,128]. */
  highResFeats?: readonly [Float32Array, Float32Array];
}

/** The tensors of a record in file order: [name, dims, data]. */
function tensorsOf(rec: EmbeddingRecord): [string, readonly number[], Float32Array][] {
  if ((rec.family ?? 'sam') === 'sam') return [['image_embeddings', EMBEDDING_DIMS, rec.embeddings]];
  if (!rec.highResFeats) throw new Error('internal: a SAM 2 embedding needs its high-res features');
  return [
    ['image_embed', EMBEDDING_DIMS, rec.embeddings],
    ['high_res_feats_0', SAM2_HIGH_RES_DIMS[0], rec.highResFeats[0]],
    ['high_res_feats_1', SAM2_HIGH_RES_DIMS[1], rec.highResFeats[1]],
  ];
}

export function encodeEmbeddingFile(rec: EmbeddingRecord): Uint8Array {
  if (!isLittleEndian()) throw new Error('big-endian hosts are not supported');
  const tensors = tensorsOf(rec);
  const entries: Record<string, unknown> = {};
  let offset = 0;
  for (const [name, dims, data] of tensors) {
    const n = dims.reduce((a, d) => a * d, 1);
    if (data.length !== n) throw new Error(`internal: ${name} holds ${data.length} values, not [${dims.join(',')}]`);
    entries[name] = { dtype: 'F32', shape: [...dims], data_offsets: [offset, offset + data.byteLength] };
    offset += data.byteLength;
  }
  const header = {
    __metadata__: {
      format: EMBEDDING_FORMAT,
      model_id: rec.modelId,
      original_size: rec.originalSize.join(','),
      input_size: rec.inputSize.join(','),
      ...(rec.family && rec.family !== 'sam' ? { family: rec.family } : {}),
      ...(rec.image !== undefined ? { image: rec.image } : {}),
    },
    ...entries,
  };
  let json = JSON.stringify(header);
  // Pad the header with spaces so the data starts 8-byte aligned (allowed by the format).
  json += ' '.repeat((8 - ((8 + Buffer.byteLength(json)) % 8)) % 8);
  const headerBytes = Buffer.from(json, 'utf8');
  const out = new Uint8Array(8 + headerBytes.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes.length), true);
  out.set(headerBytes, 8);
  let at = 8 + headerBytes.length;
  for (const [, , data] of tensors) {
    out.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), at);
    at += data.byteLength;
  }
  return out;
}

export async function writeEmbeddingFile(path: string, rec: EmbeddingRecord): Promise<void> {
  await writeFileAtomic(path, encodeEmbeddingFile(rec));
}

export async function readEmbeddingFile(path: string): Promise<EmbeddingRecord> {
  let buf: Buffer;
  try {
    buf = await readFile(path);
  } catch {
    throw inputError(`${path}: cannot read the embedding file; check the path or run 'sam embed' first`);
  }
  const bad = (why: string) => inputError(`${path}: not a sam embedding file (${why}); recreate it with 'sam embed'`);
  if (buf.length < 8) throw bad('too short');
  const headerLen = Number(buf.readBigUInt64LE(0));
  if (headerLen <= 0 || 8 + headerLen > buf.length) throw bad('bad header length');
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(buf.subarray(8, 8 + headerLen).toString('utf8')) as Record<string, unknown>;
  } catch {
    throw bad('header is not JSON');
  }
  const meta = header.__metadata__ as Record<string, string> | undefined;
  if (!meta || meta.format !== EMBEDDING_FORMAT) throw bad(`format is not ${EMBEDDING_FORMAT}`);
  const family = (meta.family ?? 'sam') as ModelFamily;
  if (!MODEL_FAMILIES.includes(family)) throw bad(`unknown model family '${meta.family}'`);
  const base = 8 + headerLen;
  const tensor = (name: string, dims: readonly number[]): Float32Array => {
    const t = header[name] as { dtype?: string; shape?: number[]; data_offsets?: [number, number] } | undefined;
    if (!t || t.dtype !== 'F32' || t.shape?.join(',') !== dims.join(',') || !t.data_offsets) throw bad(`no float32 ${name} [${dims.join(',')}]`);
    const n = dims.reduce((a, d) => a * d, 1);
    const [start, end] = t.data_offsets;
    if (end - start !== n * 4 || base + end > buf.length) throw bad('truncated data');
    const data = new Float32Array(n);
    new Uint8Array(data.buffer).set(buf.subarray(base + start, base + end));
    return data;
  };
  const embeddings = tensor(family === 'sam' ? 'image_embeddings' : 'image_embed', EMBEDDING_DIMS);
  const highResFeats = family === 'sam2' ? ([tensor('high_res_feats_0', SAM2_HIGH_RES_DIMS[0]), tensor('high_res_feats_1', SAM2_HIGH_RES_DIMS[1])] as const) : undefined;
  const size = (s: string | undefined): Size => {
    const v = (s ?? '').split(',').map(Number);
    if (v.length !== 2 || !v.every((x) => Number.isInteger(x) && x > 0)) throw bad('bad size metadata');
    return [v[0], v[1]];
  };
  return {
    embeddings,
    modelId: meta.model_id ?? '',
    originalSize: size(meta.original_size),
    inputSize: size(meta.input_size),
    image: meta.image,
    family,
    ...(highResFeats ? { highResFeats } : {}),
  };
}

function isLittleEndian(): boolean {
  return new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
}
