import { EMBEDDING_DIMS, EMBEDDING_LENGTH } from '../core/constants.js';
import { readFile } from 'node:fs/promises';
import type { Size } from '../core/types.js';
import { inputError } from '../util/errors.js';
import { writeFileAtomic } from '../util/atomic.js';

/**
 * Image embeddings are stored as safetensors: one float32 tensor `image_embeddings`
 * [1,256,64,64] and string metadata. `safetensors.numpy.load_file(path)` reads it, and so does a
 * 10-line numpy reader (8-byte little-endian header length, JSON header, raw data).
 */
export const EMBEDDING_FORMAT = 'sam-embedding/1';
const EMBEDDING_LEN = EMBEDDING_LENGTH;

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
}

export function encodeEmbeddingFile(rec: EmbeddingRecord): Uint8Array {
  const bytes = rec.embeddings.byteLength;
  const header = {
    __metadata__: {
      format: EMBEDDING_FORMAT,
      model_id: rec.modelId,
      original_size: rec.originalSize.join(','),
      input_size: rec.inputSize.join(','),
      ...(rec.image !== undefined ? { image: rec.image } : {}),
    },
    image_embeddings: { dtype: 'F32', shape: [...EMBEDDING_DIMS], data_offsets: [0, bytes] },
  };
  let json = JSON.stringify(header);
  // Pad the header with spaces so the data starts 8-byte aligned (allowed by the format).
  json += ' '.repeat((8 - ((8 + Buffer.byteLength(json)) % 8)) % 8);
  const headerBytes = Buffer.from(json, 'utf8');
  const out = new Uint8Array(8 + headerBytes.length + bytes);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes.length), true);
  out.set(headerBytes, 8);
  const data = new Uint8Array(rec.embeddings.buffer, rec.embeddings.byteOffset, bytes);
  if (isLittleEndian()) out.set(data, 8 + headerBytes.length);
  else throw new Error('big-endian hosts are not supported');
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
  const t = header.image_embeddings as { dtype?: string; shape?: number[]; data_offsets?: [number, number] } | undefined;
  if (!meta || meta.format !== EMBEDDING_FORMAT) throw bad(`format is not ${EMBEDDING_FORMAT}`);
  if (!t || t.dtype !== 'F32' || t.shape?.join(',') !== '1,256,64,64' || !t.data_offsets) throw bad('no float32 image_embeddings [1,256,64,64]');
  const [start, end] = t.data_offsets;
  const base = 8 + headerLen;
  if (end - start !== EMBEDDING_LEN * 4 || base + end > buf.length) throw bad('truncated data');
  const embeddings = new Float32Array(EMBEDDING_LEN);
  new Uint8Array(embeddings.buffer).set(buf.subarray(base + start, base + end));
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
  };
}

function isLittleEndian(): boolean {
  return new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
}
