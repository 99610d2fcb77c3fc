/**
 * Locates the shared folder (golden data, images) next to the repository:
 * $SAM_SHARED_DIR when set, else ../shared relative to the repository root.
 */
import { existsSync, readFileSync } from 'node:fs';
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
