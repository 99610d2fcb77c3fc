/**
 * Locates the shared folder (golden data, images) next to the repository:
 * $SAM_SHARED_DIR when set, else ../shared relative to the repository root.
 */
import { existsSync, readFileSync } from 'node:fs';
import { decodeNpyFloat32 } from '../../src/engine/npy.js';
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
