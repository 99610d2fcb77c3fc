import { open, readdir, stat } from 'node:fs/promises';
import { basename, extname, join, relative, resolve, sep } from 'node:path';
import { inputError } from '../errors.js';

/** One image to process, and the key its outputs are named by. */
export interface InputImage {
  /** Absolute path. */
  path: string;
  /**
   * Output key: the path relative to the folder it was found in (or the file name for a file
   * given directly), without extension, with '/' separators. `<out>/<key>.json` etc.
   */
  key: string;
}

/** Image types sharp decodes, recognised by their first bytes (names lie, bytes do not). */
export function sniffImageType(head: Uint8Array): string | undefined {
  const at = (i: number, ...bytes: number[]) => bytes.every((b, j) => head[i + j] === b);
  const ascii = (i: number, s: string) => at(i, ...[...s].map((c) => c.charCodeAt(0)));
  if (at(0, 0xff, 0xd8, 0xff)) return 'jpeg';
  if (at(0, 0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a)) return 'png';
  if (ascii(0, 'RIFF') && ascii(8, 'WEBP')) return 'webp';
  if (ascii(0, 'GIF87a') || ascii(0, 'GIF89a')) return 'gif';
  if (at(0, 0x49, 0x49, 0x2a, 0x00) || at(0, 0x4d, 0x4d, 0x00, 0x2a)) return 'tiff';
  if (ascii(4, 'ftyp') && ['avif', 'avis', 'heic', 'heix', 'mif1', 'msf1'].some((b) => ascii(8, b))) return 'heif';
  return undefined;
}

async function sniffFile(path: string): Promise<string | undefined> {
  const fh = await open(path, 'r');
  try {
    const head = new Uint8Array(16);
    const { bytesRead } = await fh.read(head, 0, 16, 0);
    return bytesRead === 16 ? sniffImageType(head) : undefined;
  } finally {
    await fh.close();
  }
}

const keyOf = (rel: string): string => rel.slice(0, rel.length - extname(rel).length).split(sep).join('/');

/** Every image file under `dir`, recursively, skipping hidden entries; sorted by path. */
async function walk(dir: string, root: string, out: InputImage[]): Promise<void> {
  const entries = await readdir(dir, { withFileTypes: true });
  entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (const e of entries) {
    if (e.name.startsWith('.')) continue;
    const p = join(dir, e.name);
    if (e.isDirectory()) await walk(p, root, out);
    else if (e.isFile() && (await sniffFile(p).catch(() => undefined))) out.push({ path: p, key: keyOf(relative(root, p)) });
  }
}

/**
 * Expand the command-line inputs: files are taken as given (a bad one fails later, per file, so a
 * batch carries on); folders are walked recursively and keep only files whose bytes say image.
 * Order is deterministic: arguments in order, each folder sorted by path. Two inputs with the same
 * output key are refused, since one output would overwrite the other.
 */
export async function collectInputs(args: readonly string[]): Promise<InputImage[]> {
  const out: InputImage[] = [];
  for (const arg of args) {
    const abs = resolve(arg);
    const st = await stat(abs).catch(() => undefined);
    if (!st) throw inputError(`${arg}: no such file or folder; check the path`);
    if (st.isDirectory()) {
      const found: InputImage[] = [];
      await walk(abs, abs, found);
      out.push(...found);
    } else {
      out.push({ path: abs, key: keyOf(basename(abs)) });
    }
  }
  const seen = new Map<string, string>();
  const unique: InputImage[] = [];
  for (const item of out) {
    const prev = seen.get(item.key);
    if (prev === item.path) continue;
    if (prev !== undefined) {
      throw inputError(`${item.path} and ${prev} would write the same output '${item.key}'; rename one or run them separately`);
    }
    seen.set(item.key, item.path);
    unique.push(item);
  }
  return unique;
}
