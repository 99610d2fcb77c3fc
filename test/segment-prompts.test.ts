/**
 * `sam segment --prompts`: one mask per box/prompt of a dataset file over folders, end to end
 * through the CLI on the colour oracle (true masks known) and on the converted random vit_t
 * (the real batched decoder: batched and one-call-per-prompt paths give the same masks).
 */
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeRle } from '../src/core/rle.js';
import type { CocoRle } from '../src/core/types.js';
import { fixtureModel, maskIou, runSam, tempDir } from './helpers/cli.js';
import { tightBbox } from './helpers/boxes.js';
import { convertGoldenPath, sharedDir } from './helpers/golden.js';
import { copyScenes, loadScene, type LoadedScene } from './helpers/scenes.js';

interface Annotation {
  id: number;
  image_id: number;
  category_id: number;
  category_name?: string;
  segmentation: CocoRle;
  area: number;
  bbox: number[];
  iscrowd: number;
  score?: number;
  predicted_iou: number;
  prompt: { box?: number[]; points?: number[][] };
  [k: string]: unknown;
}
interface Coco {
  info: Record<string, unknown>;
  images: { id: number; file_name: string; width: number; height: number }[];
  annotations: Annotation[];
  categories: { id: number; name: string; supercategory: string }[];
}

const SCENES = ['basic-320x240', 'wide-640x360', 'tall-200x500', 'exif-rot6-300x200', 'sub/gray-200x200'];
const tmp = tempDir('sam-prompts-');
afterAll(() => tmp.cleanup());
const imagesDir = join(tmp.dir, 'images');
let n = 0;
const fresh = (name: string): string => join(tmp.dir, `${name}-${n++}`);
const readJson = <T>(p: string): T => JSON.parse(readFileSync(p, 'utf8')) as T;
const scenes = new Map<string, LoadedScene>();
const totalShapes = (): number => [...scenes.values()].reduce((s, sc) => s + sc.shapes.length, 0);

/** Every annotation's mask is a real COCO mask of its image whose bbox/area are the mask's own. */
function checkAnnotation(a: Annotation, width: number, height: number): Uint8Array {
  expect(a.segmentation.size).toEqual([height, width]);
  const m = decodeRle(a.segmentation);
  expect(a.bbox).toEqual(tightBbox(m.data, width));
  expect(a.area).toBe(m.data.reduce((s, v) => s + v, 0));
  expect(Number.isInteger(a.iscrowd)).toBe(true);
  return m.data;
}

/** A bbox-only COCO file of the scenes: categories by shape kind, odd ids, an extra field per annotation. */
function writeBboxCoco(file: string): Coco {
  const images: Coco['images'] = [];
  const annotations: Record<string, unknown>[] = [];
  const kinds: string[] = [];
  SCENES.forEach((name, i) => {
    const s = scenes.get(name)!;
    images.push({ id: 100 + i, file_name: `${name}.png`, width: s.width, height: s.height });
    for (const [k, shape] of s.shapes.entries()) {
      const kind = shape.name.split('-').slice(1).join('-');
      if (!kinds.includes(kind)) kinds.push(kind);
      annotations.push({ id: 1000 + 7 * annotations.length, image_id: 100 + i, category_id: kinds.indexOf(kind) + 1, bbox: shape.bbox, area: shape.area, iscrowd: 0, shape: shape.name, order: k });
    }
  });
  const coco = { images, annotations, categories: kinds.map((name, i) => ({ id: i + 1, name, supercategory: 'shape' })) } as unknown as Coco;
  writeFileSync(file, JSON.stringify(coco));
  return coco;
}

beforeAll(async () => {
  copyScenes(imagesDir, SCENES);
  for (const name of SCENES) scenes.set(name, await loadScene(name.split('/').pop()!));
});

describe('sam segment --prompts on the oracle (boxes → masks)', () => {
  it('a bbox-only COCO file: one mask per box, IoU >= 0.9 with the true shape, ids, categories and extra fields kept', async () => {
    const promptsFile = join(tmp.dir, 'bbox.json');
    const input = writeBboxCoco(promptsFile);
    const out = fresh('out');
    const cocoFile = fresh('coco') + '.json';
    const r = await runSam(['segment', imagesDir, '--prompts', promptsFile, '--model', fixtureModel('oracle-batched'), '--out', out, '--coco', cocoFile, '-q']);
    expect(r.stderr).toContain(`0 failed, ${totalShapes()} masks`);
    expect(r.code).toBe(0);
    const coco = readJson<Coco>(cocoFile);
    expect(coco.categories).toEqual(readJson<Coco>(promptsFile).categories);
    expect(coco.images).toEqual(input.images);
    expect(coco.annotations.map((a) => a.id)).toEqual(input.annotations.map((a) => a.id));
    for (const [i, a] of coco.annotations.entries()) {
      const src = input.annotations[i] as unknown as Record<string, unknown> & { bbox: number[] };
      expect(a.image_id).toBe(src.image_id);
      expect(a.category_id).toBe(src.category_id);
      expect(a.shape).toBe(src.shape);
      expect(a.order).toBe(src.order);
      expect(a.category_name).toBeUndefined();
      const [x, y, w, h] = src.bbox;
      expect(a.prompt).toEqual({ box: [x, y, x + w, y + h] });
      const img = coco.images.find((im) => im.id === a.image_id)!;
      const mask = checkAnnotation(a, img.width, img.height);
      const scene = scenes.get(img.file_name.replace(/\.png$/, ''))!;
      const iou = maskIou(mask, scene.masks.get(src.shape as string)!);
      expect(iou, `${src.shape}`).toBeGreaterThanOrEqual(0.9);
    }
    // Per-image files: the same annotations plus category_name, under the image's key.
    const perImage = readJson<Annotation[]>(join(out, 'sub', 'gray-200x200.json'));
    const inDataset = coco.annotations.filter((a) => a.image_id === 104);
    expect(perImage.map(({ category_name, ...a }) => a)).toEqual(inDataset);
    expect(perImage.map((a) => a.category_name)).toEqual(inDataset.map((a) => coco.categories.find((c) => c.id === a.category_id)!.name));
  });

  it('sam export reads the per-image files: categories and names carry into YOLO labels', async () => {
    const promptsFile = fresh('bbox-export') + '.json';
    const input = writeBboxCoco(promptsFile);
    const out = fresh('out');
    expect((await runSam(['segment', imagesDir, '--prompts', promptsFile, '--model', fixtureModel('oracle-batched'), '--out', out, '-q'])).code).toBe(0);
    const yolo = fresh('yolo-export');
    const r = await runSam(['export', 'yolo', out, '--images', imagesDir, '--out', yolo, '-q']);
    expect(r.code, r.stderr).toBe(0);
    const yaml = readFileSync(join(yolo, 'data.yaml'), 'utf8');
    for (const c of input.categories) expect(yaml).toContain(`${c.id - 1}: ${c.name}`);
    const s = scenes.get('basic-320x240')!;
    const classes = readFileSync(join(yolo, 'labels', 'basic-320x240.txt'), 'utf8').trim().split('\n').map((l) => Number(l.split(' ')[0]));
    const want = input.annotations.filter((a) => a.image_id === 100).map((a) => a.category_id - 1);
    expect(classes).toEqual(want);
    expect(classes).toHaveLength(s.shapes.length);
  });

  it('YOLO labels with a data.yaml: class + 1 is the category id, names from the yaml, masks match', async () => {
    const root = fresh('yolo');
    const labels = join(root, 'labels');
    const names = ['rect', 'disc', 'ellipse', 'triangle', 'ring', 'square'];
    for (const name of SCENES) {
      const s = scenes.get(name)!;
      const lines = s.shapes.map((shape) => {
        const [x, y, w, h] = shape.bbox;
        const cls = Math.max(0, names.indexOf(shape.name.split('-').slice(1).join('-')));
        return `${cls} ${(x + w / 2) / s.width} ${(y + h / 2) / s.height} ${w / s.width} ${h / s.height}`;
      });
      mkdirSync(join(labels, name, '..'), { recursive: true });
      writeFileSync(join(labels, `${name}.txt`), `${lines.join('\n')}\n`);
    }
    writeFileSync(join(root, 'data.yaml'), `path: .\ntrain: images\nnames:\n${names.map((nm, i) => `  ${i}: ${nm}`).join('\n')}\n`);
    const cocoFile = join(root, 'masks.json');
    const r = await runSam(['segment', imagesDir, '--prompts', labels, '--model', fixtureModel('oracle-batched'), '--coco', cocoFile, '-q']);
    expect(r.stderr).toContain(`0 failed, ${totalShapes()} masks`);
    expect(r.code).toBe(0);
    const coco = readJson<Coco>(cocoFile);
    expect(coco.categories).toEqual(names.map((name, i) => ({ id: i + 1, name, supercategory: '' })));
    expect(coco.images.map((im) => im.file_name).sort()).toEqual(SCENES.map((s) => `${s}.png`).sort());
    let k = 0;
    for (const img of coco.images) {
      const scene = scenes.get(img.file_name.replace(/\.png$/, ''))!;
      const anns = coco.annotations.filter((a) => a.image_id === img.id);
      expect(anns).toHaveLength(scene.shapes.length);
      anns.forEach((a, j) => {
        const shape = scene.shapes[j];
        expect(a.id).toBe(++k);
        expect(coco.categories[a.category_id - 1].name).toBe(names[Math.max(0, names.indexOf(shape.name.split('-').slice(1).join('-')))]);
        expect(maskIou(checkAnnotation(a, img.width, img.height), scene.masks.get(shape.name)!), shape.name).toBeGreaterThanOrEqual(0.9);
      });
    }
    // --coco alone keeps its per-image files hidden beside it only until the dataset is complete.
    expect(readdirSync(root).filter((f) => f.startsWith('.'))).toEqual([]);
  });

  it('JSON Lines prompts: points, boxes and both, per line; categories by name', async () => {
    const lines: string[] = [];
    for (const name of SCENES) {
      const s = scenes.get(name)!;
      s.shapes.forEach((shape, j) => {
        const [x, y, w, h] = shape.bbox;
        const o: Record<string, unknown> = { image: `${name}.png`, category: shape.name.split('-')[0], note: `${name}#${j}` };
        if (j % 3 === 0) o.points = [[shape.point[0], shape.point[1]]];
        else if (j % 3 === 1) o.box = [x, y, x + w, y + h];
        else {
          o.box = [x, y, x + w, y + h];
          o.points = [[shape.point[0], shape.point[1], 1]];
        }
        lines.push(JSON.stringify(o));
      });
    }
    const file = fresh('prompts') + '.jsonl';
    writeFileSync(file, lines.join('\n') + '\n');
    const out = fresh('out');
    const r = await runSam(['segment', imagesDir, '--prompts', file, '--model', fixtureModel(), '--out', out, '-q']);
    expect(r.stderr).toContain(`0 failed, ${totalShapes()} masks`);
    expect(r.code).toBe(0);
    for (const name of SCENES) {
      const s = scenes.get(name)!;
      const anns = readJson<Annotation[]>(join(out, `${name}.json`));
      expect(anns.map((a) => a.note)).toEqual(s.shapes.map((_, j) => `${name}#${j}`));
      anns.forEach((a, j) => {
        const shape = s.shapes[j];
        expect(a.category_name).toBe(shape.name.split('-')[0]);
        expect(maskIou(checkAnnotation(a, s.width, s.height), s.masks.get(shape.name)!), `${name} ${shape.name}`).toBeGreaterThanOrEqual(0.9);
      });
    }
  });

  it('detection results with --coco-images and --score-thresh; a rerun skips finished images', async () => {
    const images = writeBboxCoco(fresh('imgs') + '.json');
    const imagesFile = join(tmp.dir, `images-${n++}.json`);
    writeFileSync(imagesFile, JSON.stringify({ images: images.images, categories: images.categories }));
    const results = images.annotations.map((a, i) => ({ image_id: a.image_id, category_id: a.category_id, bbox: a.bbox, score: i % 2 === 0 ? 0.9 : 0.2 }));
    const file = fresh('results') + '.json';
    writeFileSync(file, JSON.stringify(results));
    const out = fresh('out');
    const cocoFile = fresh('coco') + '.json';
    const args = ['segment', imagesDir, '--prompts', file, '--coco-images', imagesFile, '--score-thresh', '0.5', '--model', fixtureModel('oracle-batched'), '--out', out, '--coco', cocoFile];
    const r = await runSam(args);
    expect(r.code).toBe(0);
    expect(r.stderr).toContain('(coco-results): 7 prompts on 5 images, 7 below --score-thresh left out');
    const coco = readJson<Coco>(cocoFile);
    expect(coco.annotations.map((a) => a.score)).toEqual(results.filter((x) => x.score >= 0.5).map((x) => x.score));
    expect(coco.annotations.map((a) => a.id)).toEqual(results.flatMap((x, i) => (x.score >= 0.5 ? [i + 1] : [])));
    const again = await runSam(args);
    expect(again.code).toBe(0);
    expect(again.stderr).toMatch(/0 done, 5 skipped, 0 failed/);
    expect(readJson<Coco>(cocoFile)).toEqual(coco);
    // Without --coco-images a results list is refused before any work.
    const bare = await runSam(['segment', imagesDir, '--prompts', file, '--model', fixtureModel(), '--coco', fresh('c') + '.json']);
    expect(bare.code).toBe(2);
    expect(bare.stderr).toMatch(/detection-results list.*--coco-images/);
  });

  it('--shard i/n: disjoint shares that together cover every image', async () => {
    const promptsFile = fresh('shard') + '.json';
    writeBboxCoco(promptsFile);
    const outs = [fresh('s0'), fresh('s1')];
    for (const [i, out] of outs.entries()) {
      const r = await runSam(['segment', imagesDir, '--prompts', promptsFile, '--model', fixtureModel('oracle-batched'), '--out', out, '--shard', `${i}/2`, '-q']);
      expect(r.code, r.stderr).toBe(0);
    }
    const files = outs.map((o) => readdirSync(o, { recursive: true }).map(String).filter((f) => f.endsWith('.json')).sort());
    expect(files[0].length).toBeGreaterThan(0);
    expect(files[1].length).toBeGreaterThan(0);
    expect(files[0].filter((f) => files[1].includes(f))).toEqual([]);
    expect([...files[0], ...files[1]].sort()).toEqual(SCENES.map((s) => `${s}.json`).sort());
  });

  it('bad prompts get one line each and the run carries on (exit 5); finished masks are written', async () => {
    const s = scenes.get('basic-320x240')!;
    const coco = {
      images: [
        { id: 1, file_name: 'basic-320x240.png', width: 320, height: 240 },
        { id: 2, file_name: 'missing.png', width: 10, height: 10 },
      ],
      annotations: [
        { id: 1, image_id: 1, category_id: 1, bbox: s.shapes[0].bbox },
        { id: 2, image_id: 1, category_id: 1, bbox: [300, 200, 100, 100] },
        { id: 3, image_id: 1, category_id: 1, bbox: [10, 10, 0, 20] },
        { id: 4, image_id: 9, category_id: 1, bbox: [10, 10, 20, 20] },
        { id: 5, image_id: 1, category_id: 7, bbox: [10, 10, 20, 20] },
        { id: 6, image_id: 2, category_id: 1, bbox: [1, 1, 2, 2] },
        { id: 7, image_id: 1, category_id: 1, bbox: [0, 0, 320.4, 240.3] },
      ],
      categories: [{ id: 1, name: 'thing', supercategory: '' }],
    };
    const file = fresh('bad') + '.json';
    writeFileSync(file, JSON.stringify(coco));
    const cocoFile = fresh('coco') + '.json';
    const r = await runSam(['segment', imagesDir, '--prompts', file, '--model', fixtureModel(), '--coco', cocoFile, '-q']);
    expect(r.code).toBe(5);
    expect(r.stderr).toContain('annotation 2: box 300,200,400,300 is outside the 320x240 image');
    expect(r.stderr).toContain('annotation 3: bbox [10,10,0,20] is empty');
    expect(r.stderr).toContain('annotation 4: unknown image_id 9');
    expect(r.stderr).toContain('annotation 5: unknown category_id 7');
    expect(r.stderr).toContain("image 'missing.png' is not among the inputs");
    const out = readJson<Coco>(cocoFile);
    // Box 7 ends 0.4 px past the border: clipped, not refused.
    expect(out.annotations.map((a) => a.id)).toEqual([1, 7]);
    expect(out.annotations[1].prompt.box).toEqual([0, 0, 320, 240]);
    expect(maskIou(checkAnnotation(out.annotations[0], 320, 240), s.masks.get(s.shapes[0].name)!)).toBeGreaterThanOrEqual(0.9);
  });

  it('refuses one-image options with --prompts and dataset options without it (exit 2)', async () => {
    const img = join(imagesDir, 'basic-320x240.png');
    const a = await runSam(['segment', imagesDir, '--prompts', join(tmp.dir, 'bbox.json'), '--model', fixtureModel(), '--box', '1,1,5,5', '--out', fresh('o')]);
    expect(a.code).toBe(2);
    expect(a.stderr).toMatch(/--box cannot go with --prompts/);
    const b = await runSam(['segment', img, '--model', fixtureModel(), '--box', '1,1,5,5', '--out', fresh('o') + '.json', '--coco', 'x.json']);
    expect(b.code).toBe(2);
    expect(b.stderr).toMatch(/--coco need --prompts/);
    const c = await runSam(['segment', img, img, '--model', fixtureModel(), '--box', '1,1,5,5', '--out', fresh('o') + '.json']);
    expect(c.code).toBe(2);
    expect(c.stderr).toMatch(/segment takes one image \(got 2\)/);
    const d = await runSam(['segment', imagesDir, '--prompts', join(tmp.dir, 'bbox.json'), '--model', fixtureModel()]);
    expect(d.code).toBe(2);
    expect(d.stderr).toMatch(/--prompts needs --out DIR .*and\/or --coco FILE/);
    const e = await runSam(['segment', imagesDir, '--prompts', join(tmp.dir, 'nope.json'), '--model', fixtureModel(), '--out', fresh('o')]);
    expect(e.code).toBe(4);
    expect(e.stderr).toMatch(/nope\.json does not exist/);
  });
});

describe('sam segment --prompts on the converted random vit_t (the real decoders)', () => {
  const modelDir = join(tmp.dir, 'vit_t');
  const dogDir = join(tmp.dir, 'dog');
  let promptsFile = '';

  beforeAll(async () => {
    const c = await runSam(['models', 'convert', convertGoldenPath('vit_t-random.pth'), '--type', 'vit_t', '--out', modelDir, '-q']);
    expect(c.code, c.stderr).toBe(0);
    mkdirSync(dogDir, { recursive: true });
    writeFileSync(join(dogDir, 'dog.jpg'), readFileSync(join(sharedDir(), 'images', 'dog.jpg')));
    const { width, height } = await sharp(join(dogDir, 'dog.jpg')).metadata();
    // 9 boxes (more than one batched call, not a multiple of its rows), and a point prompt and a point+box prompt.
    const lines: string[] = [];
    for (let i = 0; i < 9; i++) {
      const x0 = ((i * 37) % 10) * (width! / 14);
      const y0 = ((i * 53) % 10) * (height! / 14);
      lines.push(JSON.stringify({ image: 'dog.jpg', box: [x0, y0, x0 + width! / 4, y0 + height! / 5] }));
    }
    lines.push(JSON.stringify({ image: 'dog.jpg', points: [[width! / 2, height! / 2]] }));
    lines.push(JSON.stringify({ image: 'dog.jpg', points: [[width! / 3, height! / 3, 0]], box: [10, 10, width! / 2, height! / 2] }));
    promptsFile = join(tmp.dir, 'dog.jsonl');
    writeFileSync(promptsFile, lines.join('\n'));
  });

  it('the split and batched decoders give the masks of one decoder call per prompt, and of sam segment --box', async () => {
    const outs: Annotation[][] = [];
    for (const decoder of ['batched', 'single', 'split']) {
      const out = fresh(`dog-${decoder}`);
      const r = await runSam(['segment', dogDir, '--prompts', promptsFile, '--model', modelDir, '--decoder', decoder, '--out', out, '-q']);
      expect(r.code, r.stderr).toBe(0);
      outs.push(readJson<Annotation[]>(join(out, 'dog.json')));
    }
    const [batched, single, split] = outs;
    expect(batched).toHaveLength(11);
    batched.forEach((a, i) => {
      expect(a.prompt).toEqual(single[i].prompt);
      expect(a.segmentation).toEqual(single[i].segmentation);
      expect(Math.abs(a.predicted_iou - single[i].predicted_iou)).toBeLessThan(1e-5);
    });
    // The split graphs sum in another order (logits within ~1e-5 of the batched decoder's, see
    // convert-decoder-split.test.ts): pixels whose logit is within that of 0 may flip. Random
    // weights make noise masks, where many pixels sit near 0: the worst case for this.
    const ious = split.map((a, i) => maskIou(decodeRle(a.segmentation).data, decodeRle(single[i].segmentation).data));
    console.log(`split vs single mask IoU: min ${Math.min(...ious).toFixed(6)}, identical ${ious.filter((x) => x === 1).length} of ${ious.length}`);
    split.forEach((a, i) => {
      expect(a.prompt).toEqual(single[i].prompt);
      expect(ious[i]).toBeGreaterThanOrEqual(0.9999);
      expect(Math.abs(a.predicted_iou - single[i].predicted_iou)).toBeLessThan(1e-4);
    });
    // The one-image path (the main decoder's in-graph upscaling) on the first box.
    const one = fresh('one') + '.json';
    const box = batched[0].prompt.box!;
    const r = await runSam(['segment', join(dogDir, 'dog.jpg'), '--model', modelDir, '--box', box.join(','), '--out', one]);
    expect(r.code, r.stderr).toBe(0);
    const ref = readJson<{ masks: { segmentation: CocoRle }[] }>(one).masks[0];
    expect(maskIou(decodeRle(ref.segmentation).data, decodeRle(batched[0].segmentation).data)).toBeGreaterThanOrEqual(0.999);
  });

  it('--embeddings reuses sam embed files and gives the same masks', async () => {
    const emb = fresh('emb');
    const e = await runSam(['embed', dogDir, '--model', modelDir, '--out', emb, '-q']);
    expect(e.code, e.stderr).toBe(0);
    const [a, b] = [fresh('a'), fresh('b')];
    expect((await runSam(['segment', dogDir, '--prompts', promptsFile, '--model', modelDir, '--out', a, '-q'])).code).toBe(0);
    const r = await runSam(['segment', dogDir, '--prompts', promptsFile, '--model', modelDir, '--embeddings', emb, '--out', b]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).not.toMatch(/encoder \d/);
    expect(readFileSync(join(b, 'dog.json'), 'utf8')).toBe(readFileSync(join(a, 'dog.json'), 'utf8'));
    expect(existsSync(join(b, 'dog.json'))).toBe(true);
  });
});
