/**
 * Resumable, checksum-verified downloads of the published checkpoints into the cache folder.
 */
import { createHash, type Hash } from 'node:crypto';
import { mkdir, open, readFile, rename, rm, stat, type FileHandle } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { SamError, modelError } from '../util/errors.js';
import { writeFileAtomic } from '../util/atomic.js';
import { hashFile, sha256File } from '../util/hash.js';
import { isProcessAlive } from '../util/process.js';
import { cacheDir, downloadPath } from './cache.js';
import { HEX64, type RegistryEntry } from './registry.js';

// ---------------------------------------------------------------------------------------------
// Checksums recorded for registry entries without a published one.

interface RecordedChecksum {
  url: string;
  sha256: string;
  size: number;
}

const recordedPath = (): string => join(cacheDir(), 'checksums.json');

async function readRecorded(): Promise<Record<string, RecordedChecksum>> {
  const text = await readFile(recordedPath(), 'utf8').catch(() => undefined);
  if (text === undefined) return {};
  try {
    return JSON.parse(text) as Record<string, RecordedChecksum>;
  } catch {
    return {};
  }
}

/** The published sha256/size, else the one recorded locally on the first download of the same URL. */
export async function expectedChecksum(entry: RegistryEntry): Promise<{ sha256: string | null; size: number | null; recorded: boolean }> {
  if (entry.sha256) return { sha256: entry.sha256, size: entry.size, recorded: false };
  const rec = (await readRecorded())[entry.name];
  if (rec && rec.url === entry.url && HEX64.test(rec.sha256)) return { sha256: rec.sha256, size: entry.size ?? rec.size, recorded: true };
  return { sha256: null, size: entry.size, recorded: false };
}

async function recordChecksum(entry: RegistryEntry, sha256: string, size: number): Promise<void> {
  const all = await readRecorded();
  all[entry.name] = { url: entry.url, sha256, size };
  await writeFileAtomic(recordedPath(), `${JSON.stringify(all, null, 2)}\n`);
}

// ---------------------------------------------------------------------------------------------
// Download.


export interface DownloadEvents {
  /** Response received: `total` bytes expected (undefined when the server does not say), `from` already on disk. */
  start?(info: { url: string; total: number | undefined; from: number; resumed: boolean }): void;
  progress?(received: number, total: number | undefined): void;
  /** One-line notes (resuming, restarting, recorded checksum). */
  note?(line: string): void;
}

export interface DownloadResult {
  path: string;
  sha256: string;
  bytes: number;
  /** The verified file was already there; nothing was fetched. */
  cached: boolean;
  /** Compared with a published or previously recorded sha256 (false: recorded now). */
  checked: boolean;
}

const OFFLINE_FIX = (entry: RegistryEntry): string =>
  `check the network connection, or download ${entry.url} on another machine and run 'sam models convert ${entry.file} --type ${entry.type} --out DIR'`;

/** A one-line reason from a fetch/undici error (their `cause` carries the system error code). */
function networkReason(err: unknown): string {
  const e = err as { message?: string; code?: string; cause?: { code?: string; message?: string } };
  const code = e.cause?.code ?? e.code;
  const msg = e.cause?.message ?? e.message ?? String(err);
  const words: Record<string, string> = {
    ECONNREFUSED: 'connection refused',
    ENOTFOUND: 'host not found',
    EAI_AGAIN: 'name lookup failed (offline?)',
    ETIMEDOUT: 'timed out',
    UND_ERR_CONNECT_TIMEOUT: 'connection timed out',
    ECONNRESET: 'connection reset',
    ENETUNREACH: 'network unreachable',
    EHOSTUNREACH: 'host unreachable',
    UND_ERR_SOCKET: 'connection closed by the server',
  };
  return code ? `${words[code] ?? msg.split('\n')[0]} (${code})` : msg.split('\n')[0];
}

interface PartMeta {
  url: string;
  total?: number;
  etag?: string;
  lastModified?: string;
}

/** Exclusive lock on a download so two pulls of the same file do not interleave writes. */
async function lockDownload(lockPath: string, url: string): Promise<() => Promise<void>> {
  await mkdir(dirname(lockPath), { recursive: true });
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fh = await open(lockPath, 'wx');
      await fh.writeFile(String(process.pid));
      await fh.close();
      return () => rm(lockPath, { force: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const pid = Number((await readFile(lockPath, 'utf8').catch(() => '')).trim());
      const alive = Number.isInteger(pid) && pid > 0 && pid !== process.pid && isProcessAlive(pid);
      if (alive) throw modelError(`another sam process (pid ${pid}) is downloading ${url}; wait for it to finish, then run the command again`);
      // The previous owner died: take over its partial download.
      await rm(lockPath, { force: true });
    }
  }
  throw modelError(`cannot lock ${lockPath}; remove it if no other 'sam models pull' is running`);
}

/**
 * Download `entry` to `<cache>/downloads/<file>`: resume a previous `.part` with an HTTP Range
 * request, hash while writing, then check the sha256 (and size) before the rename. A mismatch
 * removes the partial file. With no published checksum the first download's hash is recorded
 * (and reported through `events.note`), so later downloads are checked against it.
 */
export async function downloadCheckpoint(entry: RegistryEntry, options: { force?: boolean; events?: DownloadEvents } = {}): Promise<DownloadResult> {
  const events = options.events ?? {};
  const finalPath = downloadPath(entry);
  const part = `${finalPath}.part`;
  const metaPath = `${part}.json`;
  const expected = await expectedChecksum(entry);
  await mkdir(dirname(finalPath), { recursive: true });
  const unlock = await lockDownload(`${part}.lock`, entry.url);
  try {
    if (options.force) {
      await rm(finalPath, { force: true });
      await rm(part, { force: true });
      await rm(metaPath, { force: true });
    }
    const existing = await stat(finalPath).catch(() => undefined);
    if (existing?.isFile()) {
      const sha = await sha256File(finalPath);
      if (expected.sha256 === null || sha === expected.sha256) return { path: finalPath, sha256: sha, bytes: existing.size, cached: true, checked: expected.sha256 !== null };
      events.note?.(`${finalPath}: sha256 ${sha} does not match ${expected.sha256}; downloading it again`);
      await rm(finalPath, { force: true });
    }
    const { sha256, bytes } = await fetchToPart(entry, part, metaPath, expected.size, events);
    if (expected.size !== null && bytes !== expected.size) {
      await discard(part, metaPath);
      throw modelError(
        `${entry.url}: downloaded ${bytes} bytes but ${entry.name} has ${expected.size}; removed the partial file — run 'sam models pull ${entry.name}' again, or report it if it persists`,
      );
    }
    if (expected.sha256 !== null && sha256 !== expected.sha256) {
      await discard(part, metaPath);
      throw modelError(
        `${entry.file}: sha256 mismatch (expected ${expected.sha256}, got ${sha256}); the download is corrupt or the file changed upstream, so it was removed — run 'sam models pull ${entry.name}' again`,
      );
    }
    await rename(part, finalPath);
    await rm(metaPath, { force: true });
    if (expected.sha256 === null) {
      await recordChecksum(entry, sha256, bytes);
      events.note?.(`warning: ${entry.name} has no published checksum; recorded sha256 ${sha256} (later downloads are checked against it)`);
    }
    return { path: finalPath, sha256, bytes, cached: false, checked: expected.sha256 !== null };
  } finally {
    await unlock();
  }
}

async function discard(part: string, metaPath: string): Promise<void> {
  await rm(part, { force: true });
  await rm(metaPath, { force: true });
}

async function readMeta(metaPath: string): Promise<PartMeta | undefined> {
  const text = await readFile(metaPath, 'utf8').catch(() => undefined);
  if (text === undefined) return undefined;
  try {
    return JSON.parse(text) as PartMeta;
  } catch {
    return undefined;
  }
}

/** One download into a `.part` file and its `.part.json` meta. */
interface PartJob {
  entry: RegistryEntry;
  part: string;
  metaPath: string;
  expectedSize: number | null;
  events: DownloadEvents;
}

/** Fetch into `part` (appending when the server honours Range) and return the whole file's sha256. */
async function fetchToPart(
  entry: RegistryEntry,
  part: string,
  metaPath: string,
  expectedSize: number | null,
  events: DownloadEvents,
): Promise<{ sha256: string; bytes: number }> {
  const job: PartJob = { entry, part, metaPath, expectedSize, events };
  const { have, meta } = await resumableBytes(job);
  const res = await request(entry, rangeHeaders(have, meta));
  if (res.status === 416 && have > 0) {
    return (await completeOn416(job, res, have)) ?? fetchToPart(entry, part, metaPath, expectedSize, events);
  }
  const { from, total } = await acceptResponse(job, res, have);
  if (from === 0) {
    const newMeta: PartMeta = { url: entry.url, total, etag: res.headers.get('etag') ?? undefined, lastModified: res.headers.get('last-modified') ?? undefined };
    await writeFileAtomic(metaPath, JSON.stringify(newMeta));
  }
  // Hash the bytes already on disk so the final digest covers the whole file.
  const hash = from > 0 ? await hashFile(part, { end: from - 1 }) : createHash('sha256');
  events.start?.({ url: entry.url, total, from, resumed: from > 0 });
  if (!res.body) throw modelError(`cannot download ${entry.url}: empty response; ${OFFLINE_FIX(entry)}`);
  const received = await streamToPart(job, res.body, from, total, hash);
  if (total !== undefined && received !== total) {
    throw modelError(`download of ${entry.url} ended after ${received} of ${total} bytes; run the same command again to resume`);
  }
  return { sha256: hash.digest('hex'), bytes: received };
}

/** Bytes of `part` that can be resumed from (0 after discarding one that cannot) and its meta. */
async function resumableBytes({ entry, part, metaPath, expectedSize }: PartJob): Promise<{ have: number; meta: PartMeta | undefined }> {
  const have = (await stat(part).catch(() => undefined))?.size ?? 0;
  const meta = await readMeta(metaPath);
  if (have > 0 && (meta?.url !== entry.url || (expectedSize !== null && have > expectedSize))) {
    // Not a prefix of this file (another URL, or longer than it): start over.
    await discard(part, metaPath);
    return { have: 0, meta };
  }
  return { have, meta };
}

function rangeHeaders(have: number, meta: PartMeta | undefined): Record<string, string> {
  const headers: Record<string, string> = { 'user-agent': 'sam-cli' };
  if (have > 0) {
    headers.range = `bytes=${have}-`;
    // If-Range: a changed resource is sent whole (200) instead of a mismatched tail.
    const validator = meta?.etag && !meta.etag.startsWith('W/') ? meta.etag : meta?.lastModified;
    if (validator) headers['if-range'] = validator;
  }
  return headers;
}

async function request(entry: RegistryEntry, headers: Record<string, string>): Promise<Response> {
  try {
    return await fetch(entry.url, { headers, redirect: 'follow' });
  } catch (err) {
    throw modelError(`cannot download ${entry.url}: ${networkReason(err)}; ${OFFLINE_FIX(entry)}`, err);
  }
}

/**
 * 416 to a resume request: nothing past `have`. The partial file is the whole file when the
 * sizes agree; otherwise it is discarded and undefined tells the caller to start over.
 */
async function completeOn416({ part, metaPath, expectedSize }: PartJob, res: Response, have: number): Promise<{ sha256: string; bytes: number } | undefined> {
  await res.body?.cancel();
  const total = Number(/\/(\d+)$/.exec(res.headers.get('content-range') ?? '')?.[1] ?? NaN);
  if (total === have || expectedSize === have) return { sha256: await sha256File(part), bytes: have };
  await discard(part, metaPath);
  return undefined;
}

/**
 * Checks the status, the resumed range and the announced size. `from`: where the body starts in
 * the file (`have` for a 206, 0 for a 200); `total`: the whole file's size when the server says.
 */
async function acceptResponse({ entry, part, metaPath, expectedSize, events }: PartJob, res: Response, have: number): Promise<{ from: number; total: number | undefined }> {
  if (res.status !== 200 && res.status !== 206) {
    await res.body?.cancel();
    throw modelError(`cannot download ${entry.url}: HTTP ${res.status} ${res.statusText}; ${OFFLINE_FIX(entry)}`);
  }
  let from = 0;
  let total: number | undefined;
  if (res.status === 206) {
    const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(res.headers.get('content-range') ?? '');
    if (!m || Number(m[1]) !== have) {
      await res.body?.cancel();
      await discard(part, metaPath);
      throw modelError(`${entry.url}: the server answered the resume request with an unexpected range (${res.headers.get('content-range') ?? 'none'}); removed the partial file — run the command again`);
    }
    from = have;
    total = m[3] === '*' ? undefined : Number(m[3]);
  } else {
    const len = res.headers.get('content-length');
    total = len !== null && /^\d+$/.test(len) ? Number(len) : undefined;
    if (have > 0) events.note?.(`${entry.url}: the server does not resume downloads; starting again from 0`);
  }
  if (total !== undefined && expectedSize !== null && total !== expectedSize) {
    await res.body?.cancel();
    await discard(part, metaPath);
    throw modelError(
      `${entry.url} is ${total} bytes but ${entry.name} should be ${expectedSize}; the file changed upstream or the URL is wrong — update the registry, or download it yourself and run 'sam models convert'`,
    );
  }
  return { from, total };
}

/**
 * Writes the body into `part` from byte `from`, hashing as it goes; returns the bytes now in the
 * file. Too many bytes discard the partial file; a network error keeps it for the next run.
 */
async function streamToPart(
  { entry, part, metaPath, expectedSize, events }: PartJob,
  body: NonNullable<Response['body']>,
  from: number,
  total: number | undefined,
  hash: Hash,
): Promise<number> {
  let fh: FileHandle | undefined;
  let received = from;
  try {
    fh = await open(part, from > 0 ? 'r+' : 'w');
    let pos = from;
    for await (const chunk of body) {
      const buf = chunk as Uint8Array;
      if (expectedSize !== null && received + buf.length > expectedSize) {
        throw modelError(`${entry.url} sends more than the ${expectedSize} bytes ${entry.name} has; the file changed upstream — update the registry`);
      }
      await fh.write(buf, 0, buf.length, pos);
      pos += buf.length;
      received += buf.length;
      hash.update(buf);
      events.progress?.(received, total);
    }
    await fh.truncate(pos);
    await fh.sync();
  } catch (err) {
    if (err instanceof SamError) {
      await fh?.close();
      fh = undefined;
      await discard(part, metaPath);
      throw err;
    }
    // Keep the partial file: the next run resumes from it.
    throw modelError(
      `download of ${entry.url} interrupted after ${received} of ${total ?? '?'} bytes (${networkReason(err)}); run the same command again to resume, or ${OFFLINE_FIX(entry).replace(/^check the network connection, or /, '')}`,
      err,
    );
  } finally {
    await fh?.close();
  }
  return received;
}

/** Bytes of a partial download, for `sam models list`. */
export async function partialBytes(entry: RegistryEntry): Promise<number | undefined> {
  return (await stat(`${downloadPath(entry)}.part`).catch(() => undefined))?.size;
}
