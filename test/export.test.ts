/**
 * `sam export` end to end through the real CLI, on real `sam auto` outputs of the fixture scenes
 * (colour-oracle model): polygons rasterized back against the masks they came from, YOLO labels
 * and data.yaml parsed back, Label Studio tasks checked field by field against the documented
 * pre-annotation format (brush RLE decoded with @thi.ng/rle-pack, the decoder Label Studio's
 * frontend uses), and the CVAT file run through the checks Datumaro's COCO extractor makes.
 */
import { mkdirSync, readFileSync, readdirSync, realpathSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { decode as rlePackDecode } from '@thi.ng/rle-pack';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import YAML from 'yaml';
import { decodeRle, rleArea, rleToBbox } from '../src/core/rle.js';
import type { CocoRle, MaskRecord } from '../src/core/types.js';
import { rasterizePolygons } from '../src/core/mask-crop.js';
import { fixtureModel, maskIou, runSam, tempDir, type CliResult } from './helpers/cli.js';
import { copyScenes } from './helpers/scenes.js';
import { datumaroCocoCheck } from './helpers/datumaro.js';

const MODEL = fixtureModel('oracle');
const SCENES = ['basic-320x240', 'sub/speck-hole-256', 'gray-200x200'];

const tmp = tempDir('sam-export-');
afterAll(() => tmp.cleanup());
let count = 0;
const fresh = (name: string): string => path.join(tmp.dir, `${++count}-${name}`);

const imagesDir = path.join(tmp.dir, 'images');
const masksDir = path.join(tmp.dir, 'masks');
const cocoFile = path.join(tmp.dir, 'coco.json');

interface CocoDoc {
  info: Record<string, unknown>;
  images: { id: number; file_name: string; width: number; height: number }[];
  annotations: { id: number; image_id: number; category_id: number; segmentation: CocoRle | number[][]; area: number; bbox: number[]; iscrowd: number; [k: string]: unknown }[];
  categories: { id: number; name: string; supercategory: string }[];
}

const readJson = <T>(file: string): T => JSON.parse(readFileSync(file, 'utf8')) as T;
const exportCli = (args: readonly string[]): Promise<CliResult> => runSam(['export', ...args]);

/** key → the records `sam auto` wrote, in order (folder export numbers annotations in this order). */
const records = new Map<string, MaskRecord<CocoRle>[]>();
const keys = ['basic-320x240', 'gray-200x200', 'sub/speck-hole-256'];
/** Annotation id (folder input: 1, 2, ... over keys in sorted order) → its record's mask. */
const maskById = new Map<number, { mask: Uint8Array; w: number; h: number; rle: CocoRle; key: string }>();

/** Holes filled: background pixels not 8-connected to the image border become foreground. */
function fillHolesFull(mask: Uint8Array, w: number, h: number): Uint8Array {
  const out = Uint8Array.from(mask);
  const seen = new Uint8Array(w * h);
  const stack: number[] = [];
  for (let x = 0; x < w; x++) stack.push(x, (h - 1) * w + x);
  for (let y = 0; y < h; y++) stack.push(y * w, y * w + w - 1);
  while (stack.length) {
    const i = stack.pop() as number;
    if (seen[i] || mask[i]) continue;
    seen[i] = 1;
    const x = i % w;
    const y = (i - x) / w;
    for (let dy = -1; dy <= 1; dy++) for (let dx = -1; dx <= 1; dx++) {
      const xx = x + dx;
      const yy = y + dy;
      if (xx >= 0 && yy >= 0 && xx < w && yy < h) stack.push(yy * w + xx);
    }
  }
  for (let i = 0; i < out.length; i++) if (!mask[i] && !seen[i]) out[i] = 1;
  return out;
}

const same = (a: Uint8Array, b: Uint8Array): boolean => Buffer.from(a).equals(Buffer.from(b));

beforeAll(async () => {
  copyScenes(imagesDir, SCENES);
  const r = await runSam(['auto', imagesDir, '--model', MODEL, '--out', masksDir, '--coco', cocoFile, '--points-per-side', '16', '-q']);
  expect(r.code, r.stderr).toBe(0);
  let id = 0;
  for (const key of keys) {
    const recs = readJson<MaskRecord<CocoRle>[]>(path.join(masksDir, `${key}.json`));
    records.set(key, recs);
    for (const rec of recs) {
      const m = decodeRle(rec.segmentation);
      maskById.set(++id, { mask: m.data, w: m.w, h: m.h, rle: rec.segmentation, key });
    }
  }
  expect(id).toBeGreaterThanOrEqual(6);
});

describe('sam export coco-polygons', () => {
  it('writes polygons that rasterize back to the masks (IoU >= 0.95), with the mask\'s area and tight bbox', async () => {
    const out = fresh('polygons.json');
    const r = await exportCli(['coco-polygons', masksDir, '--images', imagesDir, '--out', out]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/1 mask\(s\) had holes, filled/);
    const doc = readJson<CocoDoc>(out);
    expect(doc.images.map((i) => i.file_name).sort()).toEqual(['basic-320x240.png', 'gray-200x200.png', 'sub/speck-hole-256.png']);
    expect(doc.categories).toEqual([{ id: 1, name: 'object', supercategory: 'object' }]);
    expect(doc.annotations.length).toBe(maskById.size);
    for (const a of doc.annotations) {
      const truth = maskById.get(a.id)!;
      const polys = a.segmentation as number[][];
      expect(Array.isArray(polys)).toBe(true);
      for (const p of polys) {
        expect(p.length % 2).toBe(0);
        expect(p.length).toBeGreaterThanOrEqual(6);
      }
      const back = rasterizePolygons(polys, truth.w, truth.h);
      expect(maskIou(back, truth.mask), `annotation ${a.id} (${truth.key})`).toBeGreaterThanOrEqual(0.95);
      expect(a.bbox).toEqual(rleToBbox(truth.rle));
      expect(a.area).toBe(rleArea(truth.rle));
      expect(a.iscrowd).toBe(0);
      expect(typeof a.predicted_iou).toBe('number');
    }
  });

  it('at --tolerance 0 gives the exact outline: the mask itself, holes filled', async () => {
    const out = fresh('exact.json');
    const r = await exportCli(['coco-polygons', masksDir, '--image-ext', '.png', '--out', out, '--tolerance', '0']);
    expect(r.code, r.stderr).toBe(0);
    const doc = readJson<CocoDoc>(out);
    expect(doc.images.map((i) => i.file_name).sort()).toEqual(['basic-320x240.png', 'gray-200x200.png', 'sub/speck-hole-256.png']);
    let holed = 0;
    for (const a of doc.annotations) {
      const t = maskById.get(a.id)!;
      const filled = fillHolesFull(t.mask, t.w, t.h);
      if (!same(filled, t.mask)) holed++;
      expect(same(rasterizePolygons(a.segmentation as number[][], t.w, t.h), filled), `annotation ${a.id}`).toBe(true);
    }
    expect(holed).toBe(1);
  });

  it('--holes rle keeps masks with holes as their RLE; ids, categories and extra fields of a COCO input are kept', async () => {
    const coco = readJson<CocoDoc>(cocoFile);
    // A labelled dataset: other ids, two categories, an extra field.
    coco.categories = [
      { id: 3, name: 'square', supercategory: 'shape' },
      { id: 7, name: 'round', supercategory: 'shape' },
    ];
    coco.images.forEach((im) => (im.id += 100));
    coco.annotations.forEach((a, i) => {
      a.image_id += 100;
      a.id = 1000 + i;
      a.category_id = i % 2 ? 7 : 3;
      a.note = `n${i}`;
    });
    const input = fresh('labelled.json');
    writeFileSync(input, JSON.stringify(coco));
    const out = fresh('holes-rle.json');
    const r = await exportCli(['coco-polygons', input, '--out', out, '--holes', 'rle']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/1 mask\(s\) with holes kept as RLE/);
    const doc = readJson<CocoDoc>(out);
    expect(doc.categories).toEqual(coco.categories);
    expect(doc.images).toEqual(coco.images);
    expect(doc.annotations.map((a) => [a.id, a.image_id, a.category_id, a.note])).toEqual(coco.annotations.map((a) => [a.id, a.image_id, a.category_id, a.note]));
    const rle = doc.annotations.filter((a) => !Array.isArray(a.segmentation));
    expect(rle.length).toBe(1);
    const src = coco.annotations.find((a) => a.id === rle[0].id)!;
    expect(rle[0].segmentation).toEqual(src.segmentation);
  });
});

describe('sam export yolo', () => {
  it('writes labels/<key>.txt that denormalize to the polygons, and a data.yaml Ultralytics reads', async () => {
    const out = fresh('yolo');
    const r = await exportCli(['yolo', masksDir, '--images', imagesDir, '--out', out]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/several pieces, joined into one polygon/);
    const data = YAML.parse(readFileSync(path.join(out, 'data.yaml'), 'utf8')) as Record<string, unknown>;
    expect(data.names).toEqual({ 0: 'object' });
    expect(data.path).toBe(path.resolve(out));
    expect(data.train).toBe('images');
    expect(data.val).toBe('images');
    expect(realpathSync(path.join(out, 'images'))).toBe(realpathSync(imagesDir));
    expect(readdirSync(path.join(out, 'labels', 'sub'))).toEqual(['speck-hole-256.txt']);
    // The same polygons as coco-polygons (same tolerance), pieces bridged.
    const poly = fresh('ref.json');
    expect((await exportCli(['coco-polygons', masksDir, '--images', imagesDir, '--out', poly])).code).toBe(0);
    const ref = readJson<CocoDoc>(poly);
    let id = 0;
    for (const key of keys) {
      const lines = readFileSync(path.join(out, 'labels', `${key}.txt`), 'utf8').trimEnd().split('\n');
      expect(lines.length).toBe(records.get(key)!.length);
      for (const line of lines) {
        const t = maskById.get(++id)!;
        const [cls, ...nums] = line.split(' ').map(Number);
        expect(cls).toBe(0);
        expect(nums.length % 2).toBe(0);
        expect(nums.every((v) => v >= 0 && v <= 1)).toBe(true);
        const pts = nums.map((v, i) => v * (i % 2 ? t.h : t.w));
        const back = rasterizePolygons([pts], t.w, t.h);
        expect(maskIou(back, t.mask), `${key} mask ${id}`).toBeGreaterThanOrEqual(0.95);
        const rings = ref.annotations.find((a) => a.id === id)!.segmentation as number[][];
        // Equal but for pixels whose centre lies on a slanted edge, which 6-decimal rounding moves.
        expect(maskIou(back, rasterizePolygons(rings, t.w, t.h)), `${key} mask ${id}: YOLO polygon fills like the COCO polygons`).toBeGreaterThanOrEqual(0.995);
        if (rings.length === 1) pts.forEach((v, i) => expect(Math.abs(v - rings[0][i])).toBeLessThan(1e-3 * Math.max(t.w, t.h)));
      }
    }
  });

  it('maps category ids to 0-based classes in id order, names from a COCO input', async () => {
    const coco = readJson<CocoDoc>(cocoFile);
    coco.categories = [
      { id: 2, name: 'b', supercategory: 'x' },
      { id: 5, name: 'e', supercategory: 'x' },
    ];
    coco.annotations.forEach((a, i) => (a.category_id = i === 0 ? 5 : 2));
    const input = fresh('cats.json');
    writeFileSync(input, JSON.stringify(coco));
    const out = fresh('yolo-cats');
    const r = await exportCli(['yolo', input, '--out', out]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/put \(or link\) the images/);
    expect((YAML.parse(readFileSync(path.join(out, 'data.yaml'), 'utf8')) as { names: unknown }).names).toEqual({ 0: 'b', 1: 'e' });
    const first = coco.images.find((im) => im.id === coco.annotations[0].image_id)!;
    const lines = readFileSync(path.join(out, 'labels', first.file_name.replace(/\.png$/, '.txt')), 'utf8').trimEnd().split('\n');
    const mine = coco.annotations.filter((a) => a.image_id === first.id);
    expect(lines.map((l) => Number(l.split(' ')[0]))).toEqual(mine.map((a) => (a.category_id === 5 ? 1 : 0)));
  });
});

/** Label Studio's documented pre-annotation task, field by field (docs: "Import pre-annotated data"). */
function expectTaskFormat(task: Record<string, unknown>, type: 'polygonlabels' | 'brushlabels'): void {
  expect(Object.keys(task).sort()).toEqual(['data', 'predictions']);
  expect(typeof (task.data as { image: unknown }).image).toBe('string');
  const preds = task.predictions as Record<string, unknown>[];
  expect(preds.length).toBe(1);
  expect(typeof preds[0].model_version).toBe('string');
  const results = preds[0].result as Record<string, unknown>[];
  if (results.length > 0) expect(typeof preds[0].score).toBe('number');
  const ids = new Set<string>();
  for (const res of results) {
    expect(typeof res.id).toBe('string');
    ids.add(res.id as string);
    expect(res.type).toBe(type);
    expect(res.from_name).toBe('label');
    expect(res.to_name).toBe('image');
    expect(Number.isInteger(res.original_width) && Number.isInteger(res.original_height)).toBe(true);
    expect(res.image_rotation).toBe(0);
    expect(typeof res.score).toBe('number');
    const value = res.value as Record<string, unknown>;
    if (type === 'polygonlabels') {
      expect(Object.keys(value).sort()).toEqual(['points', 'polygonlabels']);
      expect(value.polygonlabels).toEqual(['object']);
      const points = value.points as number[][];
      expect(points.length).toBeGreaterThanOrEqual(3);
      for (const p of points) {
        expect(p.length).toBe(2);
        expect(p[0] >= 0 && p[0] <= 100 && p[1] >= 0 && p[1] <= 100).toBe(true);
      }
    } else {
      expect(Object.keys(value).sort()).toEqual(['brushlabels', 'format', 'rle']);
      expect(value.format).toBe('rle');
      expect(value.brushlabels).toEqual(['object']);
      expect((value.rle as number[]).every((b) => Number.isInteger(b) && b >= 0 && b <= 255)).toBe(true);
    }
  }
  expect(ids.size).toBe(results.length);
}

describe('sam export labelstudio', () => {
  it('polygons: tasks in the documented format, points in percent that rasterize back, the labelling config beside them', async () => {
    const out = fresh('ls/tasks.json');
    const r = await exportCli(['labelstudio', cocoFile, '--out', out, '--image-url-prefix', '/data/local-files/?d=shapes/']);
    expect(r.code, r.stderr).toBe(0);
    const tasks = readJson<Record<string, unknown>[]>(out);
    const coco = readJson<CocoDoc>(cocoFile);
    expect(tasks.length).toBe(coco.images.length);
    const config = readFileSync(out.replace(/\.json$/, '.config.xml'), 'utf8');
    expect(config).toContain('<Image name="image" value="$image"');
    expect(config).toContain('<PolygonLabels name="label" toName="image">');
    expect(config).toContain('<Label value="object"');
    tasks.forEach((task, i) => {
      expectTaskFormat(task, 'polygonlabels');
      const image = coco.images[i];
      expect((task.data as { image: string }).image).toBe(`/data/local-files/?d=shapes/${image.file_name}`);
      const results = (task.predictions as { result: { id: string; original_width: number; original_height: number; value: { points: number[][] } }[] }[])[0].result;
      const anns = coco.annotations.filter((a) => a.image_id === image.id);
      for (const a of anns) {
        const mine = results.filter((res) => res.id === `m${a.id}` || res.id.startsWith(`m${a.id}p`));
        expect(mine.length).toBeGreaterThanOrEqual(1);
        expect(mine[0].original_width).toBe(image.width);
        expect(mine[0].original_height).toBe(image.height);
        const rings = mine.map((res) => res.value.points.flatMap(([x, y]) => [(x / 100) * image.width, (y / 100) * image.height]));
        const union = new Uint8Array(image.width * image.height);
        for (const ring of rings) rasterizePolygons([ring], image.width, image.height).forEach((v, j) => (union[j] |= v));
        const truth = decodeRle(a.segmentation as CocoRle).data;
        expect(maskIou(union, truth), `annotation ${a.id}`).toBeGreaterThanOrEqual(0.95);
      }
    });
  });

  it('brush: Label Studio RLE that @thi.ng/rle-pack decodes to the exact mask, holes included', async () => {
    const out = fresh('brush.json');
    const r = await exportCli(['labelstudio', masksDir, '--images', imagesDir, '--out', out, '--labelstudio-mode', 'brush', '--model-version', 'sam-test']);
    expect(r.code, r.stderr).toBe(0);
    expect(readFileSync(out.replace(/\.json$/, '.config.xml'), 'utf8')).toContain('<BrushLabels name="label" toName="image">');
    const tasks = readJson<Record<string, unknown>[]>(out);
    expect(tasks.map((t) => (t.data as { image: string }).image)).toEqual(['basic-320x240.png', 'gray-200x200.png', 'sub/speck-hole-256.png']);
    let id = 0;
    for (const task of tasks) {
      expectTaskFormat(task, 'brushlabels');
      const pred = (task.predictions as { model_version: string; result: { value: { rle: number[] } }[] }[])[0];
      expect(pred.model_version).toBe('sam-test');
      for (const res of pred.result) {
        const t = maskById.get(++id)!;
        const bytes = rlePackDecode(Uint8Array.from(res.value.rle));
        expect(bytes.length).toBe(t.w * t.h * 4);
        // label_studio_converter decode_from_annotation: reshape [h, w, 4], channel 3.
        const alpha = new Uint8Array(t.w * t.h);
        let channelsAgree = true;
        for (let i = 0; i < alpha.length; i++) {
          const v = bytes[4 * i + 3];
          if (bytes[4 * i] !== v || bytes[4 * i + 1] !== v || bytes[4 * i + 2] !== v || (v !== 0 && v !== 255)) channelsAgree = false;
          alpha[i] = v ? 1 : 0;
        }
        expect(channelsAgree).toBe(true);
        expect(same(alpha, t.mask), `mask ${id}`).toBe(true);
      }
    }
  });
});

describe('sam export cvat', () => {
  it('writes a COCO 1.0 file that passes Datumaro\'s COCO extractor checks, masks exact as RLE', async () => {
    const out = fresh('cvat.json');
    const r = await exportCli(['cvat', masksDir, '--images', imagesDir, '--out', out]);
    expect(r.code, r.stderr).toBe(0);
    const doc = readJson<CocoDoc>(out);
    expect(datumaroCocoCheck(doc)).toEqual([]);
    for (const a of doc.annotations) {
      const t = maskById.get(a.id)!;
      expect(same(decodeRle(a.segmentation as CocoRle).data, t.mask)).toBe(true);
      expect(a.category_id).toBe(1);
    }
  });

  it('--cvat-mode polygons passes the same checks; category id 0 is refused', async () => {
    const out = fresh('cvat-poly.json');
    const r = await exportCli(['cvat', cocoFile, '--out', out, '--cvat-mode', 'polygons']);
    expect(r.code, r.stderr).toBe(0);
    const doc = readJson<CocoDoc>(out);
    expect(datumaroCocoCheck(doc)).toEqual([]);
    expect(doc.annotations.every((a) => Array.isArray(a.segmentation))).toBe(true);
    const coco = readJson<CocoDoc>(cocoFile);
    coco.categories[0].id = 0;
    coco.annotations.forEach((a) => (a.category_id = 0));
    const zero = fresh('zero.json');
    writeFileSync(zero, JSON.stringify(coco));
    const bad = await exportCli(['cvat', zero, '--out', fresh('x.json')]);
    expect(bad.code).toBe(4);
    expect(bad.stderr).toMatch(/renumber the categories from 1/);
  });

  it('the Datumaro check itself catches what Datumaro refuses', () => {
    const doc = readJson<CocoDoc>(cocoFile);
    const broken = JSON.parse(JSON.stringify(doc)) as CocoDoc;
    (broken.annotations[0] as Record<string, unknown>).iscrowd = 0.5;
    broken.annotations[1].segmentation = [[1, 2, 3, 4]];
    (broken.images[0] as Record<string, unknown>).width = 320.5;
    broken.annotations[2].category_id = 9;
    expect(datumaroCocoCheck(broken).length).toBe(4);
  });
});

describe('sam export errors', () => {
  it('refuses a missing input, a bad COCO file, an unknown format and a folder without image names', async () => {
    const missing = await exportCli(['yolo', path.join(tmp.dir, 'nope'), '--out', fresh('o')]);
    expect(missing.code).toBe(4);
    expect(missing.stderr).toMatch(/nope: no such file or folder/);

    const coco = readJson<CocoDoc>(cocoFile);
    delete (coco.annotations[0] as Record<string, unknown>).image_id;
    const bad = fresh('bad.json');
    writeFileSync(bad, JSON.stringify(coco));
    const badRun = await exportCli(['coco-polygons', bad, '--out', fresh('o.json')]);
    expect(badRun.code).toBe(4);
    expect(badRun.stderr).toContain(`${bad}: annotations[0] needs integer "id", "image_id" and "category_id"`);
    expect(badRun.stderr.trim().split('\n').length).toBe(1);

    const unknown = await exportCli(['pascal', masksDir, '--out', fresh('o')]);
    expect(unknown.code).toBe(2);

    const noNames = await exportCli(['labelstudio', masksDir, '--out', fresh('o.json')]);
    expect(noNames.code).toBe(2);
    expect(noNames.stderr).toMatch(/--images DIR/);
  });

  it('will not replace a folder that is not a YOLO export', async () => {
    const dir = fresh('precious');
    mkdirSync(dir);
    writeFileSync(path.join(dir, 'keep.txt'), 'x');
    const r = await exportCli(['yolo', masksDir, '--out', dir]);
    expect(r.code).toBe(6);
    expect(readdirSync(dir)).toEqual(['keep.txt']);
  });
});
