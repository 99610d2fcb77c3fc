/**
 * Outputs that readers only ever see complete: every writer produces a hidden sibling temp
 * (`.<name>.<pid>.<8 hex>.tmp[.ext]` or `.tmpdir`) and renames it into place. The pid in the name
 * tells a killed run's leftovers (removeStaleTemps) from a live run's work in progress.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, open, readdir, rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { SamError, isSystemError, outputError } from './errors.js';
import { isProcessAlive } from './process.js';

export type TempKind = 'tmp' | 'tmpdir';

/**
 * A system error while writing `path` (the final name, never the temp one) as an output error
 * (exit code 6) naming the fix; anything else is rethrown as it is.
 */
function asOutputError(err: unknown, path: string): unknown {
  if (err instanceof SamError || !isSystemError(err)) return err;
  const why: Record<string, string> = {
    EACCES: 'permission denied',
    EPERM: 'permission denied',
    ENOSPC: 'no space left on the device',
    EDQUOT: 'disk quota exceeded',
    EROFS: 'read-only file system',
    ENOTDIR: 'a parent of it is a file',
    EEXIST: 'a parent of it is a file',
    EISDIR: 'it is a folder',
  };
  const reason = why[err.code ?? ''] ?? err.message.split('\n')[0];
  return outputError(`cannot write ${path}: ${reason} (${err.code}); choose another output path or fix the folder`, err);
}

/** The one temp-name pattern: tempSibling builds it, TEMP_NAME recognises it (and names derived by appending). */
const TEMP_NAME = /^\..+\.(\d+)\.[0-9a-f]{8}\.tmp(?:dir)?(?:\..*)?$/;

/** A fresh sibling temp name for `path`; `ext` keeps a file extension some writers need (sharp picks the format by it). */
export function tempSibling(path: string, kind: TempKind, ext = ''): string {
  return join(dirname(path), `.${basename(path)}.${process.pid}.${randomBytes(4).toString('hex')}.${kind}${ext}`);
}

/** The writer pid of a temp name, or undefined when `name` is not one. */
export function tempNamePid(name: string): number | undefined {
  const m = TEMP_NAME.exec(name);
  return m ? Number(m[1]) : undefined;
}

/**
 * Write `data` to `path` so that readers only ever see the old file or the complete new one:
 * write a sibling temp file, fsync, rename. On failure the temp file is removed.
 */
export async function writeFileAtomic(path: string, data: string | Uint8Array): Promise<void> {
  await produceFileAtomic(path, async (tmp) => {
    const fh = await open(tmp, 'w');
    try {
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
  }, '');
}

/**
 * Like writeFileAtomic, but the caller produces the file at the temp path (e.g. sharp.toFile).
 * The temp keeps `path`'s extension unless `ext` says otherwise.
 */
export async function produceFileAtomic(path: string, produce: (tmpPath: string) => Promise<unknown>, ext = path.slice(path.lastIndexOf('.'))): Promise<void> {
  const tmp = tempSibling(path, 'tmp', ext);
  try {
    await mkdir(dirname(path), { recursive: true });
    await produce(tmp);
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true }).catch(() => undefined);
    throw asOutputError(err, path);
  }
}

/**
 * Create the folder `path` so that readers only ever see it complete: `produce` fills a hidden
 * sibling temp folder which is then renamed into place. An existing folder is first moved aside
 * (a rename cannot replace a non-empty folder) and deleted afterwards; a kill between the two
 * renames leaves no folder at `path`, so a rerun redoes that image, and the moved-aside copy is
 * a stale temp that the next run removes.
 */
export async function produceDirAtomic(path: string, produce: (tmpDir: string) => Promise<void>): Promise<void> {
  const tmp = tempSibling(path, 'tmpdir');
  try {
    await mkdir(dirname(path), { recursive: true });
    await mkdir(tmp);
    await produce(tmp);
    let old: string | undefined;
    try {
      old = tempSibling(path, 'tmpdir');
      await rename(path, old);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      old = undefined;
    }
    await rename(tmp, path);
    if (old) await rm(old, { recursive: true, force: true });
  } catch (err) {
    await rm(tmp, { recursive: true, force: true }).catch(() => undefined);
    throw asOutputError(err, path);
  }
}

/**
 * Remove temp files and folders left under `dir` (recursively) by runs that were killed, i.e.
 * whose writer pid no longer runs. Other runs' temps (e.g. another shard writing to the same
 * folder) are left alone. Returns the number removed; a missing `dir` is not an error.
 */
export async function removeStaleTemps(dir: string, options: { recursive?: boolean; prefix?: string } = {}): Promise<number> {
  const recursive = options.recursive ?? true;
  let entries;
  try {
    entries = await readdir(dir, { withFileTypes: true });
  } catch {
    return 0;
  }
  let removed = 0;
  for (const e of entries) {
    const p = join(dir, e.name);
    const pid = tempNamePid(e.name);
    if (pid !== undefined && (!options.prefix || e.name.startsWith(options.prefix))) {
      if (!isProcessAlive(pid)) {
        await rm(p, { recursive: true, force: true });
        removed++;
      }
      continue;
    }
    if (recursive && e.isDirectory()) removed += await removeStaleTemps(p, options);
  }
  return removed;
}
