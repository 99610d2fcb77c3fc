/**
 * The two inputs of `sam export`, read as one COCO-shaped stream of images with their annotations:
 * - a `sam auto` output folder: `<dir>/<key>.json` mask records (amg.py's format, optionally with
 *   `category_id` / `category_name`), or png-mode `<dir>/<key>/` folders that kept `rle.json`;
 * - a COCO dataset JSON (`sam auto --coco`, `sam segment --prompts --coco`, or any instances file).
 * Masks stay encoded (RLE strings or polygon lists) until an exporter decodes one at a time.
 */
import { readFile, readdir, stat } from 'node:fs/promises';
import { join, relative, resolve, sep } from 'node:path';
import sharp from 'sharp';
import { rleArea, rleToBbox } from '../core/rle.js';
import type { BoxXywh, CocoRle, UncompressedRle } from '../core/types.js';
import { collectInputs } from '../io/inputs.js';
import { PNG_MODE_RLE_FILE } from '../output/records.js';
import { inputError, usageError } from '../util/errors.js';

export interface ExportCategory {
  id: number;
  name: string;
  supercategory: string;
}

export interface ExportImage {
  id: number;
  /** Image path relative to the image root, '/'-separated, with its extension ('' when unknown). */
  file_name: string;
  width: number;
  height: number;
  /** file_name without its extension: YOLO's label path, Datumaro's item id. */
  key: string;
  /** Fields of a COCO input's image beyond the four above, kept as they are. */
  extra: Record<string, unknown>;
}

/** A COCO polygon list: rings of flat [x1, y1, x2, y2, ...]. */
export type PolygonList = number[][];

export interface ExportAnnotation {
  id: number;
  image_id: number;
  category_id: number;
  segmentation: CocoRle | UncompressedRle | PolygonList;
  area: number;
  /** COCO [x, y, w, h], w and h the pixel extent (pycocotools toBbox). */
  bbox: BoxXywh;
  iscrowd: 0 | 1;
  /** A confidence for tools that show one: COCO `score`, else SAM's predicted_iou. */
  score?: number;
  /** Every other field of the input annotation or record (SAM's scores, prompts, attributes). */
  extra: Record<string, unknown>;
}

export interface ImageEntry {
  image: ExportImage;
  annotations: ExportAnnotation[];
}

export interface ExportSource {
  kind: 'folder' | 'coco';
  /** The input path as given, for messages. */
  path: string;
  categories: ExportCategory[];
  /** COCO `info` / `licenses` of a COCO input, kept. */
  info?: unknown;
  licenses?: unknown;
  imageCount: number;
  /** Images with no known size (folder input, no masks, no --images): left out of COCO-type outputs. */
  unsized: number;
  /** Folder JSON files that were not mask records (e.g. a COCO file written into the folder). */
  skipped: string[];
  /** One image at a time, in image-id order. */
  images(): AsyncIterable<ImageEntry>;
}

export interface SourceOptions {
  /** The image root: resolves `<key>.<ext>` for folder input, sizes of mask-less images. */
  images?: string;
  /** For folder input without --images: file_name = key + this extension. */
  imageExt?: string;
}

const isInt = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v);
const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const stripExt = (name: string): string => name.replace(/\.[^./]*$/, '');

/** Fields the exporters rebuild; every other field of a record / annotation is carried in `extra`. */
const RECORD_FIELDS = new Set(['segmentation', 'area', 'bbox', 'category_id', 'category_name']);
const ANNOTATION_FIELDS = new Set(['id', 'image_id', 'category_id', 'segmentation', 'area', 'bbox', 'iscrowd']);

function checkRle(seg: unknown, where: string, size?: [number, number]): CocoRle | UncompressedRle | PolygonList {
  if (Array.isArray(seg)) {
    if (!seg.every((p) => Array.isArray(p) && p.length % 2 === 0 && p.every((c) => typeof c === 'number' && Number.isFinite(c)))) {
      throw inputError(`${where}: segmentation is a list but not of polygons [[x1, y1, x2, y2, ...], ...]; fix or regenerate the file`);
    }
    return seg as PolygonList;
  }
  if (!isObject(seg) || !Array.isArray(seg.size) || seg.size.length !== 2 || !seg.size.every(isInt)) {
    throw inputError(`${where}: segmentation is neither COCO RLE {"size": [h, w], "counts": ...} nor a polygon list; fix or regenerate the file`);
  }
  const counts = seg.counts;
  if (typeof counts !== 'string' && !(Array.isArray(counts) && counts.every(isInt))) {
    throw inputError(`${where}: segmentation.counts must be a pycocotools RLE string or a list of run lengths; fix or regenerate the file`);
  }
  if (size && (seg.size[0] !== size[0] || seg.size[1] !== size[1])) {
    throw inputError(`${where}: mask size [${seg.size.join(', ')}] differs from its image's [height, width] [${size.join(', ')}]; fix the image entry or the mask`);
  }
  return seg as unknown as CocoRle | UncompressedRle;
}

async function readJson(path: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw inputError(`${path}: cannot read (${(err as NodeJS.ErrnoException).code ?? 'error'}); check the path`, err);
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw inputError(`${path}: not valid JSON (${(err as Error).message}); regenerate the file`, err);
  }
}

/** Upright size of an image file (EXIF orientations 5-8 swap width and height, as sam auto sees it). */
async function imageSize(path: string): Promise<{ width: number; height: number } | undefined> {
  try {
    const m = await sharp(path).metadata();
    if (!m.width || !m.height) return undefined;
    return (m.orientation ?? 1) >= 5 ? { width: m.height, height: m.width } : { width: m.width, height: m.height };
  } catch {
    return undefined;
  }
}

/** key → image path under the image root, with the same keys `sam auto` gave its outputs. */
async function imageIndex(root: string): Promise<Map<string, string>> {
  const st = await stat(root).catch(() => undefined);
  if (!st?.isDirectory()) throw inputError(`--images ${root}: not a folder; give the image folder the masks were made from`);
  const index = new Map<string, string>();
  for (const item of await collectInputs([root])) index.set(item.key, item.path);
  return index;
}

// ---------------------------------------------------------------------------------------------
// COCO input

export async function openCocoSource(path: string, opts: SourceOptions): Promise<ExportSource> {
  const doc = await readJson(path);
  if (!isObject(doc) || !Array.isArray(doc.images) || !Array.isArray(doc.annotations) || !Array.isArray(doc.categories)) {
    throw inputError(`${path}: not a COCO dataset (needs "images", "annotations" and "categories" lists); give a sam auto output folder or a COCO JSON`);
  }
  const categories: ExportCategory[] = doc.categories.map((c: unknown, i: number) => {
    if (!isObject(c) || !isInt(c.id) || typeof c.name !== 'string') {
      throw inputError(`${path}: categories[${i}] needs an integer "id" and a string "name"; fix the file`);
    }
    return { id: c.id, name: c.name, supercategory: typeof c.supercategory === 'string' ? c.supercategory : c.name };
  });
  const catIds = new Set(categories.map((c) => c.id));
  const images = new Map<number, ExportImage>();
  doc.images.forEach((im: unknown, i: number) => {
    if (!isObject(im) || !isInt(im.id) || typeof im.file_name !== 'string' || !isInt(im.width) || !isInt(im.height) || im.width < 1 || im.height < 1) {
      throw inputError(`${path}: images[${i}] needs an integer "id", a string "file_name" and positive integer "width" and "height"; fix the file`);
    }
    if (images.has(im.id)) throw inputError(`${path}: images[${i}]: image id ${im.id} appears twice; fix the file`);
    const extra: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(im)) if (!['id', 'file_name', 'width', 'height'].includes(k)) extra[k] = v;
    images.set(im.id, { id: im.id, file_name: im.file_name, width: im.width, height: im.height, key: stripExt(im.file_name), extra });
  });
  // Annotation indices per image: the annotations themselves stay in the parsed document.
  const byImage = new Map<number, number[]>();
  const raw = doc.annotations as unknown[];
  raw.forEach((a, i) => {
    const where = `${path}: annotations[${i}]`;
    if (!isObject(a) || !isInt(a.id) || !isInt(a.image_id) || !isInt(a.category_id)) {
      throw inputError(`${where} needs integer "id", "image_id" and "category_id"; fix the file`);
    }
    const image = images.get(a.image_id);
    if (!image) throw inputError(`${where}: image_id ${a.image_id} is not in "images"; fix the file`);
    if (!catIds.has(a.category_id)) throw inputError(`${where}: category_id ${a.category_id} is not in "categories"; fix the file`);
    checkRle(a.segmentation, `${where} (id ${a.id})`, [image.height, image.width]);
    const list = byImage.get(a.image_id);
    if (list) list.push(i);
    else byImage.set(a.image_id, [i]);
  });
  const toAnnotation = (a: Record<string, unknown>, image: ExportImage): ExportAnnotation => {
    const segmentation = checkRle(a.segmentation, `${path}: annotation ${String(a.id)}`, [image.height, image.width]);
    const extra: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(a)) if (!ANNOTATION_FIELDS.has(k)) extra[k] = v;
    const isRle = !Array.isArray(segmentation);
    const bbox = Array.isArray(a.bbox) && a.bbox.length === 4 && a.bbox.every((v) => typeof v === 'number') ? (a.bbox as BoxXywh) : undefined;
    const score = typeof a.score === 'number' ? a.score : typeof a.predicted_iou === 'number' ? a.predicted_iou : undefined;
    return {
      id: a.id as number,
      image_id: image.id,
      category_id: a.category_id as number,
      segmentation,
      // RLE masks get the mask's own area and tight box; polygons keep the file's.
      area: isRle ? rleArea(segmentation) : typeof a.area === 'number' ? a.area : 0,
      bbox: isRle ? rleToBbox(segmentation) : (bbox ?? [0, 0, 0, 0]),
      iscrowd: a.iscrowd === 1 || a.iscrowd === true ? 1 : 0,
      score,
      extra,
    };
  };
  const order = [...images.values()].sort((a, b) => a.id - b.id);
  return {
    kind: 'coco',
    path,
    categories: [...categories].sort((a, b) => a.id - b.id),
    info: doc.info,
    licenses: doc.licenses,
    imageCount: order.length,
    unsized: 0,
    skipped: [],
    async *images() {
      for (const image of order) {
        const anns = (byImage.get(image.id) ?? []).map((i) => toAnnotation(raw[i] as Record<string, unknown>, image));
        yield { image, annotations: anns };
      }
    },
  };
}

// ---------------------------------------------------------------------------------------------
// sam auto output folder

interface FolderItem {
  key: string;
  /** The records file: `<key>.json`, or `<key>/rle.json` in png mode. */
  file: string;
}

/** Every records file under `dir` (hidden entries and temp files skipped), sorted by key. */
async function walkRecords(dir: string, root: string, out: FolderItem[]): Promise<void> {
  const entries = (await readdir(dir, { withFileTypes: true })).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (const e of entries) {
    if (e.name.startsWith('.')) continue;
    const p = join(dir, e.name);
    const key = relative(root, p).split(sep).join('/');
    if (e.isDirectory()) {
      const names = await readdir(p);
      if (names.includes('metadata.csv')) {
        if (!names.includes(PNG_MODE_RLE_FILE)) {
          throw inputError(
            `${p}: a png-mode output without ${PNG_MODE_RLE_FILE}; rerun sam auto with --coco FILE (which keeps ${PNG_MODE_RLE_FILE}) or with --output-mode coco_rle`,
          );
        }
        out.push({ key, file: join(p, PNG_MODE_RLE_FILE) });
      } else {
        await walkRecords(p, root, out);
      }
    } else if (e.isFile() && e.name.endsWith('.json')) {
      out.push({ key: key.slice(0, -'.json'.length), file: p });
    }
  }
}

/** A records file's parsed array, or undefined when the JSON is not an array (not records). */
async function readRecords(file: string): Promise<Record<string, unknown>[] | undefined> {
  const parsed = await readJson(file);
  if (!Array.isArray(parsed)) return undefined;
  parsed.forEach((r: unknown, i: number) => {
    if (!isObject(r)) throw inputError(`${file}: record ${i} is not an object; regenerate the file with sam auto`);
  });
  return parsed as Record<string, unknown>[];
}

/** A record's category: `category_id` (integer >= 1) and `category_name`, default 1 "object". */
function recordCategory(r: Record<string, unknown>, where: string): { id: number; name?: string } {
  if (r.category_id === undefined) return { id: 1, name: typeof r.category_name === 'string' ? r.category_name : 'object' };
  if (!isInt(r.category_id) || r.category_id < 1) throw inputError(`${where}: category_id must be an integer >= 1 (got ${JSON.stringify(r.category_id)}); fix the file`);
  return { id: r.category_id, name: typeof r.category_name === 'string' ? r.category_name : undefined };
}

export async function openFolderSource(dir: string, opts: SourceOptions): Promise<ExportSource> {
  const items: FolderItem[] = [];
  await walkRecords(resolve(dir), resolve(dir), items);
  const index = opts.images ? await imageIndex(opts.images) : undefined;
  // First pass: which files are records, image sizes, categories. The second (images()) reads again.
  const names = new Map<number, string | undefined>();
  const kept: (FolderItem & { size?: [number, number] })[] = [];
  const skipped: string[] = [];
  for (const item of items) {
    const records = await readRecords(item.file);
    if (!records) {
      skipped.push(item.file);
      continue;
    }
    let size: [number, number] | undefined;
    records.forEach((r, i) => {
      const where = `${item.file}: record ${i}`;
      const seg = checkRle(r.segmentation, where);
      if (Array.isArray(seg)) throw inputError(`${where}: segmentation must be COCO RLE in sam auto records; regenerate the file with sam auto`);
      size ??= [seg.size[0], seg.size[1]];
      if (seg.size[0] !== size[0] || seg.size[1] !== size[1]) throw inputError(`${where}: mask size differs from the file's other masks; regenerate the file`);
      const c = recordCategory(r, where);
      const prev = names.get(c.id);
      if (prev !== undefined && c.name !== undefined && prev !== c.name) {
        throw inputError(`${where}: category ${c.id} is named both '${prev}' and '${c.name}'; make the names agree`);
      }
      if (prev === undefined) names.set(c.id, c.name);
    });
    kept.push({ ...item, size });
  }
  if (kept.length === 0) {
    throw inputError(`${dir}: no sam auto mask records (<key>.json) found; give the --out folder of sam auto or a COCO JSON file`);
  }
  if (index) {
    const missing = kept.filter((k) => !index.has(k.key));
    if (missing.length > 0) {
      throw inputError(`--images ${opts.images}: no image for '${missing[0].key}' (and ${missing.length - 1} more); give the folder sam auto ran on`);
    }
  }
  const categories = [...names.entries()]
    .sort((a, b) => a[0] - b[0])
    .map(([id, name]) => {
      const n = name ?? (id === 1 ? 'object' : `category-${id}`);
      return { id, name: n, supercategory: n };
    });
  const imageRoot = opts.images ? resolve(opts.images) : undefined;
  const fileNameOf = (key: string): string => {
    const p = index?.get(key);
    if (p && imageRoot) return relative(imageRoot, p).split(sep).join('/');
    return opts.imageExt ? `${key}${opts.imageExt.startsWith('.') ? '' : '.'}${opts.imageExt}` : '';
  };
  // Sizes of mask-less images come from the image files, when known.
  const sizes = new Map<string, [number, number] | undefined>();
  let unsized = 0;
  for (const k of kept) {
    let size = k.size;
    if (!size && index) {
      const s = await imageSize(index.get(k.key) as string);
      if (s) size = [s.height, s.width];
    }
    if (!size) unsized++;
    sizes.set(k.key, size);
  }
  return {
    kind: 'folder',
    path: dir,
    categories,
    imageCount: kept.length,
    unsized,
    skipped,
    async *images() {
      let annId = 0;
      for (let i = 0; i < kept.length; i++) {
        const item = kept[i];
        const size = sizes.get(item.key);
        const records = (await readRecords(item.file)) ?? [];
        const image: ExportImage = { id: i + 1, file_name: fileNameOf(item.key), width: size?.[1] ?? 0, height: size?.[0] ?? 0, key: item.key, extra: {} };
        const annotations = records.map((r, j): ExportAnnotation => {
          const seg = checkRle(r.segmentation, `${item.file}: record ${j}`) as CocoRle | UncompressedRle;
          const extra: Record<string, unknown> = {};
          for (const [k, v] of Object.entries(r)) if (!RECORD_FIELDS.has(k)) extra[k] = v;
          return {
            id: ++annId,
            image_id: image.id,
            category_id: recordCategory(r, item.file).id,
            segmentation: seg,
            area: rleArea(seg),
            bbox: rleToBbox(seg),
            iscrowd: 0,
            score: typeof r.predicted_iou === 'number' ? r.predicted_iou : undefined,
            extra,
          };
        });
        yield { image, annotations };
      }
    },
  };
}

/** The source behind `input`: a folder (sam auto output) or a COCO JSON file. */
export async function openSource(input: string, opts: SourceOptions): Promise<ExportSource> {
  const st = await stat(input).catch(() => undefined);
  if (!st) throw inputError(`${input}: no such file or folder; give a sam auto output folder or a COCO JSON file`);
  if (st.isDirectory()) return openFolderSource(input, opts);
  if (opts.imageExt && !opts.images) throw usageError('--image-ext applies to folder input only; a COCO file names its images');
  return openCocoSource(input, opts);
}
