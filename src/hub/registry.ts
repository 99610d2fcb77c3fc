/**
 * Known models: models/registry.json (or $SAM_REGISTRY), parsed and checked.
 */
import { readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { SamError, modelError, usageError } from '../util/errors.js';
import { packageRoot } from '../util/package.js';

export interface RegistryEntry {
  name: string;
  description?: string;
  /** Model type of the checkpoint: vit_b, vit_l, vit_h, vit_t, or a SAM 2 type (sam2.1_hiera_tiny, ...). */
  type: string;
  url: string;
  /** File name in the downloads folder (default: the URL's last path segment). */
  file: string;
  /** Bytes, or null when unpublished. */
  size: number | null;
  /** Hex sha256, or null when unpublished: `pull` then records the hash of the first download. */
  sha256: string | null;
  licence: string;
  checksumSource?: string;
}

export interface Registry {
  /** Where it was read from (the packaged file or $SAM_REGISTRY). */
  source: string;
  models: RegistryEntry[];
}

/** Walk up from this module to the folder holding the package's package.json (works from src/ and dist/src/). */
export function registryPath(): string {
  const override = process.env.SAM_REGISTRY;
  return override ? resolve(override) : join(packageRoot(), 'models', 'registry.json');
}

export const HEX64 = /^[0-9a-f]{64}$/;
/** What a registry name (and so a bare `--model NAME`) may look like. */
export const MODEL_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;

function parseEntry(path: string, raw: unknown, i: number): RegistryEntry {
  const bad = (what: string): SamError => modelError(`${path}: models[${i}] ${what}; fix the registry file`);
  if (typeof raw !== 'object' || raw === null) throw bad('is not an object');
  const e = raw as Record<string, unknown>;
  if (typeof e.name !== 'string' || !MODEL_NAME.test(e.name)) throw bad('needs "name" (letters, digits, _ . -)');
  if (typeof e.url !== 'string' || !/^https?:\/\//.test(e.url)) throw bad(`(${e.name}) needs an http(s) "url"`);
  if (typeof e.type !== 'string') throw bad(`(${e.name}) needs "type" (vit_b, vit_l, vit_h, vit_t or a SAM 2 type such as sam2.1_hiera_tiny)`);
  const sha = e.sha256 ?? null;
  if (sha !== null && (typeof sha !== 'string' || !HEX64.test(sha))) throw bad(`(${e.name}) "sha256" must be 64 lowercase hex digits or null`);
  const size = e.size ?? null;
  if (size !== null && (typeof size !== 'number' || !Number.isSafeInteger(size) || size <= 0)) throw bad(`(${e.name}) "size" must be a positive integer or null`);
  const file = typeof e.file === 'string' ? e.file : decodeURIComponent(new URL(e.url).pathname.split('/').pop() ?? '');
  if (!file || file.includes('/') || file.includes('\\') || file.startsWith('.')) throw bad(`(${e.name}) has no usable file name`);
  return {
    name: e.name,
    description: typeof e.description === 'string' ? e.description : undefined,
    type: e.type,
    url: e.url,
    file,
    size: size as number | null,
    sha256: sha as string | null,
    licence: typeof e.licence === 'string' ? e.licence : 'unknown',
    checksumSource: typeof e.checksumSource === 'string' ? e.checksumSource : undefined,
  };
}

export async function loadRegistry(): Promise<Registry> {
  const path = registryPath();
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    const fix = process.env.SAM_REGISTRY ? 'fix or unset $SAM_REGISTRY' : 'reinstall sam';
    throw modelError(`model registry ${path} cannot be read (${(err as NodeJS.ErrnoException).code ?? String(err)}); ${fix}`, err);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw modelError(`model registry ${path} is not valid JSON (${(err as Error).message}); fix the file`, err);
  }
  const models = (json as { models?: unknown }).models;
  if (!Array.isArray(models)) throw modelError(`model registry ${path} has no "models" array; fix the file`);
  const entries = models.map((m, i) => parseEntry(path, m, i));
  const seen = new Set<string>();
  for (const e of entries) {
    if (seen.has(e.name)) throw modelError(`model registry ${path} lists '${e.name}' twice; fix the file`);
    seen.add(e.name);
  }
  return { source: path, models: entries };
}

export async function findRegistryEntry(name: string): Promise<RegistryEntry> {
  const reg = await loadRegistry();
  const entry = reg.models.find((m) => m.name === name);
  if (!entry) {
    throw usageError(`unknown model '${name}'; known models: ${reg.models.map((m) => m.name).join(', ')} (see 'sam models list')`);
  }
  return entry;
}
