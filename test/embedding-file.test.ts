/**
 * The embedding file (safetensors) for both model families, and the refusal of an embedding of
 * one family by a model of the other.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { SamModel } from '../src/engine/model.js';
import { imageStateFromEmbedding } from '../src/engine/predictor.js';
import { encodeEmbeddingFile, readEmbeddingFile, writeEmbeddingFile, type EmbeddingRecord } from '../src/io/embedding-file.js';
import { SamError } from '../src/util/errors.js';
import { tempDir } from './helpers/cli.js';

const tmp = tempDir('sam-embfile-');
afterAll(() => tmp.cleanup());

const ramp = (n: number, k: number): Float32Array => Float32Array.from({ length: n }, (_, i) => Math.sin(i * k));
const v1: EmbeddingRecord = { embeddings: ramp(256 * 64 * 64, 0.1), modelId: 'm-v1', originalSize: [534, 800], inputSize: [684, 1024], image: 'dog.jpg' };
const v2: EmbeddingRecord = {
  embeddings: ramp(256 * 64 * 64, 0.2),
  modelId: 'm-sam2',
  originalSize: [534, 800],
  inputSize: [1024, 1024],
  family: 'sam2',
  highResFeats: [ramp(32 * 256 * 256, 0.3), ramp(64 * 128 * 128, 0.4)],
};

/** The safetensors JSON header of an encoded file. */
function headerOf(bytes: Uint8Array): Record<string, { shape?: number[] }> {
  const len = Number(Buffer.from(bytes.subarray(0, 8)).readBigUInt64LE(0));
  return JSON.parse(Buffer.from(bytes.subarray(8, 8 + len)).toString('utf8')) as Record<string, { shape?: number[] }>;
}

/** A model folder whose manifest names a family (sessions are never loaded here). */
function modelFolder(name: string, family?: string): string {
  const dir = join(tmp.dir, name);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'encoder.onnx'), '');
  writeFileSync(join(dir, 'decoder.onnx'), '');
  writeFileSync(join(dir, 'manifest.json'), JSON.stringify({ format: 'sam-onnx/1', id: name, encoder: 'encoder.onnx', decoder: 'decoder.onnx', ...(family ? { family } : {}) }));
  return dir;
}

describe('embedding files', () => {
  it('round-trip SAM and SAM 2 records; SAM 2 tensors keep their own names', async () => {
    for (const rec of [v1, v2]) {
      const file = join(tmp.dir, `${rec.modelId}.safetensors`);
      await writeEmbeddingFile(file, rec);
      const back = await readEmbeddingFile(file);
      expect(back.family).toBe(rec.family ?? 'sam');
      expect(back.modelId).toBe(rec.modelId);
      expect(back.originalSize).toEqual(rec.originalSize);
      expect(back.inputSize).toEqual(rec.inputSize);
      expect(Buffer.from(back.embeddings.buffer).equals(Buffer.from(rec.embeddings.buffer))).toBe(true);
      if (rec.highResFeats) {
        expect(back.highResFeats).toHaveLength(2);
        rec.highResFeats.forEach((t, i) => expect(Buffer.from(back.highResFeats![i].buffer).equals(Buffer.from(t.buffer))).toBe(true));
      } else expect(back.highResFeats).toBeUndefined();
    }
    const header = headerOf(encodeEmbeddingFile(v2));
    expect(Object.keys(header).sort()).toEqual(['__metadata__', 'high_res_feats_0', 'high_res_feats_1', 'image_embed']);
    expect(header.high_res_feats_1.shape).toEqual([1, 64, 128, 128]);
    // A SAM file has no family key: files written before SAM 2 existed read the same.
    const h1 = headerOf(encodeEmbeddingFile(v1));
    expect(Object.keys(h1).sort()).toEqual(['__metadata__', 'image_embeddings']);
    expect(h1.__metadata__).not.toHaveProperty('family');
  });

  it('a SAM 2 file missing a high-res tensor is refused, naming the fix', async () => {
    const bytes = Buffer.from(encodeEmbeddingFile(v2));
    const file = join(tmp.dir, 'cut.safetensors');
    writeFileSync(file, bytes.subarray(0, bytes.length - 1000));
    await expect(readEmbeddingFile(file)).rejects.toThrow(/not a sam embedding file \(truncated data\); recreate it with 'sam embed'/);
  });

  it('an embedding of one family given to a model of the other is refused in one line', async () => {
    const sam = await SamModel.open(modelFolder('m-v1'));
    const sam2 = await SamModel.open(modelFolder('m-sam2', 'sam2'));
    expect(sam.family).toBe('sam');
    expect(sam2.family).toBe('sam2');
    for (const [model, rec, msg] of [
      [sam2, v1, /made by a SAM \(v1 \/ MobileSAM\) model \('m-v1'\) and this --model is a SAM 2 model \('m-sam2'\).*rerun 'sam embed' with this --model/],
      [sam, v2, /made by a SAM 2 model \('m-sam2'\) and this --model is a SAM \(v1 \/ MobileSAM\) model/],
    ] as const) {
      const err = await imageStateFromEmbedding(model, rec, 'x.safetensors', [534, 800]).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(SamError);
      expect((err as SamError).kind).toBe('input');
      expect((err as Error).message).toMatch(msg);
      expect((err as Error).message).not.toContain('\n');
    }
    // Same family, right model: accepted.
    await expect(imageStateFromEmbedding(sam, v1, 'x.safetensors', [534, 800])).resolves.toMatchObject({ originalSize: [534, 800] });
  });
});
