import { open, readdir, stat } from 'node:fs/promises';
import { basename, extname, join, relative, resolve, sep } from 'node:path';
import { inputError } from '../util/errors.js';

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

/**
 * Names that claim to be an image. A file so named is kept even when its bytes do not sniff as
 * one (empty, truncated), so that it is reported as a failure instead of silently dropped.
 */
const IMAGE_EXTENSIONS = new Set(['.jpg', '.jpeg', '.jpe', '.png', '.webp', '.gif', '.tif', '.tiff', '.avif', '.heic', '.heif']);

async function isImageFile(path: string): Promise<boolean> {
  if (IMAGE_EXTENSIONS.has(extname(path).toLowerCase())) return true;
  return (await sniffFile(path).catch(() => undefined)) !== undefined;
}

const byName = (a: { name: string }, b: { name: string }): number => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);

/**
 * Every image file under `dir`, recursively, skipping hidden entries; sorted by path. With
 * `match`, only files whose '/'-separated path relative to `root` it accepts.
 */
async function walk(dir: string, root: string, out: InputImage[], match?: (rel: string) => boolean): Promise<void> {
  const entries = await readdir(dir, { withFileTypes: true });
  entries.sort(byName);
  for (const e of entries) {
    if (e.name.startsWith('.')) continue;
    const p = join(dir, e.name);
    if (e.isDirectory()) await walk(p, root, out, match);
    else if (e.isFile()) {
      const rel = relative(root, p);
      if (match && !match(rel.split(sep).join('/'))) continue;
      if (await isImageFile(p)) out.push({ path: p, key: keyOf(rel) });
    }
  }
}

const GLOB_CHARS = /[*?[]/;

/** True when an argument is a glob pattern (the shell left it quoted) rather than a path. */
export function isGlob(arg: string): boolean {
  return GLOB_CHARS.test(arg);
}

/**
 * A glob (`*`, `?`, `[...]` within a path segment, `**` for any number of folders) as a regular
 * expression over '/'-separated relative paths. Node 20 has no fs glob, hence this small matcher.
 */
export function globToRegExp(pattern: string): RegExp {
  let re = '';
  const segs = pattern.split('/');
  segs.forEach((seg, si) => {
    const last = si === segs.length - 1;
    if (seg === '**') {
      // Zero or more whole folders (or, as the last segment, any path below).
      re += last ? '.*' : '(?:[^/]+/)*';
      return;
    }
    for (let i = 0; i < seg.length; i++) {
      const c = seg[i];
      if (c === '*') re += '[^/]*';
      else if (c === '?') re += '[^/]';
      else if (c === '[') {
        const end = seg.indexOf(']', i + 2);
        if (end < 0) {
          re += '\\[';
          continue;
        }
        let body = seg.slice(i + 1, end);
        const negate = body[0] === '!' || body[0] === '^';
        if (negate) body = body.slice(1);
        re += `[${negate ? '^' : ''}${body.replace(/\\/g, '\\\\').replace(/\]/g, '\\]')}]`;
        i = end;
      } else re += c.replace(/[.+^${}()|\\]/g, '\\$&');
    }
    if (!last) re += '/';
  });
  return new RegExp(`^${re}$`);
}

/** Images matching a glob, keyed relative to its static base folder (the segments before the first wildcard). */
async function expandGlob(pattern: string): Promise<InputImage[]> {
  const norm = pattern.split(sep).join('/');
  const segs = norm.split('/');
  const firstWild = segs.findIndex((s) => isGlob(s));
  const baseSegs = segs.slice(0, firstWild);
  const base = resolve(baseSegs.length === 0 ? '.' : baseSegs.join('/') || '/');
  const rest = segs.slice(firstWild).join('/');
  const st = await stat(base).catch(() => undefined);
  if (!st?.isDirectory()) throw inputError(`${pattern}: the folder ${base} of this pattern does not exist; check the path`);
  const re = globToRegExp(rest);
  const found: InputImage[] = [];
  await walk(base, base, found, (rel) => re.test(rel));
  if (found.length === 0) throw inputError(`${pattern}: matches no image; check the pattern (quote it so the shell leaves it to sam)`);
  return found;
}

/**
 * Expand the command-line inputs: files are taken as given (a bad one fails later, per file, so a
 * batch carries on); folders are walked recursively and keep files whose bytes say image or whose
 * name says image (so a broken one is reported); glob patterns (an argument that is not an
 * existing path and contains * ? or [) are matched over a walk of their static base folder.
 * Order is deterministic: arguments in order, each folder sorted by path. Two inputs with the same
 * output key are refused, since one output would overwrite the other.
 */
export async function collectInputs(args: readonly string[]): Promise<InputImage[]> {
  const out: InputImage[] = [];
  for (const arg of args) {
    const abs = resolve(arg);
    const st = await stat(abs).catch(() => undefined);
    if (!st && isGlob(arg)) {
      out.push(...(await expandGlob(arg)));
      continue;
    }
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
