import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';

/** SHA-256 (hex) of a file, streamed in 4 MiB chunks so multi-GB checkpoints cost no memory. */
export async function sha256File(path: string, options: { end?: number } = {}): Promise<string> {
  return (await hashFile(path, options)).digest('hex');
}

/** A sha256 Hash fed with the file's bytes (up to `end` inclusive), for callers that go on hashing. */
export async function hashFile(path: string, options: { end?: number } = {}): Promise<ReturnType<typeof createHash>> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path, { end: options.end, highWaterMark: 1 << 22 })) hash.update(chunk as Buffer);
  return hash;
}
