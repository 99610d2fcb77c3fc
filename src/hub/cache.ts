/**
 * The local cache folder.
 *
 * Layout: `<cache>/downloads/<file>[.part]` for checkpoints, `<cache>/models/<name>/` for
 * converted model folders (manifest.json + .onnx files), `<cache>/checksums.json` for hashes
 * recorded on first download of files the registry has no published checksum for.
 */
import { readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { isAbsolute, join, resolve } from 'node:path';
import { isFile } from '../util/fs.js';
import type { RegistryEntry } from './registry.js';

/**
 * The cache folder: $SAM_CACHE_DIR, else the platform's per-user cache folder
 * (Linux $XDG_CACHE_HOME/sam or ~/.cache/sam, macOS ~/Library/Caches/sam, Windows %LOCALAPPDATA%\sam\Cache).
 */
export function cacheDir(): string {
  const env = process.env;
  if (env.SAM_CACHE_DIR) return resolve(env.SAM_CACHE_DIR);
  const home = homedir();
  if (process.platform === 'win32') return join(env.LOCALAPPDATA || join(home, 'AppData', 'Local'), 'sam', 'Cache');
  if (process.platform === 'darwin') return join(home, 'Library', 'Caches', 'sam');
  // XDG: a relative XDG_CACHE_HOME is invalid and must be ignored.
  const xdg = env.XDG_CACHE_HOME;
  return join(xdg && isAbsolute(xdg) ? xdg : join(home, '.cache'), 'sam');
}

export const modelsDir = (): string => join(cacheDir(), 'models');
export const downloadsDir = (): string => join(cacheDir(), 'downloads');
export const pulledModelDir = (name: string): string => join(modelsDir(), name);
export const downloadPath = (entry: RegistryEntry): string => join(downloadsDir(), entry.file);

export async function isConverted(dir: string): Promise<boolean> {
  return isFile(join(dir, 'manifest.json'));
}

/** The manifest's "quantization" ('int8') of a converted model folder; undefined for float models. */
export async function modelQuantization(dir: string): Promise<string | undefined> {
  const text = await readFile(join(dir, 'manifest.json'), 'utf8').catch(() => undefined);
  try {
    const q = text === undefined ? undefined : (JSON.parse(text) as { quantization?: unknown }).quantization;
    return typeof q === 'string' ? q : undefined;
  } catch {
    return undefined;
  }
}
