/**
 * Locates the shared folder (golden data, images) next to the repository:
 * $SAM_SHARED_DIR when set, else ../shared relative to the repository root.
 */
import { existsSync, readFileSync } from 'node:fs';
import { decodeNpyFloat32 } from '../../src/io/npy.js';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

export function sharedDir(): string {
  const fromEnv = process.env.SAM_SHARED_DIR;
  const dir = fromEnv ? path.resolve(fromEnv) : path.resolve(repoRoot, '..', 'shared');
  if (!existsSync(dir)) {
    throw new Error(`shared folder not found at ${dir} (set SAM_SHARED_DIR to override)`);
  }
  return dir;
}

export function goldenPath(name = 'amg-golden.json'): string {
  return path.join(sharedDir(), 'golden', name);
}

const cache = new Map<string, unknown>();

/** Parsed golden JSON (cached per file); the caller supplies the expected shape. */
export function loadGolden<T>(name = 'amg-golden.json'): T {
  const p = goldenPath(name);
  let v = cache.get(p);
  if (v === undefined) {
    v = JSON.parse(readFileSync(p, 'utf8')) as unknown;
    cache.set(p, v);
  }
  return v as T;
}

/** A file of ../shared/golden/convert (reference data of the checkpoint converter). */
export function convertGoldenPath(name: string): string {
  return path.join(sharedDir(), 'golden', 'convert', name);
}

/** A float32 .npy of ../shared/golden/convert. */
export function readGoldenNpy(name: string): { data: Float32Array; shape: number[] } {
  const file = convertGoldenPath(name);
  const arr = decodeNpyFloat32(readFileSync(file));
  if (!arr) throw new Error(`${file}: not a float32 .npy`);
  return arr;
}

/**
 * Bounds for network outputs against the official PyTorch ones: about 10x what the converted
 * graphs reach (encoders max 6e-6 / mean 9e-7, decoder logits max 7.6e-7 / mean 1.4e-7, IoU
 * 4.2e-7, upscaled masks 6.1e-6 / 5.7e-7), so a 10x regression fails. The golden README measures
 * 1e-5 (encoders) and 7e-7 (decoders) of plain CPU noise across SIMD widths and thread counts.
 */
export const TOL = {
  encoder: { max: 6e-5, mean: 1e-5 },
  decoderLogits: { max: 1e-5, mean: 2e-6 },
  decoderIou: { max: 5e-6, mean: 2e-6 },
  upscaledLogits: { max: 6e-5, mean: 6e-6 },
} as const;

/** Max and mean absolute difference; a NaN anywhere makes max NaN, which fails any bound. */
export function absErrors(actual: ArrayLike<number>, expected: ArrayLike<number>): { max: number; mean: number } {
  if (actual.length !== expected.length) throw new Error(`length ${actual.length} vs expected ${expected.length}`);
  let max = 0;
  let sum = 0;
  for (let i = 0; i < actual.length; i++) {
    const d = Math.abs(actual[i] - expected[i]);
    if (!(d <= max)) max = d;
    sum += d;
  }
  return { max, mean: sum / actual.length };
}

/**
 * The decoder golden inputs of ../shared/golden/convert: vit_t-random's (stale-bias) embedding of
 * dog.jpg [1,256,64,64] and each named case's official low_res_masks [1,4,256,256].
 */
export function readDecoderGolden<N extends string>(cases: readonly N[]): { embedding: Float32Array; lowRes: Map<N, Float32Array> } {
  const emb = readGoldenNpy('vit_t-random.dog.image_embeddings.npy');
  if (emb.shape.join(',') !== '1,256,64,64') throw new Error(`golden embedding has shape [${emb.shape}], expected [1,256,64,64]`);
  const lowRes = new Map<N, Float32Array>();
  for (const name of cases) {
    const low = readGoldenNpy(`vit_t-random.dog.${name}.low_res_masks.npy`);
    if (low.shape.join(',') !== '1,4,256,256') throw new Error(`golden ${name} low_res_masks has shape [${low.shape}], expected [1,4,256,256]`);
    lowRes.set(name, low.data);
  }
  return { embedding: emb.data, lowRes };
}
