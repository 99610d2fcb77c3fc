/**
 * `sam export FORMAT`: a sam auto output folder or a COCO dataset → COCO polygons, YOLO
 * segmentation labels, Label Studio pre-annotation tasks, or a COCO 1.0 file for CVAT.
 * Masks are decoded one at a time; every output is written to a temp sibling and renamed into
 * place (src/util/atomic.ts), so a failed export leaves the old output or none.
 */
import { mkdir, open, readdir, stat, symlink, writeFile, type FileHandle } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import YAML from 'yaml';
import { uncompressedToCoco } from '../core/rle.js';
import type { CocoRle, UncompressedRle } from '../core/types.js';
import { produceDirAtomic, produceFileAtomic } from '../util/atomic.js';
import { inputError, outputError, usageError } from '../util/errors.js';
import { packageVersion } from '../util/package.js';
import { encodeLabelStudioRle } from '../core/ls-rle.js';
import { decodeRleCrop, rasterizePolygons, type MaskCrop } from '../core/mask-crop.js';
import { maskPolygons, mergeMultiSegment } from '../core/polygons.js';
import { openSource, type ExportAnnotation, type ExportCategory, type ExportImage, type ExportSource, type PolygonList } from './source.js';

export const EXPORT_FORMATS = ['coco-polygons', 'yolo', 'labelstudio', 'cvat'] as const;
export type ExportFormat = (typeof EXPORT_FORMATS)[number];

export interface ExportOptions {
  out: string;
  /** Douglas-Peucker tolerance in pixels for every polygon output (0: exact pixel outline). */
  tolerance: number;
  /** Masks with holes in polygon COCO outputs: outer outline only ('fill') or kept as RLE ('rle'). */
  holes: 'fill' | 'rle';
  labelstudioMode: 'polygons' | 'brush';
  cvatMode: 'rle' | 'polygons';
  images?: string;
  imageExt?: string;
  imageUrlPrefix?: string;
  modelVersion: string;
}

export const DEFAULT_TOLERANCE = 1;

export interface ExportSummary {
  format: ExportFormat;
  images: number;
  annotations: number;
  /** Files and folders written. */
  written: string[];
  /** Masks whose holes a polygon output filled. */
  holesFilled: number;
  /** Masks of several pieces (several polygons, or one bridged YOLO polygon). */
  multiPiece: number;
  /** Masks kept as RLE (--holes rle). */
  keptRle: number;
  /** Empty masks and polygons under 3 points, left out. */
  dropped: number;
  notes: string[];
}

/** Flat rings of one annotation: traced from its mask, or a COCO input's own polygons (pieces under 3 points dropped). */
interface Outline {
  rings: number[][];
  holePixels: number;
}

function outlineOf(ann: ExportAnnotation, tolerance: number): Outline {
  if (Array.isArray(ann.segmentation)) return { rings: ann.segmentation.filter((p) => p.length >= 6), holePixels: 0 };
  const m = maskPolygons(ann.segmentation, tolerance);
  return { rings: m.rings.map((r) => Array.from(r)), holePixels: m.holePixels };
}

/** The mask of an annotation as a crop: RLE decoded, or a COCO input's polygons filled (their union, as pycocotools merges them). */
function cropOf(ann: ExportAnnotation, image: ExportImage): MaskCrop | undefined {
  if (!Array.isArray(ann.segmentation)) return decodeRleCrop(ann.segmentation);
  const { width: w, height: h } = image;
  const data = new Uint8Array(w * h);
  for (const ring of ann.segmentation) {
    const part = rasterizePolygons([ring], w, h);
    for (let i = 0; i < data.length; i++) data[i] |= part[i];
  }
  return data.includes(1) ? { data, w, h, x0: 0, y0: 0, imageW: w, imageH: h } : undefined;
}

const compressed = (seg: CocoRle | UncompressedRle): CocoRle => (typeof seg.counts === 'string' ? (seg as CocoRle) : uncompressedToCoco(seg as UncompressedRle));

/** Buffered text writes to an open file (~1 MiB at a time). */
class TextWriter {
  private parts: string[] = [];
  private size = 0;
  constructor(private readonly fh: FileHandle) {}
  async write(s: string): Promise<void> {
    this.parts.push(s);
    this.size += s.length;
    if (this.size >= 1 << 20) await this.flush();
  }
  async flush(): Promise<void> {
    if (this.size === 0) return;
    const text = this.parts.join('');
    this.parts = [];
    this.size = 0;
    await this.fh.write(text);
  }
}

// ---------------------------------------------------------------------------------------------
// COCO (coco-polygons, cvat)

/**
 * A COCO document written as it streams: `images` (small) gathered in memory, annotations written
 * to the temp file as they come, then the rest. Images without a size are left out.
 */
async function writeCocoFile(
  path: string,
  source: ExportSource,
  header: { info: unknown; licenses?: unknown; categories: readonly ExportCategory[] },
  annotationsOf: (entry: { image: ExportImage; annotations: ExportAnnotation[] }) => Record<string, unknown>[],
): Promise<{ images: number; annotations: number }> {
  let images = 0;
  let annotations = 0;
  await produceFileAtomic(path, async (tmp) => {
    const imagesPart: string[] = [];
    const fh = await open(tmp, 'w');
    try {
      const w = new TextWriter(fh);
      await w.write(`{"info": ${JSON.stringify(header.info)},\n`);
      if (header.licenses !== undefined) await w.write(`"licenses": ${JSON.stringify(header.licenses)},\n`);
      await w.write('"annotations": [\n');
      for await (const entry of source.images()) {
        if (entry.image.width === 0) continue;
        images++;
        const { id, file_name, width, height } = entry.image;
        imagesPart.push(JSON.stringify({ id, file_name, width, height, ...entry.image.extra }));
        for (const a of annotationsOf(entry)) await w.write(`${annotations++ === 0 ? '' : ',\n'}${JSON.stringify(a)}`);
      }
      await w.write(`\n],\n"images": [\n${imagesPart.join(',\n')}\n],\n"categories": ${JSON.stringify(header.categories)}}\n`);
      await w.flush();
      await fh.sync();
    } finally {
      await fh.close();
    }
  });
  return { images, annotations };
}

/** An annotation's COCO fields plus its extra ones (the extra never override the COCO ones). */
function cocoAnnotation(a: ExportAnnotation, segmentation: CocoRle | PolygonList, extra: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { id: a.id, image_id: a.image_id, category_id: a.category_id, segmentation, area: a.area, bbox: a.bbox, iscrowd: a.iscrowd };
  for (const [k, v] of Object.entries(extra)) if (!(k in out)) out[k] = v;
  return out;
}

async function exportCoco(source: ExportSource, opts: ExportOptions, summary: ExportSummary, cvat: boolean): Promise<void> {
  const polygons = !cvat || opts.cvatMode === 'polygons';
  if (cvat) {
    const bad = source.categories.find((c) => c.id < 1);
    if (bad) throw inputError(`${source.path}: category '${bad.name}' has id ${bad.id}; CVAT reads ids < 1 as "no label": renumber the categories from 1`);
  }
  const info = {
    ...(typeof source.info === 'object' && source.info !== null ? source.info : {}),
    description: `sam export ${summary.format} of ${source.path}`,
    version: packageVersion(),
  };
  const annotationsOf = ({ annotations }: { annotations: ExportAnnotation[] }): Record<string, unknown>[] => {
    const out: Record<string, unknown>[] = [];
    for (const a of annotations) {
      const extra = { ...a.extra };
      if (cvat) {
        // Datumaro reads `attributes` as a dict and `score` as a number: drop anything else.
        if (extra.attributes !== undefined && (typeof extra.attributes !== 'object' || extra.attributes === null || Array.isArray(extra.attributes))) delete extra.attributes;
        if (extra.score !== undefined && typeof extra.score !== 'number') delete extra.score;
      }
      if (!polygons || Array.isArray(a.segmentation)) {
        if (!Array.isArray(a.segmentation) && a.area === 0) {
          summary.dropped++;
          continue;
        }
        const seg = Array.isArray(a.segmentation) ? a.segmentation.filter((p) => p.length >= 6) : compressed(a.segmentation);
        if (Array.isArray(seg) && seg.length === 0) {
          summary.dropped++;
          continue;
        }
        out.push(cocoAnnotation(a, seg, extra));
        continue;
      }
      const o = outlineOf(a, opts.tolerance);
      if (o.rings.length === 0) {
        summary.dropped++;
        continue;
      }
      if (o.holePixels > 0 && opts.holes === 'rle') {
        summary.keptRle++;
        out.push(cocoAnnotation(a, compressed(a.segmentation), extra));
        continue;
      }
      if (o.holePixels > 0) summary.holesFilled++;
      if (o.rings.length > 1) summary.multiPiece++;
      out.push(cocoAnnotation(a, o.rings, extra));
    }
    return out;
  };
  const r = await writeCocoFile(opts.out, source, { info, licenses: source.licenses, categories: source.categories }, annotationsOf);
  summary.images = r.images;
  summary.annotations = r.annotations;
  summary.written.push(opts.out);
  if (source.unsized > 0) summary.notes.push(`${source.unsized} image(s) without masks were left out: their size is unknown without --images`);
}

// ---------------------------------------------------------------------------------------------
// YOLO

/** A normalized coordinate as Ultralytics writes them: 6 decimals, trailing zeros trimmed. */
const norm = (v: number, size: number): string => {
  const s = (Math.min(1, Math.max(0, v / size))).toFixed(6);
  return s.replace(/\.?0+$/, '') || '0';
};

function checkKey(key: string, where: string): void {
  if (key === '' || key.startsWith('/') || key.split('/').some((p) => p === '..' || p === '')) {
    throw inputError(`${where}: image name '${key}' does not make a label path inside the output; fix the file_name`);
  }
}

async function exportYolo(source: ExportSource, opts: ExportOptions, summary: ExportSummary): Promise<void> {
  const out = resolve(opts.out);
  const st = await stat(out).catch(() => undefined);
  if (st && !st.isDirectory()) throw outputError(`--out ${opts.out}: is a file; YOLO output is a folder (labels/, data.yaml): choose a folder path`);
  if (st) {
    const names = await readdir(out);
    if (names.length > 0 && !names.includes('data.yaml')) {
      throw outputError(`--out ${opts.out}: folder exists and is not a YOLO export (no data.yaml); choose a new or empty folder`);
    }
  }
  const classOf = new Map(source.categories.map((c, i) => [c.id, i]));
  await produceDirAtomic(out, async (tmp) => {
    for await (const { image, annotations } of source.images()) {
      checkKey(image.key, source.path);
      const lines: string[] = [];
      for (const a of annotations) {
        const o = outlineOf(a, opts.tolerance);
        if (o.rings.length === 0) {
          summary.dropped++;
          continue;
        }
        if (o.holePixels > 0) summary.holesFilled++;
        if (o.rings.length > 1) summary.multiPiece++;
        const ring = mergeMultiSegment(o.rings);
        const [h, w] = Array.isArray(a.segmentation) ? [image.height, image.width] : a.segmentation.size;
        const coords: string[] = [];
        for (let i = 0; i + 1 < ring.length; i += 2) coords.push(norm(ring[i], w), norm(ring[i + 1], h));
        lines.push(`${classOf.get(a.category_id)} ${coords.join(' ')}`);
        summary.annotations++;
      }
      // Plain writes: the folder as a whole is renamed into place.
      const file = join(tmp, 'labels', `${image.key}.txt`);
      await mkdir(dirname(file), { recursive: true });
      await writeFile(file, lines.length > 0 ? `${lines.join('\n')}\n` : '');
      summary.images++;
    }
    // A Map keeps the class indices integers in the YAML (0: name), as Ultralytics' own files have them.
    const names = new Map(source.categories.map((c, i) => [i, c.name]));
    const data = { path: out, train: 'images', val: 'images', names };
    const yaml =
      `# sam export yolo of ${source.path}: Ultralytics finds labels/<name>.txt for images/<name>.<ext>\n` +
      (opts.images ? '' : '# put (or link) the images under images/ with the same relative names\n') +
      YAML.stringify(data);
    await writeFile(join(tmp, 'data.yaml'), yaml);
    if (opts.images) await symlink(resolve(opts.images), join(tmp, 'images'), 'dir');
  });
  summary.written.push(join(out, 'labels'), join(out, 'data.yaml'));
  if (opts.images) summary.written.push(`${join(out, 'images')} -> ${resolve(opts.images)}`);
  else summary.notes.push(`put (or link) the images under ${join(out, 'images')}/ before training (see data.yaml)`);
}

// ---------------------------------------------------------------------------------------------
// Label Studio

const xmlEscape = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

/** Distinct label colours (golden-angle hues), as #rrggbb. */
function labelColour(i: number): string {
  const h = (i * 137.508) % 360;
  const f = (n: number): number => {
    const k = (n + h / 30) % 12;
    return Math.round(255 * (0.5 - 0.45 * Math.max(-1, Math.min(k - 3, 9 - k, 1))));
  };
  return `#${[f(0), f(8), f(4)].map((v) => v.toString(16).padStart(2, '0')).join('')}`;
}

/** The labelling config the tasks import into: one Image, one PolygonLabels or BrushLabels control. */
export function labelStudioConfig(categories: readonly ExportCategory[], mode: 'polygons' | 'brush'): string {
  const tag = mode === 'brush' ? 'BrushLabels' : 'PolygonLabels';
  const labels = categories.map((c, i) => `    <Label value="${xmlEscape(c.name)}" background="${labelColour(i)}"/>`).join('\n');
  return `<View>\n  <Image name="image" value="$image" zoom="true"/>\n  <${tag} name="label" toName="image">\n${labels}\n  </${tag}>\n</View>\n`;
}

/** The config file beside the tasks: tasks.json → tasks.config.xml. */
export const labelStudioConfigPath = (tasksPath: string): string => `${tasksPath.replace(/\.json$/i, '')}.config.xml`;

/** file_name as a URL: the prefix, then the path with each segment percent-encoded. */
const imageUrl = (prefix: string | undefined, fileName: string): string =>
  prefix === undefined ? fileName : prefix + fileName.split('/').map(encodeURIComponent).join('/');

const pct = (v: number, size: number): number => Number(((v / size) * 100).toFixed(4));

async function exportLabelStudio(source: ExportSource, opts: ExportOptions, summary: ExportSummary): Promise<void> {
  const names = new Map(source.categories.map((c) => [c.id, c.name]));
  const brush = opts.labelstudioMode === 'brush';
  await produceFileAtomic(opts.out, async (tmp) => {
    const fh = await open(tmp, 'w');
    try {
      const w = new TextWriter(fh);
      await w.write('[');
      let first = true;
      for await (const { image, annotations } of source.images()) {
        const results: Record<string, unknown>[] = [];
        const scores: number[] = [];
        for (const a of annotations) {
          const [h, wd] = Array.isArray(a.segmentation) ? [image.height, image.width] : a.segmentation.size;
          const common = { from_name: 'label', to_name: 'image', original_width: wd, original_height: h, image_rotation: 0 };
          const label = names.get(a.category_id) as string;
          const score = a.score !== undefined ? { score: a.score } : {};
          if (brush) {
            const crop = cropOf(a, image);
            if (!crop) {
              summary.dropped++;
              continue;
            }
            results.push({ id: `m${a.id}`, type: 'brushlabels', ...common, value: { format: 'rle', rle: encodeLabelStudioRle(crop), brushlabels: [label] }, ...score });
          } else {
            const o = outlineOf(a, opts.tolerance);
            if (o.rings.length === 0) {
              summary.dropped++;
              continue;
            }
            if (o.holePixels > 0) summary.holesFilled++;
            if (o.rings.length > 1) summary.multiPiece++;
            o.rings.forEach((ring, k) => {
              const points: [number, number][] = [];
              for (let i = 0; i + 1 < ring.length; i += 2) points.push([pct(ring[i], wd), pct(ring[i + 1], h)]);
              results.push({ id: o.rings.length > 1 ? `m${a.id}p${k}` : `m${a.id}`, type: 'polygonlabels', ...common, value: { points, polygonlabels: [label] }, ...score });
            });
          }
          if (a.score !== undefined) scores.push(a.score);
          summary.annotations++;
        }
        const prediction: Record<string, unknown> = { model_version: opts.modelVersion };
        if (scores.length > 0) prediction.score = scores.reduce((s, x) => s + x, 0) / scores.length;
        prediction.result = results;
        const task = { data: { image: imageUrl(opts.imageUrlPrefix, image.file_name) }, predictions: [prediction] };
        await w.write(`${first ? '\n' : ',\n'}${JSON.stringify(task)}`);
        first = false;
        summary.images++;
      }
      await w.write('\n]\n');
      await w.flush();
      await fh.sync();
    } finally {
      await fh.close();
    }
  });
  const configPath = labelStudioConfigPath(opts.out);
  await produceFileAtomic(configPath, async (tmp) => {
    const fh = await open(tmp, 'w');
    try {
      await fh.write(labelStudioConfig(source.categories, opts.labelstudioMode));
    } finally {
      await fh.close();
    }
  });
  summary.written.push(opts.out, configPath);
}

// ---------------------------------------------------------------------------------------------

/** Formats that need each image's file name, which a folder input has only via --images or --image-ext. */
const NEEDS_FILE_NAMES: readonly ExportFormat[] = ['coco-polygons', 'cvat', 'labelstudio'];

export async function runExport(format: ExportFormat, input: string, opts: ExportOptions): Promise<ExportSummary> {
  if (!(opts.tolerance >= 0)) throw usageError(`--tolerance ${opts.tolerance}: expected a number of pixels >= 0`);
  const source = await openSource(input, { images: opts.images, imageExt: opts.imageExt });
  if (source.kind === 'folder' && NEEDS_FILE_NAMES.includes(format) && !opts.images && !opts.imageExt) {
    throw usageError(
      `${format} needs each image's file name, which a sam auto folder does not hold: give --images DIR (the folder sam auto ran on) or --image-ext .jpg`,
    );
  }
  if (format !== 'yolo') {
    const st = await stat(opts.out).catch(() => undefined);
    if (st?.isDirectory()) throw outputError(`--out ${opts.out}: is a folder; ${format} writes one JSON file: give a file path such as ${join(opts.out, 'export.json')}`);
  }
  const summary: ExportSummary = { format, images: 0, annotations: 0, written: [], holesFilled: 0, multiPiece: 0, keptRle: 0, dropped: 0, notes: [] };
  if (source.skipped.length > 0) summary.notes.push(`skipped ${source.skipped.length} JSON file(s) that are not mask records: ${source.skipped.slice(0, 3).join(', ')}`);
  switch (format) {
    case 'coco-polygons':
      await exportCoco(source, opts, summary, false);
      break;
    case 'cvat':
      await exportCoco(source, opts, summary, true);
      break;
    case 'yolo':
      await exportYolo(source, opts, summary);
      break;
    case 'labelstudio':
      await exportLabelStudio(source, opts, summary);
      break;
  }
  return summary;
}
