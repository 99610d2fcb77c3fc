/**
 * Prompt files for `sam segment --prompts`: the boxes (and points) of a dataset, one mask each.
 *
 * - COCO instances JSON (`images`, `annotations` with `bbox`, `categories`): ids, categories and
 *   extra annotation fields are kept;
 * - COCO detection results ([{image_id, category_id, bbox, score}]) with the images and
 *   categories of a COCO file (`--coco-images`), filtered by `--score-thresh`;
 * - YOLO detection labels: a folder of `<key>.txt` files, `class cx cy w h` normalized to 0..1
 *   (a 6th number is a confidence; a longer line is a segmentation polygon, prompted by its box),
 *   class names from data.yaml or `--names`;
 * - JSON Lines: {"image": path, "points": [[x, y, label], ...], "box": [x0, y0, x1, y1]} per line.
 *
 * Problems of single items (a box with x1 <= x0, an unknown image or category, a bad line) are
 * collected, not thrown: the run reports them and carries on with the rest.
 */
import { readFile, readdir, stat } from 'node:fs/promises';
import { basename, dirname, extname, join, relative, sep } from 'node:path';
import YAML from 'yaml';
import type { BoxXyxy, CocoCategory, PromptPoint } from '../core/types.js';
import { inputError, usageError } from '../util/errors.js';
import type { InputImage } from './inputs.js';

export type PromptFormat = 'coco' | 'coco-results' | 'yolo' | 'jsonl';

/** One mask to make. */
export interface PromptSpec {
  /** Where it was read, for messages: "prompts.json annotation 17", "labels/a.txt line 3". */
  source: string;
  /** XYXY in pixels. */
  box?: BoxXyxy;
  /** YOLO's normalized [cx, cy, w, h], turned into `box` once the image size is known. */
  normalizedBox?: [number, number, number, number];
  points?: PromptPoint[];
  annotationId: number;
  categoryId: number;
  /** The detector's confidence, when the prompt file has one. */
  score?: number;
  /** COCO's iscrowd of the input annotation (0 otherwise). */
  iscrowd: 0 | 1;
  /** Other fields of the input annotation or line, kept as they were. */
  extra?: Record<string, unknown>;
}

export interface PromptImage {
  /** The image as the prompt file names it (file_name, label path, "image" field). */
  name: string;
  id: number;
  /** Size the prompt file declares (COCO width/height), checked against the decoded image. */
  width?: number;
  height?: number;
  prompts: PromptSpec[];
}

export interface PromptSet {
  format: PromptFormat;
  file: string;
  images: PromptImage[];
  categories: CocoCategory[];
  /** Per-item problems found while reading; the items are left out. */
  problems: string[];
  /** Items left out on purpose (below --score-thresh). */
  filtered: number;
}

export interface PromptReadOptions {
  /** COCO file with the images (and categories) of a detection-results list. */
  cocoImages?: string;
  /** Detection results / YOLO confidences below this are left out. */
  scoreThresh?: number;
  /** YOLO class names: a comma-separated list, or a data.yaml / one-name-per-line file. */
  names?: string;
}

type Json = Record<string, unknown>;
const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);
const isInt = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v);
const isNum = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);

async function readJsonFile(file: string, what: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw inputError(`${what} ${file}: cannot read it (${(err as Error).message}); check the path`, err);
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw inputError(`${what} ${file}: not valid JSON (${(err as Error).message}); fix the file`, err);
  }
}

/** Read a prompt file or YOLO labels folder; the format follows from what it is. */
export async function readPrompts(file: string, options: PromptReadOptions = {}): Promise<PromptSet> {
  const st = await stat(file).catch(() => undefined);
  if (!st) throw inputError(`--prompts ${file} does not exist; give a COCO JSON, a detection-results JSON, a YOLO labels folder or a .jsonl file`);
  if (st.isDirectory()) return readYoloLabels(file, options);
  const ext = extname(file).toLowerCase();
  if (ext === '.jsonl' || ext === '.ndjson') return readJsonl(file);
  const json = await readJsonFile(file, '--prompts');
  if (Array.isArray(json)) return readCocoResults(file, json, options);
  if (isObject(json) && Array.isArray(json.annotations)) return readCocoInstances(file, json, options);
  throw inputError(
    `--prompts ${file}: neither a COCO dataset (an object with "images", "annotations", "categories") nor a detection-results list ([{image_id, category_id, bbox, score}]); for per-image prompts name a .jsonl file`,
  );
}

/** COCO `bbox` [x, y, w, h] as a box prompt; undefined (with the reason) when it is not one. */
function cocoBox(bbox: unknown): BoxXyxy | string {
  if (!Array.isArray(bbox) || bbox.length !== 4 || !bbox.every(isNum)) return `bbox ${JSON.stringify(bbox)} is not [x, y, w, h]`;
  const [x, y, w, h] = bbox as number[];
  if (!(w > 0 && h > 0)) return `bbox ${JSON.stringify(bbox)} is empty (w and h must be > 0, i.e. x1 > x0 and y1 > y0)`;
  return [x, y, x + w, y + h];
}

function readCategories(file: string, raw: unknown): CocoCategory[] | undefined {
  if (raw === undefined) return undefined;
  if (!Array.isArray(raw)) throw inputError(`${file}: "categories" is not a list; fix the file`);
  return raw.map((c, i) => {
    if (!isObject(c) || !isInt(c.id) || typeof c.name !== 'string') {
      throw inputError(`${file}: categories[${i}] needs an integer "id" and a string "name"; fix the file`);
    }
    return { id: c.id, name: c.name, supercategory: typeof c.supercategory === 'string' ? c.supercategory : '' };
  });
}

function readImages(file: string, raw: unknown, problems: string[]): Map<number, PromptImage> {
  if (!Array.isArray(raw)) throw inputError(`${file}: "images" is missing or not a list; a COCO file lists its images as [{id, file_name, width, height}]`);
  const images = new Map<number, PromptImage>();
  raw.forEach((im, i) => {
    if (!isObject(im) || !isInt(im.id) || typeof im.file_name !== 'string') {
      problems.push(`${file}: images[${i}] needs an integer "id" and a string "file_name"; left out`);
      return;
    }
    if (images.has(im.id)) {
      problems.push(`${file}: images[${i}] repeats image id ${im.id}; left out`);
      return;
    }
    images.set(im.id, {
      name: im.file_name,
      id: im.id,
      width: isInt(im.width) ? im.width : undefined,
      height: isInt(im.height) ? im.height : undefined,
      prompts: [],
    });
  });
  return images;
}

/** Categories of a COCO file without a "categories" list: named by their ids. */
function categoriesFromIds(ids: Iterable<number>): CocoCategory[] {
  return [...new Set(ids)].sort((a, b) => a - b).map((id) => ({ id, name: String(id), supercategory: '' }));
}

/** COCO annotation fields the output writes itself; everything else is kept. */
const COCO_OWN_FIELDS = new Set(['id', 'image_id', 'category_id', 'bbox', 'segmentation', 'area', 'iscrowd', 'score']);

function readCocoAnnotations(file: string, raw: unknown[], images: Map<number, PromptImage>, categories: CocoCategory[] | undefined, problems: string[], idOf: (a: Json, i: number) => number, scoreThresh?: number): number {
  const known = categories ? new Set(categories.map((c) => c.id)) : undefined;
  let filtered = 0;
  raw.forEach((a, i) => {
    const where = `${file} annotation ${isObject(a) && isInt(a.id) ? a.id : `#${i}`}`;
    if (!isObject(a)) return problems.push(`${where}: not an object; left out`);
    const image = isInt(a.image_id) ? images.get(a.image_id) : undefined;
    if (!image) return problems.push(`${where}: unknown image_id ${JSON.stringify(a.image_id)} (not in "images"); left out`);
    if (!isInt(a.category_id) || (known && !known.has(a.category_id))) {
      return problems.push(`${where}: unknown category_id ${JSON.stringify(a.category_id)} (not in "categories"); left out`);
    }
    const box = cocoBox(a.bbox);
    if (typeof box === 'string') return problems.push(`${where}: ${box}; left out`);
    const score = isNum(a.score) ? a.score : undefined;
    if (scoreThresh !== undefined && (score ?? 1) < scoreThresh) {
      filtered++;
      return;
    }
    const extra = Object.fromEntries(Object.entries(a).filter(([k]) => !COCO_OWN_FIELDS.has(k)));
    image.prompts.push({
      source: where,
      box,
      annotationId: idOf(a, i),
      categoryId: a.category_id,
      score,
      iscrowd: a.iscrowd === 1 ? 1 : 0,
      extra: Object.keys(extra).length > 0 ? extra : undefined,
    });
  });
  return filtered;
}

function readCocoInstances(file: string, json: Json, options: PromptReadOptions): PromptSet {
  const problems: string[] = [];
  const images = readImages(file, json.images, problems);
  const declared = readCategories(file, json.categories);
  const anns = json.annotations as unknown[];
  const seen = new Set<number>();
  let next = Math.max(0, ...anns.map((a) => (isObject(a) && isInt(a.id) ? a.id : 0))) + 1;
  // Input ids are kept; an annotation without one (or with a repeated one) gets the next free id.
  const idOf = (a: Json): number => {
    const id = isInt(a.id) && !seen.has(a.id) ? a.id : next++;
    seen.add(id);
    return id;
  };
  const filtered = readCocoAnnotations(file, anns, images, declared, problems, idOf, options.scoreThresh);
  const categories = declared ?? categoriesFromIds([...images.values()].flatMap((im) => im.prompts.map((p) => p.categoryId)));
  return { format: 'coco', file, images: [...images.values()], categories, problems, filtered };
}

async function readCocoResults(file: string, list: unknown[], options: PromptReadOptions): Promise<PromptSet> {
  if (!options.cocoImages) {
    throw usageError(`--prompts ${file} is a detection-results list, which names images by id only; add --coco-images FILE (the COCO file with their "images" and "categories")`);
  }
  const coco = await readJsonFile(options.cocoImages, '--coco-images');
  if (!isObject(coco)) throw inputError(`--coco-images ${options.cocoImages}: not a COCO dataset object; give the COCO file the results were made on`);
  const problems: string[] = [];
  const images = readImages(options.cocoImages, coco.images, problems);
  const declared = readCategories(options.cocoImages, coco.categories);
  const filtered = readCocoAnnotations(file, list, images, declared, problems, (_a, i) => i + 1, options.scoreThresh);
  const categories = declared ?? categoriesFromIds([...images.values()].flatMap((im) => im.prompts.map((p) => p.categoryId)));
  return { format: 'coco-results', file, images: [...images.values()], categories, problems, filtered };
}

/** All `.txt` files under `dir` (sorted, hidden entries skipped), '/'-separated and relative. */
async function labelFiles(dir: string, root = dir): Promise<string[]> {
  const entries = (await readdir(dir, { withFileTypes: true })).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const out: string[] = [];
  for (const e of entries) {
    if (e.name.startsWith('.')) continue;
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...(await labelFiles(p, root)));
    else if (e.isFile() && e.name.toLowerCase().endsWith('.txt')) out.push(relative(root, p).split(sep).join('/'));
  }
  return out;
}

/** Ultralytics' `names`: a list, or a {index: name} map. */
function namesFromYaml(file: string, text: string): string[] {
  let doc: unknown;
  try {
    doc = YAML.parse(text);
  } catch (err) {
    throw inputError(`${file}: not valid YAML (${(err as Error).message}); fix it or give --names "a,b,c"`, err);
  }
  const names = isObject(doc) ? doc.names : undefined;
  if (Array.isArray(names) && names.every((n) => typeof n === 'string' || typeof n === 'number')) return names.map(String);
  if (isObject(names)) {
    const entries = Object.entries(names).map(([k, v]) => [Number(k), String(v)] as const);
    if (entries.every(([k]) => Number.isInteger(k) && k >= 0)) {
      const out: string[] = [];
      for (const [k, v] of entries) out[k] = v;
      for (let i = 0; i < out.length; i++) out[i] ??= `class_${i}`;
      return out;
    }
  }
  throw inputError(`${file}: no "names" list or {index: name} map; add one (Ultralytics' data.yaml format) or give --names "a,b,c"`);
}

/** Class names: --names (list or file), else data.yaml / dataset.yaml / classes.txt beside or above the labels. */
async function yoloNames(labelsDir: string, names: string | undefined): Promise<{ names?: string[]; from?: string }> {
  const fromFile = async (file: string): Promise<string[]> => {
    const text = await readFile(file, 'utf8');
    if (/\.ya?ml$/i.test(file)) return namesFromYaml(file, text);
    return text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l !== '');
  };
  if (names !== undefined) {
    if ((await stat(names).catch(() => undefined))?.isFile()) return { names: await fromFile(names), from: names };
    const list = names.split(',').map((n) => n.trim());
    if (list.some((n) => n === '')) throw usageError(`--names ${names}: give a comma-separated list of class names ("person,car") or a data.yaml file`);
    return { names: list, from: '--names' };
  }
  // Ultralytics layouts: dataset/data.yaml with dataset/labels/<split>/*.txt.
  const candidates: string[] = [];
  for (let d = labelsDir, up = 0; up <= 2; up++, d = dirname(d)) {
    candidates.push(join(d, 'data.yaml'), join(d, 'dataset.yaml'));
    if (up === 0) candidates.push(join(d, 'classes.txt'));
  }
  for (const c of candidates) {
    if ((await stat(c).catch(() => undefined))?.isFile()) return { names: await fromFile(c), from: c };
  }
  return {};
}

async function readYoloLabels(dir: string, options: PromptReadOptions): Promise<PromptSet> {
  const { names } = await yoloNames(dir, options.names);
  const files = (await labelFiles(dir)).filter((f) => f !== 'classes.txt');
  if (files.length === 0) throw inputError(`--prompts ${dir}: no .txt label files in the folder; give the YOLO labels folder (labels/ or labels/<split>/)`);
  const problems: string[] = [];
  const images: PromptImage[] = [];
  const usedClasses = new Set<number>();
  let annId = 0;
  let filtered = 0;
  for (const rel of files) {
    const image: PromptImage = { name: rel.slice(0, -'.txt'.length), id: images.length + 1, prompts: [] };
    images.push(image);
    const lines = (await readFile(join(dir, rel), 'utf8')).split(/\r?\n/);
    lines.forEach((line, i) => {
      const text = line.trim();
      if (text === '') return;
      const where = `${join(dir, rel)} line ${i + 1}`;
      const v = text.split(/\s+/).map(Number);
      if (v.length < 5 || v.some((x) => !Number.isFinite(x))) return problems.push(`${where}: '${text}' is not "class cx cy w h"; left out`);
      const cls = v[0];
      if (!Number.isInteger(cls) || cls < 0 || (names && cls >= names.length)) {
        return problems.push(`${where}: unknown class ${v[0]}${names ? ` (names has ${names.length}: 0..${names.length - 1})` : ''}; left out`);
      }
      let box: [number, number, number, number];
      let score: number | undefined;
      if (v.length <= 6) {
        box = [v[1], v[2], v[3], v[4]];
        score = v.length === 6 ? v[5] : undefined;
      } else if (v.length % 2 === 1) {
        // A segmentation label (class x1 y1 x2 y2 ...): its box is the prompt.
        const xs = v.filter((_, k) => k % 2 === 1);
        const ys = v.filter((_, k) => k > 0 && k % 2 === 0);
        const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
        box = [(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0];
      } else return problems.push(`${where}: '${text}' is neither "class cx cy w h [conf]" nor a polygon "class x1 y1 x2 y2 ..."; left out`);
      if (!(box[2] > 0 && box[3] > 0)) return problems.push(`${where}: box w ${box[2]}, h ${box[3]} is empty (x1 <= x0 or y1 <= y0); left out`);
      if (options.scoreThresh !== undefined && score !== undefined && score < options.scoreThresh) {
        filtered++;
        return;
      }
      usedClasses.add(cls);
      image.prompts.push({ source: where, normalizedBox: box, annotationId: ++annId, categoryId: cls + 1, score, iscrowd: 0 });
    });
  }
  const n = names?.length ?? Math.max(-1, ...usedClasses) + 1;
  const categories = Array.from({ length: n }, (_, i) => ({ id: i + 1, name: names?.[i] ?? `class_${i}`, supercategory: '' }));
  if (!names) problems.unshift(`${dir}: no data.yaml, dataset.yaml or classes.txt beside or above the labels and no --names; classes are named class_0..class_${n - 1}`);
  return { format: 'yolo', file: dir, images, categories, problems, filtered };
}

function jsonlPoints(raw: unknown): PromptPoint[] | string {
  if (!Array.isArray(raw)) return `"points" is not a list of [x, y] or [x, y, label]`;
  const out: PromptPoint[] = [];
  for (const p of raw) {
    if (!Array.isArray(p) || (p.length !== 2 && p.length !== 3) || !p.every(isNum)) return `point ${JSON.stringify(p)} is not [x, y] or [x, y, label]`;
    const label = p.length === 3 ? p[2] : 1;
    if (label !== 0 && label !== 1) return `point ${JSON.stringify(p)}: label must be 1 (foreground) or 0 (background)`;
    out.push({ x: p[0], y: p[1], label });
  }
  return out;
}

/** Fields of a JSONL line this reader interprets; others are kept. */
const JSONL_OWN_FIELDS = new Set(['image', 'points', 'box', 'category', 'category_id', 'score', 'id']);

async function readJsonl(file: string): Promise<PromptSet> {
  const text = await readFile(file, 'utf8').catch((err: Error) => {
    throw inputError(`--prompts ${file}: cannot read it (${err.message}); check the path`, err);
  });
  const problems: string[] = [];
  const images = new Map<string, PromptImage>();
  const categoryIds = new Map<string, number>();
  const categories: CocoCategory[] = [];
  const categoryOf = (name: string): number => {
    let id = categoryIds.get(name);
    if (id === undefined) {
      id = categories.length + 1;
      categoryIds.set(name, id);
      categories.push({ id, name, supercategory: '' });
    }
    return id;
  };
  let annId = 0;
  text.split(/\r?\n/).forEach((line, i) => {
    if (line.trim() === '') return;
    const where = `${file} line ${i + 1}`;
    let o: unknown;
    try {
      o = JSON.parse(line);
    } catch (err) {
      return problems.push(`${where}: not valid JSON (${(err as Error).message}); left out`);
    }
    if (!isObject(o) || typeof o.image !== 'string' || o.image === '') return problems.push(`${where}: needs a string "image" (the image's path); left out`);
    let points: PromptPoint[] | undefined;
    if (o.points !== undefined) {
      const p = jsonlPoints(o.points);
      if (typeof p === 'string') return problems.push(`${where}: ${p}; left out`);
      points = p.length > 0 ? p : undefined;
    }
    let box: BoxXyxy | undefined;
    if (o.box !== undefined) {
      if (!Array.isArray(o.box) || o.box.length !== 4 || !o.box.every(isNum)) return problems.push(`${where}: "box" ${JSON.stringify(o.box)} is not [x0, y0, x1, y1]; left out`);
      const b = o.box as number[];
      if (!(b[2] > b[0] && b[3] > b[1])) return problems.push(`${where}: box ${JSON.stringify(o.box)} is empty; give [x0, y0, x1, y1] with x1 > x0 and y1 > y0; left out`);
      box = [b[0], b[1], b[2], b[3]];
    }
    if (!points && !box) return problems.push(`${where}: no prompt; give "points" and/or "box"; left out`);
    if (o.category !== undefined && typeof o.category !== 'string') return problems.push(`${where}: "category" must be a name (string); left out`);
    let image = images.get(o.image);
    if (!image) {
      image = { name: o.image, id: images.size + 1, prompts: [] };
      images.set(o.image, image);
    }
    const extra = Object.fromEntries(Object.entries(o).filter(([k]) => !JSONL_OWN_FIELDS.has(k)));
    image.prompts.push({
      source: where,
      box,
      points,
      annotationId: ++annId,
      categoryId: categoryOf(typeof o.category === 'string' ? o.category : 'object'),
      score: isNum(o.score) ? o.score : undefined,
      iscrowd: 0,
      extra: Object.keys(extra).length > 0 ? extra : undefined,
    });
  });
  if (images.size === 0 && problems.length === 0) throw inputError(`--prompts ${file}: no prompt lines; each line is {"image": path, "points": [[x, y, label], ...], "box": [x0, y0, x1, y1]}`);
  return { format: 'jsonl', file, images: [...images.values()], categories, problems, filtered: 0 };
}

/** An input image and the prompt-file image it answers. */
export interface PromptedImage {
  input: InputImage;
  image: PromptImage;
}

const stripExt = (p: string): string => {
  const e = extname(p);
  return e ? p.slice(0, -e.length) : p;
};
const normal = (p: string): string => p.split('\\').join('/').replace(/^(\.\/)+/, '');

/**
 * Find each prompt-file image among the inputs: by its path without extension equal to an input's
 * key, else by an input whose absolute path ends with it, else by a unique file name. Problems:
 * images not found (their prompts are reported and left out) and names that fit several inputs.
 */
export function matchPromptImages(set: PromptSet, inputs: readonly InputImage[]): { matched: PromptedImage[]; problems: string[] } {
  const byKey = new Map(inputs.map((i) => [i.key, i]));
  const byBase = new Map<string, InputImage[]>();
  for (const i of inputs) {
    const b = basename(i.key);
    byBase.set(b, [...(byBase.get(b) ?? []), i]);
  }
  const matched: PromptedImage[] = [];
  const problems: string[] = [];
  const taken = new Map<InputImage, PromptImage>();
  for (const image of set.images) {
    const name = normal(image.name);
    const key = set.format === 'yolo' ? name : stripExt(name);
    let input = byKey.get(key);
    if (!input) {
      const same = byBase.get(basename(key)) ?? [];
      const suffix = same.filter((i) => stripExt(normal(i.path)).endsWith(`/${key}`));
      const fits = suffix.length > 0 ? suffix : same;
      if (fits.length > 1) {
        problems.push(`${set.file}: image '${image.name}' fits ${fits.length} inputs (${fits.slice(0, 3).map((i) => i.key).join(', ')}); pass the folder its path is relative to; its ${image.prompts.length} prompt(s) left out`);
        continue;
      }
      input = fits[0];
    }
    if (!input) {
      if (image.prompts.length > 0 || set.format === 'coco') {
        problems.push(`${set.file}: image '${image.name}' is not among the inputs; pass the folder that holds it; its ${image.prompts.length} prompt(s) left out`);
      }
      continue;
    }
    const other = taken.get(input);
    if (other) {
      problems.push(`${set.file}: images '${other.name}' and '${image.name}' both fit ${input.path}; give distinct file names; '${image.name}' left out`);
      continue;
    }
    taken.set(input, image);
    matched.push({ input, image });
  }
  return { matched, problems };
}
