/**
 * SAM 2 models in the engine, through the CLI: a model folder (manifest family "sam2") whose
 * encoder is built from the golden random sam2.1_hiera_tiny checkpoint. `sam embed` stores the
 * three features, equal to the official ones; commands that do not run SAM 2 yet refuse it in one
 * line; embeddings never cross families.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadStateDict } from '../src/convert/checkpoint.js';
import { buildSam2Encoder } from '../src/convert/hiera-encoder.js';
import { SAM2_CONFIGS } from '../src/convert/sam2-configs.js';
import { readEmbeddingFile } from '../src/io/embedding-file.js';
import { decodeNpyFloat32 } from '../src/io/npy.js';
import { fixtureModel, runSam, tempDir } from './helpers/cli.js';
import { absErrors, sharedDir } from './helpers/golden.js';

const tmp = tempDir('sam-sam2-engine-');
afterAll(() => tmp.cleanup());
const modelDir = path.join(tmp.dir, 'sam2.1_hiera_tiny');
const imagesDir = path.join(tmp.dir, 'images');
const sam2Dir = (): string => path.join(sharedDir(), 'golden', 'sam2');
const golden = (name: string): Float32Array => decodeNpyFloat32(new Uint8Array(readFileSync(path.join(sam2Dir(), name))))!.data;

beforeAll(async () => {
  const sd = await loadStateDict(path.join(sam2Dir(), 'sam2.1_hiera_tiny-random-fp16.pt'));
  mkdirSync(modelDir, { recursive: true });
  writeFileSync(path.join(modelDir, 'encoder.onnx'), buildSam2Encoder(sd, SAM2_CONFIGS['sam2.1_hiera_tiny']));
  // Not loaded by these tests: embed needs only the encoder, the others refuse before loading.
  writeFileSync(path.join(modelDir, 'decoder.onnx'), '');
  writeFileSync(
    path.join(modelDir, 'manifest.json'),
    JSON.stringify({ format: 'sam-onnx/1', id: 'sam2.1_hiera_tiny-random', type: 'sam2.1_hiera_tiny', family: 'sam2', encoder: 'encoder.onnx', decoder: 'decoder.onnx' }),
  );
  mkdirSync(imagesDir, { recursive: true });
  writeFileSync(path.join(imagesDir, 'dog.jpg'), readFileSync(path.join(sharedDir(), 'images', 'dog.jpg')));
}, 300_000);

describe('SAM 2 models in the engine', () => {
  const emb = path.join(tmp.dir, 'emb');

  it('sam embed stores image_embed and both high-res features, matching the official features', async () => {
    const r = await runSam(['embed', imagesDir, '--model', modelDir, '--out', emb, '-q']);
    expect(r.code, r.stderr).toBe(0);
    const rec = await readEmbeddingFile(path.join(emb, 'dog.safetensors'));
    expect(rec.family).toBe('sam2');
    expect(rec.modelId).toBe('sam2.1_hiera_tiny-random');
    expect(rec.originalSize).toEqual([534, 800]);
    expect(rec.inputSize).toEqual([1024, 1024]);
    const errs = [
      absErrors(rec.embeddings, golden('image_embed.npy')),
      absErrors(rec.highResFeats![0], golden('high_res_feats_0.npy')),
      absErrors(rec.highResFeats![1], golden('high_res_feats_1.npy')),
    ];
    console.log(`sam embed (SAM 2) vs official: ${errs.map((e) => `max ${e.max.toExponential(2)}`).join(', ')}`);
    for (const e of errs) expect(e.max).toBeLessThanOrEqual(1e-4);
  });

  it('commands that run SAM (v1) models only refuse a SAM 2 model in one line (exit 3)', async () => {
    const img = path.join(imagesDir, 'dog.jpg');
    for (const args of [
      ['segment', img, '--model', modelDir, '--points', '320,300', '--out', path.join(tmp.dir, 'm.png')],
      ['auto', img, '--model', modelDir, '--out', path.join(tmp.dir, 'auto')],
      ['segment', imagesDir, '--prompts', path.join(tmp.dir, 'none.jsonl'), '--model', modelDir, '--out', path.join(tmp.dir, 'p')],
    ]) {
      writeFileSync(path.join(tmp.dir, 'none.jsonl'), '{"image": "dog.jpg", "box": [1, 1, 50, 50]}\n');
      const r = await runSam(args);
      expect(r.code, r.stderr).toBe(3);
      expect(r.stderr).toMatch(/is a SAM 2 model; sam (segment|auto)( --prompts)? runs SAM \(v1\) and MobileSAM models only so far/);
      expect(r.stderr.trim().split('\n').filter((l) => l.includes('SAM 2 model'))).toHaveLength(1);
    }
  });

  it('a SAM 2 embedding given to a SAM model is refused, naming the fix (exit 4)', async () => {
    const r = await runSam(['segment', path.join(imagesDir, 'dog.jpg'), '--model', fixtureModel(), '--embedding', path.join(emb, 'dog.safetensors'), '--points', '320,300', '--out', path.join(tmp.dir, 'x.png')]);
    expect(r.code).toBe(4);
    expect(r.stderr).toMatch(/made by a SAM 2 model .* this --model is a SAM \(v1 \/ MobileSAM\) model .*rerun 'sam embed' with this --model/);
  });
});
