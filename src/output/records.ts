/**
 * Writers and readers of `sam auto` outputs, in the formats of SAM's scripts/amg.py:
 * - coco_rle: `<out>/<key>.json`, what `amg.py --convert-to-rle` writes (json.dump of the
 *   generator's records, so Python's separators and float formatting are reproduced);
 * - uncompressed_rle: the same records with `counts` a list of run lengths (the generator's
 *   output_mode of that name);
 * - png: `<out>/<key>/<i>.png` (0/255) and `metadata.csv`, amg.py's write_masks_to_folder.
 */
import { open, readFile, stat, writeFile, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import sharp from 'sharp';
import { compactCounts, compactToCoco, decodeRle, rleToString, type AnyRle } from '../core/rle.js';
import type { CocoRle, CompactRle, MaskRecord, UncompressedRle } from '../core/types.js';
import { produceFileAtomic } from '../util/atomic.js';
import type { RgbImage } from '../io/image.js';
import { maskToPng, overlayColour, paintMask } from './masks.js';
import { produceDirAtomic } from '../util/atomic.js';

export type OutputMode = 'coco_rle' | 'uncompressed_rle' | 'png';
export const OUTPUT_MODES: readonly OutputMode[] = ['coco_rle', 'uncompressed_rle', 'png'];

/** amg.py write_masks_to_folder's header. */
export const METADATA_HEADER =
  'id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,predicted_iou,stability_score,crop_box_x0,crop_box_y0,crop_box_w,crop_box_h';

/** Name of the coco_rle records kept in a png-mode folder (for building a COCO dataset). */
export const PNG_MODE_RLE_FILE = 'rle.json';

/**
 * Python's repr of a float (what json.dump and str() write): shortest round-trip digits, always
 * with a '.0' or exponent, exponent form when the decimal exponent is < -4 or >= 16.
 * Non-finite values are written as null: Python would write NaN, which JSON readers refuse.
 */
export function pyFloat(x: number): string {
  if (!Number.isFinite(x)) return 'null';
  if (x === 0) return Object.is(x, -0) ? '-0.0' : '0.0';
  const [mant, expText] = x.toExponential().split('e');
  const exp = Number(expText);
  const sign = mant.startsWith('-') ? '-' : '';
  const digits = mant.replace('-', '').replace('.', '');
  if (exp < -4 || exp >= 16) {
    const m = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
    return `${sign}${m}e${exp < 0 ? '-' : '+'}${String(Math.abs(exp)).padStart(2, '0')}`;
  }
  if (exp < 0) return `${sign}0.${'0'.repeat(-exp - 1)}${digits}`;
  const intPart = digits.length > exp + 1 ? digits.slice(0, exp + 1) : digits.padEnd(exp + 1, '0');
  return `${sign}${intPart}.${digits.slice(exp + 1) || '0'}`;
}

const ints = (v: ArrayLike<number>): string => `[${Array.prototype.join.call(v, ', ')}]`;

/** A record's JSON up to its counts, and from its counts on (Python's json.dump, same key order). */
function recordJsonParts(r: MaskRecord<unknown>, size: ArrayLike<number>): [string, string] {
  const points = `[${r.point_coords.map((p) => `[${pyFloat(p[0])}, ${pyFloat(p[1])}]`).join(', ')}]`;
  const box = r.floatBoxes ? (v: ArrayLike<number>): string => `[${Array.from(v, pyFloat).join(', ')}]` : ints;
  return [
    `{"segmentation": {"size": ${ints(size)}, "counts": `,
    `}, "area": ${r.area}, "bbox": ${box(r.bbox)}, "predicted_iou": ${pyFloat(r.predicted_iou)}, ` +
      `"point_coords": ${points}, "stability_score": ${pyFloat(r.stability_score)}, "crop_box": ${box(r.crop_box)}}`,
  ];
}

/** One record as Python's json.dump writes the generator's dict (same key order). */
function recordJson(r: MaskRecord<AnyRle>): string {
  const s = r.segmentation;
  const counts = 'bytes' in s ? JSON.stringify(compactToCoco(s).counts) : typeof s.counts === 'string' ? JSON.stringify(s.counts) : ints(s.counts);
  const [head, tail] = recordJsonParts(r, s.size);
  return head + counts + tail;
}

/** The per-image JSON document: an array of mask records, as amg.py writes it (no trailing newline). */
export function recordsToJson(records: readonly MaskRecord<AnyRle>[]): string {
  return `[${records.map(recordJson).join(', ')}]`;
}

const BACKSLASH = 0x5c;
const QUOTE = 0x22;

/**
 * The JSON string of compact counts, quotes included, as bytes: pycocotools' characters are
 * 48..111, of which only the backslash needs escaping (JSON.stringify writes it as two).
 */
function compactCountsJson(bytes: Uint8Array): Uint8Array {
  let escapes = 0;
  for (let i = 0; i < bytes.length; i++) if (bytes[i] === BACKSLASH) escapes++;
  const out = new Uint8Array(bytes.length + escapes + 2);
  out[0] = QUOTE;
  if (escapes === 0) {
    out.set(bytes, 1);
  } else {
    let p = 1;
    for (let i = 0; i < bytes.length; i++) {
      const c = bytes[i];
      if (c === BACKSLASH) out[p++] = BACKSLASH;
      out[p++] = c;
    }
  }
  out[out.length - 1] = QUOTE;
  return out;
}

/** Buffered writes to an open file, flushed every ~1 MiB: memory holds one chunk, not the document. */
class ChunkedWriter {
  private parts: Uint8Array[] = [];
  private size = 0;
  constructor(private readonly fh: FileHandle) {}

  async text(s: string): Promise<void> {
    await this.bytes(Buffer.from(s, 'utf8'));
  }

  async bytes(b: Uint8Array): Promise<void> {
    this.parts.push(b);
    this.size += b.length;
    if (this.size >= 1 << 20) await this.flush();
  }

  async flush(): Promise<void> {
    if (this.size === 0) return;
    const buf = this.parts.length === 1 ? this.parts[0] : Buffer.concat(this.parts, this.size);
    this.parts = [];
    this.size = 0;
    let off = 0;
    while (off < buf.length) off += (await this.fh.write(buf, off, buf.length - off)).bytesWritten;
  }
}

/** Uncompressed counts written as `[a, b, ...]`, a slice of runs at a time. */
async function writeCountsList(w: ChunkedWriter, counts: ArrayLike<number>): Promise<void> {
  const SLICE = 1 << 16;
  await w.text('[');
  for (let i = 0; i < counts.length; i += SLICE) {
    const part = Array.prototype.slice.call(counts, i, Math.min(counts.length, i + SLICE)) as number[];
    await w.text((i > 0 ? ', ' : '') + part.join(', '));
  }
  await w.text(']');
}

/**
 * Write the per-image JSON document (what recordsToJson gives, byte for byte) to `file`, one
 * record at a time: coco_rle counts go out as the compact bytes they are held in, uncompressed
 * counts are decoded per mask. `sync` fsyncs before closing.
 */
async function writeRecordsFile(file: string, records: readonly MaskRecord<CompactRle>[], mode: 'coco_rle' | 'uncompressed_rle', sync: boolean): Promise<void> {
  const fh = await open(file, 'w');
  try {
    const w = new ChunkedWriter(fh);
    await w.text('[');
    for (let i = 0; i < records.length; i++) {
      const r = records[i];
      const [head, tail] = recordJsonParts(r, r.segmentation.size);
      await w.text((i > 0 ? ', ' : '') + head);
      if (mode === 'coco_rle') await w.bytes(compactCountsJson(r.segmentation.bytes));
      else await writeCountsList(w, compactCounts(r.segmentation));
      await w.text(tail);
    }
    await w.text(']');
    await w.flush();
    if (sync) await fh.sync();
  } finally {
    await fh.close();
  }
}

/** amg.py write_masks_to_folder's metadata.csv (rows joined by '\n', no trailing newline). */
export function metadataCsv(records: readonly MaskRecord<unknown>[]): string {
  const rows = [METADATA_HEADER];
  records.forEach((r, i) => {
    const p = r.point_coords[0];
    rows.push(
      [i, r.area, ...r.bbox, pyFloat(p[0]), pyFloat(p[1]), pyFloat(r.predicted_iou), pyFloat(r.stability_score), ...r.crop_box].join(','),
    );
  });
  return rows.join('\n');
}

export function toCocoRecords(records: readonly MaskRecord<UncompressedRle | CompactRle>[]): MaskRecord<CocoRle>[] {
  return records.map((r) => {
    const seg = r.segmentation;
    return { ...r, segmentation: 'bytes' in seg ? compactToCoco(seg) : { size: seg.size, counts: rleToString(seg.counts) } };
  });
}

/** PNGs encoded concurrently by sharp's thread pool, few at a time so memory stays small. */
const PNG_CONCURRENCY = 4;

/** The png-mode folder, produced whole in a hidden temp folder and renamed into place. */
export async function writePngFolder(dir: string, records: readonly MaskRecord<CompactRle>[], keepRle: boolean): Promise<void> {
  await produceDirAtomic(dir, async (tmp) => {
    for (let start = 0; start < records.length; start += PNG_CONCURRENCY) {
      const batch = records.slice(start, start + PNG_CONCURRENCY);
      await Promise.all(
        batch.map((r, j) => {
          const mask = decodeRle(r.segmentation);
          return maskToPng(mask, { compressionLevel: 3, adaptiveFiltering: false }).toFile(join(tmp, `${start + j}.png`));
        }),
      );
    }
    // Plain writes: the folder as a whole is renamed into place.
    if (keepRle) await writeRecordsFile(join(tmp, PNG_MODE_RLE_FILE), records, 'coco_rle', false);
    await writeFile(join(tmp, 'metadata.csv'), metadataCsv(records));
  });
}

/** Per-image records in the JSON modes, written atomically (temp file, fsync, rename), record by record. */
export async function writeRecordsJson(path: string, records: readonly MaskRecord<CompactRle>[], mode: 'coco_rle' | 'uncompressed_rle'): Promise<void> {
  await produceFileAtomic(path, (tmp) => writeRecordsFile(tmp, records, mode, true), '');
}

/**
 * The image with every mask blended in its colour and outlined, largest first so small masks
 * stay visible. Masks are decoded one at a time and painted within their box.
 */
export async function writeAutoOverlay(path: string, image: RgbImage, records: readonly MaskRecord<AnyRle>[]): Promise<void> {
  const { width: w, height: h } = image;
  const px = Uint8Array.from(image.data);
  const order = records.map((_, i) => i).sort((a, b) => records[b].area - records[a].area || a - b);
  order.forEach((idx, n) => {
    const r = records[idx];
    // bbox is SAM's XYWH of an inclusive-max box: x0 + bw is the last column.
    const [bx, by, bw, bh] = r.bbox;
    paintMask(px, w, h, decodeRle(r.segmentation).data, overlayColour(n), [bx, by, bx + bw, by + bh]);
  });
  await produceFileAtomic(path, (tmp) => sharp(px, { raw: { width: w, height: h, channels: 3 } }).png().toFile(tmp));
}

/** Where an image's outputs go: `<out>/<key>.json`, or the folder `<out>/<key>/` in png mode. */
export function outputPathFor(outDir: string, key: string, mode: OutputMode): string {
  return mode === 'png' ? join(outDir, key) : join(outDir, `${key}.json`);
}

/** The coco_rle records of an image's output, whichever mode wrote it (png mode: its rle.json). */
export async function readCocoRecords(outDir: string, key: string, mode: OutputMode): Promise<MaskRecord<CocoRle>[]> {
  const path = mode === 'png' ? join(outDir, key, PNG_MODE_RLE_FILE) : outputPathFor(outDir, key, mode);
  const parsed = JSON.parse(await readFile(path, 'utf8')) as MaskRecord<CocoRle | UncompressedRle>[];
  if (!Array.isArray(parsed)) throw new Error(`${path}: not an array of mask records`);
  return parsed.map((r) =>
    typeof r.segmentation.counts === 'string'
      ? (r as MaskRecord<CocoRle>)
      : { ...r, segmentation: { size: r.segmentation.size, counts: rleToString(r.segmentation.counts) } },
  );
}

const exists = (path: string): Promise<boolean> =>
  stat(path).then(
    () => true,
    () => false,
  );

/**
 * Whether an earlier run finished this image's output (outputs are renamed into place whole, so
 * presence means complete; the JSON is still parsed to catch damage done by other tools, and its
 * counts type must fit the mode asked for).
 */
export async function isOutputComplete(outDir: string, key: string, mode: OutputMode, keepRle: boolean): Promise<boolean> {
  const path = outputPathFor(outDir, key, mode);
  if (mode === 'png') {
    return (await exists(join(path, 'metadata.csv'))) && (!keepRle || (await exists(join(path, PNG_MODE_RLE_FILE))));
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(await readFile(path, 'utf8'));
  } catch {
    return false;
  }
  if (!Array.isArray(parsed)) return false;
  if (parsed.length === 0) return true;
  const counts = (parsed[0] as { segmentation?: { counts?: unknown } }).segmentation?.counts;
  return mode === 'coco_rle' ? typeof counts === 'string' : Array.isArray(counts);
}
