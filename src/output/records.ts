/**
 * Writers and readers of `sam auto` outputs, in the formats of SAM's scripts/amg.py:
 * - coco_rle: `<out>/<key>.json`, what `amg.py --convert-to-rle` writes (json.dump of the
 *   generator's records, so Python's separators and float formatting are reproduced);
 * - uncompressed_rle: the same records with `counts` a list of run lengths (the generator's
 *   output_mode of that name);
 * - png: `<out>/<key>/<i>.png` (0/255) and `metadata.csv`, amg.py's write_masks_to_folder.
 */
import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import sharp from 'sharp';
import { decodeRle, rleToString } from '../core/rle.js';
import type { CocoRle, MaskRecord, UncompressedRle } from '../core/types.js';
import { produceFileAtomic, writeFileAtomic } from '../util/atomic.js';
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

const ints = (v: readonly number[]): string => `[${v.join(', ')}]`;

/** One record as Python's json.dump writes the generator's dict (same key order). */
function recordJson(r: MaskRecord<CocoRle | UncompressedRle>): string {
  const s = r.segmentation;
  const counts = typeof s.counts === 'string' ? JSON.stringify(s.counts) : ints(s.counts);
  const seg = `{"size": ${ints(s.size)}, "counts": ${counts}}`;
  const points = `[${r.point_coords.map((p) => `[${pyFloat(p[0])}, ${pyFloat(p[1])}]`).join(', ')}]`;
  return (
    `{"segmentation": ${seg}, "area": ${r.area}, "bbox": ${ints(r.bbox)}, "predicted_iou": ${pyFloat(r.predicted_iou)}, ` +
    `"point_coords": ${points}, "stability_score": ${pyFloat(r.stability_score)}, "crop_box": ${ints(r.crop_box)}}`
  );
}

/** The per-image JSON document: an array of mask records, as amg.py writes it (no trailing newline). */
export function recordsToJson(records: readonly MaskRecord<CocoRle | UncompressedRle>[]): string {
  return `[${records.map(recordJson).join(', ')}]`;
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

export function toCocoRecords(records: readonly MaskRecord<UncompressedRle>[]): MaskRecord<CocoRle>[] {
  return records.map((r) => ({ ...r, segmentation: { size: r.segmentation.size, counts: rleToString(r.segmentation.counts) } }));
}

/** PNGs encoded concurrently by sharp's thread pool, few at a time so memory stays small. */
const PNG_CONCURRENCY = 4;

/** The png-mode folder, produced whole in a hidden temp folder and renamed into place. */
export async function writePngFolder(dir: string, records: readonly MaskRecord<UncompressedRle>[], keepRle: boolean): Promise<void> {
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
    if (keepRle) await writeFile(join(tmp, PNG_MODE_RLE_FILE), recordsToJson(toCocoRecords(records)));
    await writeFile(join(tmp, 'metadata.csv'), metadataCsv(records));
  });
}

/** Per-image records in the JSON modes, written atomically. */
export async function writeRecordsJson(path: string, records: readonly MaskRecord<UncompressedRle>[], mode: 'coco_rle' | 'uncompressed_rle'): Promise<void> {
  await writeFileAtomic(path, recordsToJson(mode === 'coco_rle' ? toCocoRecords(records) : records));
}

/**
 * The image with every mask blended in its colour and outlined, largest first so small masks
 * stay visible. Masks are decoded one at a time and painted within their box.
 */
export async function writeAutoOverlay(path: string, image: RgbImage, records: readonly MaskRecord<UncompressedRle>[]): Promise<void> {
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
