import { randomBytes } from 'node:crypto';
import { mkdir, readdir, rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

/**
 * Temp names written by fsutil.ts (`.<name>.<pid>.<8 hex>.tmp[.ext]`) and produceDirAtomic
 * (`.<name>.<pid>.<8 hex>.tmpdir`), plus anything a writer derives from them by appending.
 * The pid tells a killed run's leftovers from a live run's work in progress.
 */
const TEMP_NAME = /^\..+\.(\d+)\.[0-9a-f]{8}\.tmp(?:dir)?(?:\..*)?$/;

function isRunning(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: the process exists but belongs to someone else.
    return (err as NodeJS.ErrnoException).code === 'EPERM';
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
    const m = TEMP_NAME.exec(e.name);
    if (m && (!options.prefix || e.name.startsWith(options.prefix))) {
      if (!isRunning(Number(m[1]))) {
        await rm(p, { recursive: true, force: true });
        removed++;
      }
      continue;
    }
    if (recursive && e.isDirectory()) removed += await removeStaleTemps(p, options);
  }
  return removed;
}

/** A fresh sibling temp name for `path`, in the pattern removeStaleTemps recognises. */
export function tempSibling(path: string, suffix: 'tmp' | 'tmpdir'): string {
  return join(dirname(path), `.${basename(path)}.${process.pid}.${randomBytes(4).toString('hex')}.${suffix}`);
}

/**
 * Create the folder `path` so that readers only ever see it complete: `produce` fills a hidden
 * sibling temp folder which is then renamed into place. An existing folder is first moved aside
 * (a rename cannot replace a non-empty folder) and deleted afterwards; a kill between the two
 * renames leaves no folder at `path`, so a rerun redoes that image, and the moved-aside copy is
 * a stale temp that the next run removes.
 */
export async function produceDirAtomic(path: string, produce: (tmpDir: string) => Promise<void>): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  const tmp = tempSibling(path, 'tmpdir');
  await mkdir(tmp);
  try {
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
    await rm(tmp, { recursive: true, force: true });
    throw err;
  }
}
