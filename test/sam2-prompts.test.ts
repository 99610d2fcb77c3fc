/**
 * `sam segment --prompts` on a SAM 2 model (the golden random sam2.1_hiera_tiny checkpoint
 * converted by `sam models convert`) on dog.jpg: every prompt's mask is the one `sam segment`
 * gives for that prompt alone (same RLE, predicted_iou within 1e-6), whatever the batching; the
 * multimask choice follows the v1 rules; SAM 2 embeddings from `sam embed` are reused.
 */
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeRle } from '../src/core/rle.js';
import type { CocoRle } from '../src/core/types.js';
import { maskIou, runSam, tempDir } from './helpers/cli.js';
import { tightBbox } from './helpers/boxes.js';
import { sharedDir } from './helpers/golden.js';

interface Annotation {
  id: number;
  image_id: number;
  category_id: number;
  category_name?: string;
  segmentation: CocoRle;
  area: number;
  bbox: number[];
  iscrowd: number;
  predicted_iou: number;
  prompt: { box?: number[]; points?: number[][] };
  [k: string]: unknown;
}
interface Coco {
  images: { id: number; file_name: string; width: number; height: number }[];
  annotations: Annotation[];
  categories: { id: number; name: string; supercategory?: string }[];
}
interface Prompt {
  box?: [number, number, number, number];
  points?: [number, number, number][];
}
type Flag = '--multimask' | '--single' | undefined;

const tmp = tempDir('sam-sam2-prompts-');
afterAll(() => tmp.cleanup());
const modelDir = path.join(tmp.dir, 'sam2.1_hiera_tiny');
const imagesDir = path.join(tmp.dir, 'images');
const dog = path.join(imagesDir, 'dog.jpg');
const embDir = path.join(tmp.dir, 'emb');
const [W, H] = [800, 534];
let n = 0;
const fresh = (name: string): string => path.join(tmp.dir, `${name}-${n++}`);
const readJson = <T>(p: string): T => JSON.parse(readFileSync(p, 'utf8')) as T;

/** Six boxes: more than one decoder call of SAM2_DECODER_CHUNK (4) rows. */
const BOXES: [number, number, number, number][] = [
  [10, 215, 430, 530],
  [500, 20, 790, 300],
  [100.5, 100.25, 400, 400],
  [0, 0, 800, 534],
  [250, 120, 330, 260],
  [600, 300, 760, 520],
];
/** Lone points (multimask by default), box + point, two points, a box: the mix of a JSONL file. */
const MIXED: Prompt[] = [
  { points: [[320, 300, 1]] },
  { box: [100, 100, 400, 400], points: [[200, 200, 1]] },
  { points: [[120.5, 80, 1]] },
  { points: [[200, 150, 1], [600, 400, 0]] },
  { box: [40, 60, 420, 380], points: [[300, 100, 0]] },
  { points: [[700, 450, 1]] },
  { box: [500, 20, 790, 300] },
];

/** `sam segment` on one prompt: its best mask (the one --prompts keeps) and its predicted IoU. */
async function reference(p: Prompt, flag: Flag): Promise<{ segmentation: CocoRle; predicted_iou: number }> {
  const out = fresh('one') + '.json';
  const args = ['segment', dog, '--model', modelDir, '--embedding', path.join(embDir, 'dog.safetensors'), '--out', out];
  if (p.box) args.push('--box', p.box.join(','));
  if (p.points) args.push('--points', p.points.map((q) => q.join(',')).join(' '));
  if (flag) args.push(flag);
  const r = await runSam(args);
  expect(r.code, r.stderr).toBe(0);
  const doc = readJson<{ best: number; masks: { segmentation: CocoRle; predicted_iou: number }[] }>(out);
  return doc.masks[doc.best];
}

/** The tight box [x, y, w, h] and area of an RLE mask, from its pixels. */
function tightBoxAndArea(rle: CocoRle): { bbox: number[]; area: number } {
  const m = decodeRle(rle);
  return { bbox: tightBbox(m.data, m.w), area: m.data.reduce((n, v) => n + v, 0) };
}

/**
 * Each annotation: a mask of the photo's size whose bbox/area are its own, equal to `sam segment`
 * on its prompt alone: the same RLE through the plain graphs (`exact`), and through the default
 * split decoder (factorized attention: float32 rounding apart, so a pixel whose logit is within
 * ~1e-7 of 0 may flip) mask IoU >= 0.9999 and the same predicted IoU.
 */
async function expectSameAsSegment(anns: readonly Annotation[], flag: Flag, exact = false): Promise<void> {
  for (const a of anns) {
    expect(a.segmentation.size).toEqual([H, W]);
    expect({ bbox: a.bbox, area: a.area }).toEqual(tightBoxAndArea(a.segmentation));
    const prompt: Prompt = { ...(a.prompt.box ? { box: a.prompt.box as Prompt['box'] } : {}), ...(a.prompt.points ? { points: a.prompt.points as Prompt['points'] } : {}) };
    const ref = await reference(prompt, flag);
    if (exact) expect(a.segmentation, JSON.stringify(a.prompt)).toEqual(ref.segmentation);
    else expect(maskIou(decodeRle(a.segmentation).data, decodeRle(ref.segmentation).data), JSON.stringify(a.prompt)).toBeGreaterThanOrEqual(0.9999);
    expect(Math.abs(a.predicted_iou - ref.predicted_iou), JSON.stringify(a.prompt)).toBeLessThanOrEqual(1e-6);
  }
}

const jsonl = (file: string, prompts: readonly Prompt[]): string => {
  writeFileSync(file, prompts.map((p, i) => JSON.stringify({ image: 'dog.jpg', ...p, category: i % 2 === 0 ? 'dog' : 'thing', note: `p${i}` })).join('\n') + '\n');
  return file;
};

beforeAll(async () => {
  const r = await runSam(['models', 'convert', path.join(sharedDir(), 'golden', 'sam2', 'sam2.1_hiera_tiny-random-fp16.pt'), '--out', modelDir, '-q']);
  expect(r.code, r.stderr).toBe(0);
  mkdirSync(imagesDir, { recursive: true });
  copyFileSync(path.join(sharedDir(), 'images', 'dog.jpg'), dog);
  const e = await runSam(['embed', imagesDir, '--model', modelDir, '--out', embDir, '-q']);
  expect(e.code, e.stderr).toBe(0);
}, 300_000);

describe('sam segment --prompts on SAM 2.1 tiny', () => {
  it('a bbox-only COCO file: one mask per box, as sam segment --box gives it; ids, categories, extra fields and the image size kept', async () => {
    const promptsFile = path.join(tmp.dir, 'boxes.json');
    const input = {
      images: [{ id: 7, file_name: 'dog.jpg', width: W, height: H }],
      annotations: BOXES.map(([x0, y0, x1, y1], i) => ({ id: 100 + 3 * i, image_id: 7, category_id: i % 2 === 0 ? 3 : 5, bbox: [x0, y0, x1 - x0, y1 - y0], area: 1, iscrowd: 0, note: `box${i}` })),
      categories: [
        { id: 3, name: 'dog', supercategory: 'animal' },
        { id: 5, name: 'thing', supercategory: 'other' },
      ],
    };
    writeFileSync(promptsFile, JSON.stringify(input));
    const out = fresh('boxes');
    const cocoFile = fresh('boxes') + '.json';
    const r = await runSam(['segment', imagesDir, '--prompts', promptsFile, '--model', modelDir, '--out', out, '--coco', cocoFile]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain(`0 failed, ${BOXES.length} masks`);
    const coco = readJson<Coco>(cocoFile);
    expect(coco.images).toEqual(input.images);
    expect(coco.categories).toEqual(input.categories);
    expect(coco.annotations.map((a) => [a.id, a.image_id, a.category_id, a.note, a.iscrowd])).toEqual(input.annotations.map((a) => [a.id, 7, a.category_id, a.note, 0]));
    coco.annotations.forEach((a, i) => expect(a.prompt).toEqual({ box: BOXES[i] }));
    await expectSameAsSegment(coco.annotations, undefined);
    const perImage = readJson<Annotation[]>(path.join(out, 'dog.json'));
    expect(perImage.map((a) => a.category_name)).toEqual(coco.annotations.map((a) => (a.category_id === 3 ? 'dog' : 'thing')));
  }, 120_000);

  it('JSON Lines with lone points (best of 3 masks), box + point, two points and a box: each mask as sam segment gives it', async () => {
    const promptsFile = jsonl(path.join(tmp.dir, 'mixed.jsonl'), MIXED);
    const out = fresh('mixed');
    const r = await runSam(['segment', imagesDir, '--prompts', promptsFile, '--model', modelDir, '--out', out, '-q']);
    expect(r.code, r.stderr).toBe(0);
    const anns = readJson<Annotation[]>(path.join(out, 'dog.json'));
    expect(anns).toHaveLength(MIXED.length);
    // Every prompt once, with its category and extra field.
    expect(anns.map((a) => a.note).sort()).toEqual(MIXED.map((_, i) => `p${i}`).sort());
    for (const a of anns) expect(a.category_name).toBe(Number(String(a.note).slice(1)) % 2 === 0 ? 'dog' : 'thing');
    await expectSameAsSegment(anns, undefined);
  }, 120_000);

  it('--multimask and --single force the output kind for every prompt, as they do for sam segment', async () => {
    const prompts = MIXED.slice(0, 4);
    for (const flag of ['--multimask', '--single'] as const) {
      const out = fresh(`forced${flag}`);
      const r = await runSam(['segment', imagesDir, '--prompts', jsonl(fresh('forced') + '.jsonl', prompts), '--model', modelDir, '--out', out, flag, '-q']);
      expect(r.code, r.stderr).toBe(0);
      const anns = readJson<Annotation[]>(path.join(out, 'dog.json'));
      expect(anns).toHaveLength(prompts.length);
      await expectSameAsSegment(anns, flag);
    }
  }, 120_000);

  it('--decoder batched (the plain graphs) gives sam segment\'s masks exactly; single (one call per prompt) the same file; split is the default', async () => {
    const promptsFile = jsonl(path.join(tmp.dir, 'plain.jsonl'), [...BOXES.slice(0, 2).map((box) => ({ box })), ...MIXED]);
    const texts: string[] = [];
    for (const extra of [['--decoder', 'batched'], ['--decoder', 'single']]) {
      const out = fresh('plain');
      const r = await runSam(['segment', imagesDir, '--prompts', promptsFile, '--model', modelDir, '--out', out, '-q', ...extra]);
      expect(r.code, r.stderr).toBe(0);
      texts.push(readFileSync(path.join(out, 'dog.json'), 'utf8'));
    }
    expect(texts[1]).toBe(texts[0]);
    await expectSameAsSegment(JSON.parse(texts[0]) as Annotation[], undefined, true);
    const split = fresh('split-default');
    const r = await runSam(['segment', imagesDir, '--prompts', promptsFile, '--model', modelDir, '--out', split, '-q', '--decoder', 'split']);
    expect(r.code, r.stderr).toBe(0);
    const dflt = fresh('default');
    expect((await runSam(['segment', imagesDir, '--prompts', promptsFile, '--model', modelDir, '--out', dflt, '-q'])).code).toBe(0);
    expect(readFileSync(path.join(dflt, 'dog.json'), 'utf8')).toBe(readFileSync(path.join(split, 'dog.json'), 'utf8'));
  }, 120_000);

  it('--embeddings reuses SAM 2 embeddings: the same file as encoding the image', async () => {
    const promptsFile = jsonl(path.join(tmp.dir, 'all.jsonl'), [...BOXES.map((box) => ({ box })), ...MIXED]);
    const texts: string[] = [];
    for (const extra of [[], ['--embeddings', embDir]]) {
      const out = fresh('same');
      const r = await runSam(['segment', imagesDir, '--prompts', promptsFile, '--model', modelDir, '--out', out, ...extra]);
      expect(r.code, r.stderr).toBe(0);
      if (extra[0] === '--embeddings') expect(r.stderr).not.toMatch(/encoder \d/);
      else expect(r.stderr).toMatch(/encoder \d/);
      texts.push(readFileSync(path.join(out, 'dog.json'), 'utf8'));
    }
    expect(JSON.parse(texts[0])).toHaveLength(BOXES.length + MIXED.length);
    for (const t of texts.slice(1)) expect(t).toBe(texts[0]);
  }, 120_000);

  it('a samexporter-style folder (no single-mask decoder): a warning, and each mask as sam segment on that folder gives it', async () => {
    const sx = path.join(tmp.dir, 'samexporter');
    mkdirSync(sx, { recursive: true });
    copyFileSync(path.join(modelDir, 'encoder.onnx'), path.join(sx, 'sam2.1_hiera_tiny.encoder.onnx'));
    copyFileSync(path.join(modelDir, 'decoder.onnx'), path.join(sx, 'sam2.1_hiera_tiny.decoder.onnx'));
    const prompts: Prompt[] = [{ box: BOXES[0] }, { points: [[320, 300, 1]] }, MIXED[1]];
    const out = fresh('sx');
    const r = await runSam(['segment', imagesDir, '--prompts', jsonl(fresh('sx') + '.jsonl', prompts), '--model', sx, '--out', out, '-q']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr.trim().split('\n').filter((l) => l.includes('warning'))).toEqual([expect.stringMatching(/warning: .* has no SAM 2 single-mask decoder; prompts other than a lone point get the best of its 3 masks/)]);
    const anns = readJson<Annotation[]>(path.join(out, 'dog.json'));
    expect(anns).toHaveLength(prompts.length);
    for (const a of anns) {
      const one = fresh('sx-one') + '.json';
      const args = ['segment', dog, '--model', sx, '--out', one];
      if (a.prompt.box) args.push('--box', a.prompt.box.join(','));
      if (a.prompt.points) args.push('--points', a.prompt.points.map((q) => q.join(',')).join(' '));
      expect((await runSam(args)).code).toBe(0);
      const doc = readJson<{ best: number; masks: { segmentation: CocoRle; predicted_iou: number }[] }>(one);
      expect(a.segmentation).toEqual(doc.masks[doc.best].segmentation);
      expect(Math.abs(a.predicted_iou - doc.masks[doc.best].predicted_iou)).toBeLessThanOrEqual(1e-6);
    }
  }, 120_000);

  it('--decoder split on a SAM 2 folder without the split decoder: one line naming the fix (exit 3), nothing written', async () => {
    const sx = path.join(tmp.dir, 'samexporter-split');
    mkdirSync(sx, { recursive: true });
    copyFileSync(path.join(modelDir, 'encoder.onnx'), path.join(sx, 'sam2.1_hiera_tiny.encoder.onnx'));
    copyFileSync(path.join(modelDir, 'decoder.onnx'), path.join(sx, 'sam2.1_hiera_tiny.decoder.onnx'));
    const out = fresh('split');
    const r = await runSam(['segment', imagesDir, '--prompts', jsonl(fresh('split') + '.jsonl', MIXED.slice(0, 1)), '--model', sx, '--out', out, '--decoder', 'split', '-q']);
    expect(r.code, r.stderr).toBe(3);
    expect(r.stderr).toMatch(/no SAM 2 split decoder with a single-mask prompt side .*; convert the checkpoint again with 'sam models convert', or drop --decoder split/);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(() => readFileSync(path.join(out, 'dog.json'))).toThrow();
  });
});
