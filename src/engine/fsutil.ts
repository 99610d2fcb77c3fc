import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, rename, rm, open } from 'node:fs/promises';
import { dirname, basename, join } from 'node:path';

/**
 * Write `data` to `path` so that readers only ever see the old file or the complete new one:
 * write a sibling temp file, fsync, rename. On failure the temp file is removed.
 */
export async function writeFileAtomic(path: string, data: string | Uint8Array): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  try {
    const fh = await open(tmp, 'w');
    try {
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}

/** Like writeFileAtomic, but the caller produces the file at the temp path (e.g. sharp.toFile). */
export async function produceFileAtomic(path: string, produce: (tmpPath: string) => Promise<unknown>): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  const ext = path.slice(path.lastIndexOf('.'));
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp${ext}`);
  try {
    await produce(tmp);
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}

/** SHA-256 (hex) of a file, streamed in 4 MiB chunks so multi-GB checkpoints cost no memory. */
export async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 22 })) hash.update(chunk as Buffer);
  return hash.digest('hex');
}
