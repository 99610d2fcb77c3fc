/**
 * What a queue stores once, beside its jobs: the settings of the run (everything that decides
 * the bytes `sam auto` writes for an image), and how an image's key becomes a BullMQ job id.
 * Plain data; the Redis side is in queue.ts.
 */
import { createHash } from 'node:crypto';
import { isAbsolute, relative, resolve, sep } from 'node:path';
import { resolveAmgOptions, type AmgOptions } from '../amg/generator.js';
import type { OutputMode } from '../output/records.js';
import type { InputImage } from '../io/inputs.js';

/** Bumped when the stored shape changes; a worker refuses settings of another version. */
export const SETTINGS_VERSION = 1;

/** AmgOptions as JSON: point grids as arrays of [x, y] per layer. */
export type StoredAmgOptions = Omit<AmgOptions, 'pointGrids'> & { pointGrids: number[][][] | null };

export interface QueueSettings {
  version: number;
  /** SamModel.id() of the model every image is run with; a worker with another model is refused. */
  modelId: string;
  /** The --model the queue was created with (for messages only). */
  model: string;
  amg: StoredAmgOptions;
  outputMode: OutputMode;
  /** Absolute folders, as seen by the machine that added the jobs (workers may map them, see --out/--input-root). */
  outDir: string;
  overlayDir: string | null;
  embeddingsDir: string | null;
  /** Jobs name their image relative to this folder (the common folder of the first add). */
  inputRoot: string;
}

export function storeAmgOptions(amg: AmgOptions): StoredAmgOptions {
  const pointGrids = amg.pointGrids?.map((g) => Array.from({ length: g.length / 2 }, (_, i) => [g[2 * i], g[2 * i + 1]])) ?? null;
  return { ...amg, pointGrids };
}

export function loadAmgOptions(stored: StoredAmgOptions): AmgOptions {
  const pointGrids = stored.pointGrids?.map((g) => Float64Array.from(g.flat())) ?? null;
  return resolveAmgOptions({ ...stored, pointGrids });
}

/** Settings as they are compared: everything but the input root (later adds may span other folders). */
function comparable(s: QueueSettings): Record<string, unknown> {
  return { version: s.version, modelId: s.modelId, amg: s.amg, outputMode: s.outputMode, outDir: s.outDir, overlayDir: s.overlayDir, embeddingsDir: s.embeddingsDir };
}

const FLAG: Record<string, string> = {
  version: 'the settings version (a newer sam)',
  modelId: '--model',
  outputMode: '--output-mode',
  outDir: '--out',
  overlayDir: '--overlay',
  embeddingsDir: '--embeddings',
};

/** `--flag` names of AmgOptions fields (pointsPerSide → --points-per-side). */
const amgFlag = (field: string): string => `--${field.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;

/**
 * The differences between two settings, one `flag: stored vs given` entry each (empty when
 * they agree).
 */
export function settingsDifferences(stored: QueueSettings, given: QueueSettings): string[] {
  const a = comparable(stored);
  const b = comparable(given);
  const out: string[] = [];
  const show = (v: unknown): string => (v === null ? 'none' : JSON.stringify(v).slice(0, 60));
  for (const k of Object.keys(a)) {
    if (k === 'amg') {
      for (const f of Object.keys(stored.amg) as (keyof StoredAmgOptions)[]) {
        if (JSON.stringify(stored.amg[f]) !== JSON.stringify(given.amg[f])) out.push(`${amgFlag(f)} ${show(stored.amg[f])} (given ${show(given.amg[f])})`);
      }
    } else if (JSON.stringify(a[k]) !== JSON.stringify(b[k])) {
      if (k === 'modelId') out.push(`--model: id ${show(stored.modelId)} of ${stored.model} (given ${show(given.modelId)} of ${given.model})`);
      else out.push(`${FLAG[k] ?? k} ${show(a[k])} (given ${show(b[k])})`);
    }
  }
  return out;
}

/** A short digest of the compared settings, stored in every job (a worker checks it per job). */
export function settingsDigest(s: QueueSettings): string {
  return createHash('sha256').update(JSON.stringify(comparable(s))).digest('hex').slice(0, 16);
}

/**
 * The job id of an image key: the key itself, readable in Redis tools, with the two things BullMQ
 * refuses escaped: ':' (and '%', the escape) percent-encoded, and an all-digits key (BullMQ takes
 * integers as its own ids) with its first digit encoded. Injective, so ids never collide.
 */
export function jobIdForKey(key: string): string {
  const id = key.replace(/%/g, '%25').replace(/:/g, '%3A');
  return /^\d+$/.test(id) ? `%3${id[0]}${id.slice(1)}` : id;
}

export function keyForJobId(id: string): string {
  return decodeURIComponent(id);
}

/** What a job carries: its image, relative to the queue's input root ('/'-separated), and the settings digest. */
export interface ImageJobData {
  key: string;
  file: string;
  settings: string;
}

export function jobDataFor(item: InputImage, inputRoot: string, digest: string): ImageJobData {
  return { key: item.key, file: relative(inputRoot, item.path).split(sep).join('/'), settings: digest };
}

/** The image path of a job on this machine (inputRoot may be mapped by the worker's --input-root). */
export function imagePathOf(data: ImageJobData, inputRoot: string): string {
  return isAbsolute(data.file) ? data.file : resolve(inputRoot, data.file);
}

/** The deepest folder holding every path (the input root of a first add). */
export function commonFolder(paths: readonly string[]): string {
  if (paths.length === 0) return resolve('.');
  let parts = resolve(paths[0]).split(sep).slice(0, -1);
  for (const p of paths.slice(1)) {
    const q = resolve(p).split(sep).slice(0, -1);
    let i = 0;
    while (i < parts.length && i < q.length && parts[i] === q[i]) i++;
    parts = parts.slice(0, i);
  }
  return parts.join(sep) || sep;
}
