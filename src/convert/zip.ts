/**
 * Read-only zip access for PyTorch checkpoints: the central directory (ZIP64 included) is parsed
 * once, and each entry is read on demand with positioned reads, so a multi-GB checkpoint is never
 * held in one Buffer.
 */
import type { FileHandle } from 'node:fs/promises';
import { inflateRawSync } from 'node:zlib';
import { inputError } from '../util/errors.js';

export interface ZipEntry {
  name: string;
  /** 0 = stored, 8 = deflate. */
  method: number;
  compressedSize: number;
  size: number;
  localHeaderOffset: number;
}

const SIG_LOCAL = 0x04034b50;
const SIG_CENTRAL = 0x02014b50;
const SIG_EOCD = 0x06054b50;
const SIG_ZIP64_LOCATOR = 0x07064b50;
const SIG_ZIP64_EOCD = 0x06064b50;
const EOCD_SIZE = 22;
const MAX_COMMENT = 0xffff;
/** fs.read moves at most 2 GiB - 1 per call; larger entries are read in chunks. */
const MAX_READ = 1 << 30;

/** Reads exactly `length` bytes at `position` into `target`, or fails naming the truncation. */
export async function readFully(
  fh: FileHandle,
  target: Uint8Array,
  position: number,
  file: string,
  what: string,
): Promise<void> {
  let done = 0;
  while (done < target.length) {
    const length = Math.min(MAX_READ, target.length - done);
    const { bytesRead } = await fh.read(target, done, length, position + done);
    if (bytesRead === 0) {
      throw inputError(
        `${file}: the file is truncated (${what} ends at byte ${position + target.length}, the file has fewer bytes); download it again`,
      );
    }
    done += bytesRead;
  }
}

function u64(view: DataView, offset: number): number {
  const v = view.getBigUint64(offset, true);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new RangeError('64-bit zip field out of range');
  return Number(v);
}

export class ZipReader {
  readonly entries: Map<string, ZipEntry>;
  private readonly fh: FileHandle;
  private readonly file: string;
  private readonly fileSize: number;

  private constructor(fh: FileHandle, file: string, fileSize: number, entries: Map<string, ZipEntry>) {
    this.fh = fh;
    this.file = file;
    this.fileSize = fileSize;
    this.entries = entries;
  }

  /** Parses the central directory of an open file; the caller keeps ownership of `fh`. */
  static async open(fh: FileHandle, file: string, fileSize: number): Promise<ZipReader> {
    const damaged = (why: string) =>
      inputError(`${file}: the zip archive is truncated or damaged (${why}); download the checkpoint again`);

    // The end-of-central-directory record sits in the last 22 + comment bytes.
    const tailLen = Math.min(fileSize, EOCD_SIZE + MAX_COMMENT + 20);
    const tailStart = fileSize - tailLen;
    const tail = new Uint8Array(tailLen);
    await readFully(fh, tail, tailStart, file, 'the zip trailer');
    const tv = new DataView(tail.buffer);
    let eocd = -1;
    for (let i = tailLen - EOCD_SIZE; i >= 0; i--) {
      // A candidate must account exactly for the bytes after it (its comment), so stray
      // signature bytes inside stored data are not mistaken for the record.
      if (tv.getUint32(i, true) === SIG_EOCD && i + EOCD_SIZE + tv.getUint16(i + 20, true) === tailLen) {
        eocd = i;
        break;
      }
    }
    if (eocd < 0) throw damaged('no end-of-central-directory record');

    let count = tv.getUint16(eocd + 10, true);
    let cdSize = tv.getUint32(eocd + 12, true);
    let cdOffset = tv.getUint32(eocd + 16, true);
    const loc = eocd - 20;
    if (loc >= 0 && tv.getUint32(loc, true) === SIG_ZIP64_LOCATOR) {
      const z64Offset = u64(tv, loc + 8);
      const rec = new Uint8Array(56);
      if (z64Offset + 56 > fileSize) throw damaged('ZIP64 record out of range');
      await readFully(fh, rec, z64Offset, file, 'the ZIP64 directory record');
      const rv = new DataView(rec.buffer);
      if (rv.getUint32(0, true) !== SIG_ZIP64_EOCD) throw damaged('bad ZIP64 directory record');
      count = u64(rv, 32);
      cdSize = u64(rv, 40);
      cdOffset = u64(rv, 48);
    }
    if (cdOffset + cdSize > fileSize) throw damaged('central directory out of range');

    const cd = new Uint8Array(cdSize);
    await readFully(fh, cd, cdOffset, file, 'the zip central directory');
    const cv = new DataView(cd.buffer);
    const entries = new Map<string, ZipEntry>();
    const decoder = new TextDecoder('utf-8');
    let p = 0;
    for (let n = 0; n < count; n++) {
      if (p + 46 > cdSize || cv.getUint32(p, true) !== SIG_CENTRAL) throw damaged('bad central directory entry');
      const flags = cv.getUint16(p + 8, true);
      const method = cv.getUint16(p + 10, true);
      let compressedSize = cv.getUint32(p + 20, true);
      let size = cv.getUint32(p + 24, true);
      const nameLen = cv.getUint16(p + 28, true);
      const extraLen = cv.getUint16(p + 30, true);
      const commentLen = cv.getUint16(p + 32, true);
      let localHeaderOffset = cv.getUint32(p + 42, true);
      const name = decoder.decode(cd.subarray(p + 46, p + 46 + nameLen));
      // ZIP64 extended information: 64-bit values for exactly the fields saturated above, in this order.
      let e = p + 46 + nameLen;
      const extraEnd = e + extraLen;
      while (e + 4 <= extraEnd) {
        const id = cv.getUint16(e, true);
        const len = cv.getUint16(e + 2, true);
        if (id === 0x0001) {
          let q = e + 4;
          if (size === 0xffffffff) { size = u64(cv, q); q += 8; }
          if (compressedSize === 0xffffffff) { compressedSize = u64(cv, q); q += 8; }
          if (localHeaderOffset === 0xffffffff) { localHeaderOffset = u64(cv, q); q += 8; }
        }
        e += 4 + len;
      }
      if (flags & 1) throw inputError(`${file}: zip entry ${name} is encrypted; sam reads only plain torch.save archives`);
      entries.set(name, { name, method, compressedSize, size, localHeaderOffset });
      p = extraEnd + commentLen;
    }
    return new ZipReader(fh, file, fileSize, entries);
  }

  /** Byte offset of an entry's data: the local header's extra field differs from the central one (torch pads it to align storages). */
  async dataOffset(entry: ZipEntry): Promise<number> {
    const header = new Uint8Array(30);
    await readFully(this.fh, header, entry.localHeaderOffset, this.file, `the header of ${entry.name}`);
    const hv = new DataView(header.buffer);
    if (hv.getUint32(0, true) !== SIG_LOCAL) {
      throw inputError(`${this.file}: the zip archive is damaged (bad local header for ${entry.name}); download the checkpoint again`);
    }
    return entry.localHeaderOffset + 30 + hv.getUint16(26, true) + hv.getUint16(28, true);
  }

  /**
   * Reads an entry's uncompressed bytes into `target` (whose length must equal entry.size):
   * stored entries go straight from the file into it, deflated ones are inflated.
   */
  async readInto(entry: ZipEntry, target: Uint8Array): Promise<void> {
    const start = await this.dataOffset(entry);
    if (start + entry.compressedSize > this.fileSize) {
      throw inputError(
        `${this.file}: the file is truncated (${entry.name} ends at byte ${start + entry.compressedSize}, the file has ${this.fileSize}); download it again`,
      );
    }
    if (entry.method === 0) {
      await readFully(this.fh, target, start, this.file, entry.name);
      return;
    }
    if (entry.method !== 8) {
      throw inputError(`${this.file}: zip entry ${entry.name} uses compression method ${entry.method}; only stored and deflate are supported, re-save with torch.save`);
    }
    const packed = new Uint8Array(entry.compressedSize);
    await readFully(this.fh, packed, start, this.file, entry.name);
    let raw: Buffer;
    try {
      raw = inflateRawSync(packed);
    } catch (err) {
      throw inputError(`${this.file}: zip entry ${entry.name} is damaged (${(err as Error).message}); download the checkpoint again`, err);
    }
    if (raw.length !== target.length) {
      throw inputError(`${this.file}: zip entry ${entry.name} inflates to ${raw.length} bytes, expected ${target.length}; download the checkpoint again`);
    }
    target.set(raw);
  }

  async read(entry: ZipEntry): Promise<Uint8Array> {
    const out = new Uint8Array(entry.size);
    await this.readInto(entry, out);
    return out;
  }
}
