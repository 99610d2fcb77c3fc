import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterAll, describe, expect, it } from 'vitest';
import { decodeRle } from '../src/core/rle.js';
import type { CocoRle } from '../src/core/types.js';
import { fixtureModel, maskIou, runSam, tempDir } from './helpers/cli.js';
import { sharedDir } from './helpers/golden.js';
import { loadScene, readBinaryPng } from './helpers/scenes.js';

interface SegmentJson {
  size: [number, number];
  model: string;
  best: number;
  prompt: { multimask: boolean };
  masks: { segmentation: CocoRle; area: number; bbox: number[]; predicted_iou: number; stability_score: number }[];
}

const tmp = tempDir('sam-segment-');
afterAll(() => tmp.cleanup());
let n = 0;
const out = (ext: string) => join(tmp.dir, `out-${n++}${ext}`);
const readJson = (p: string) => JSON.parse(readFileSync(p, 'utf8')) as SegmentJson;

const SCENES = ['basic-320x240', 'tall-200x500', 'wide-640x360', 'small-96x64', 'exif-rot6-300x200', 'rgb16-320x240', 'rgba-320x240', 'gray-200x200'];

describe('sam segment on the oracle model (end to end through the CLI)', () => {
  for (const name of SCENES) {
    it(`clicking inside each shape of ${name} returns that shape`, async () => {
      const scene = await loadScene(name);
      for (const shape of scene.shapes) {
        const png = out('.png');
        const r = await runSam(['segment', scene.path, '--model', fixtureModel(), '--points', `${shape.point[0]},${shape.point[1]}`, '--out', png]);
        expect(r.stderr).toBe('');
        expect(r.code).toBe(0);
        // A single-channel 0/255 PNG, as cv2.imwrite writes SAM's masks.
        expect((await sharp(png).metadata()).channels).toBe(1);
        const mask = await readBinaryPng(png);
        // Output is in upright (EXIF-applied) pixels, the size of the image a person sees.
        expect([mask.width, mask.height]).toEqual([scene.width, scene.height]);
        expect(maskIou(mask, scene.masks.get(shape.name)!)).toBeGreaterThanOrEqual(0.9);
      }
    });
  }

  it('a box around a shape returns that shape', async () => {
    const scene = await loadScene('wide-640x360');
    for (const shape of scene.shapes) {
      const [x, y, w, h] = shape.bbox;
      const json = out('.json');
      const r = await runSam(['segment', scene.path, '-m', fixtureModel(), '--box', `${x - 6},${y - 6},${x + w + 6},${y + h + 6}`, '--out', json]);
      expect(r.code).toBe(0);
      const doc = readJson(json);
      expect(doc.prompt.multimask).toBe(false);
      expect(doc.masks).toHaveLength(1);
      const mask = decodeRle(doc.masks[0].segmentation);
      expect(maskIou(mask.data, scene.masks.get(shape.name)!)).toBeGreaterThanOrEqual(0.9);
    }
  });

  it('a background point next to a foreground point shrinks the mask', async () => {
    const scene = await loadScene('wide-640x360');
    const rect = scene.shapes.find((s) => s.name === 'cyan-rect')!;
    const [x, y] = rect.point;
    const fg = out('.json');
    const both = out('.json');
    expect((await runSam(['segment', scene.path, '-m', fixtureModel(), '--points', `${x},${y}`, '--single', '--out', fg])).code).toBe(0);
    expect((await runSam(['segment', scene.path, '-m', fixtureModel(), '--points', `${x},${y} ${x},${y + 60},0`, '--out', both])).code).toBe(0);
    const a = readJson(fg).masks[0].area;
    const b = readJson(both).masks[0].area;
    expect(b).toBeLessThan(a * 0.95);
    expect(b).toBeGreaterThan(0);
  });

  it('multimask gives three candidates with scores, --single one, a single-mask export one', async () => {
    const scene = await loadScene('basic-320x240');
    const [x, y] = scene.shapes[0].point;
    const multi = out('.json');
    const single = out('.json');
    const singleModel = out('.json');
    expect((await runSam(['segment', scene.path, '-m', fixtureModel(), '-p', `${x},${y}`, '-o', multi])).code).toBe(0);
    expect((await runSam(['segment', scene.path, '-m', fixtureModel(), '-p', `${x},${y}`, '--single', '-o', single])).code).toBe(0);
    expect((await runSam(['segment', scene.path, '-m', fixtureModel('oracle-single'), '-p', `${x},${y}`, '-o', singleModel])).code).toBe(0);
    const m = readJson(multi);
    expect(m.masks).toHaveLength(3);
    expect(m.masks[m.best].predicted_iou).toBe(Math.max(...m.masks.map((k) => k.predicted_iou)));
    for (const k of m.masks) {
      expect(k.segmentation.size).toEqual([240, 320]);
      expect(decodeRle(k.segmentation).data.reduce((s, v) => s + v, 0)).toBe(k.area);
      expect(k.bbox).toHaveLength(4);
    }
    expect(readJson(single).masks).toHaveLength(1);
    expect(readJson(singleModel).masks).toHaveLength(1);
    const truth = (await loadScene('basic-320x240')).masks.get(scene.shapes[0].name)!;
    expect(maskIou(decodeRle(readJson(singleModel).masks[0].segmentation).data, truth)).toBeGreaterThanOrEqual(0.9);
  });

  it('--embedding output equals a fresh run bit for bit; a manifest-less folder is autodetected', async () => {
    const scene = await loadScene('tall-200x500');
    const embDir = join(tmp.dir, 'emb');
    const e = await runSam(['embed', scene.path, '-m', fixtureModel(), '-o', embDir, '-q']);
    expect(e.code).toBe(0);
    const emb = join(embDir, 'tall-200x500.safetensors');
    expect(existsSync(emb)).toBe(true);
    const [x, y] = scene.shapes[1].point;
    const fresh = out('.json');
    const reused = out('.json');
    const auto = out('.json');
    expect((await runSam(['segment', scene.path, '-m', fixtureModel(), '-p', `${x},${y}`, '-o', fresh])).code).toBe(0);
    expect((await runSam(['segment', scene.path, '-m', fixtureModel(), '-p', `${x},${y}`, '-e', emb, '-o', reused])).code).toBe(0);
    expect(readFileSync(reused)).toEqual(readFileSync(fresh));
    const r = await runSam(['segment', scene.path, '-m', fixtureModel('oracle-nomanifest'), '-p', `${x},${y}`, '-o', auto]);
    expect(r.code).toBe(0);
    expect(readJson(auto).masks.map((k) => k.segmentation)).toEqual(readJson(fresh).masks.map((k) => k.segmentation));
  });

  it('--low-res-out feeds --mask-input; a PNG mask works as mask input too; --overlay is written', async () => {
    const scene = await loadScene('basic-320x240');
    const shape = scene.shapes[1];
    const npy = join(tmp.dir, 'low.npy');
    const first = out('.png');
    const overlay = out('.png');
    let r = await runSam(['segment', scene.path, '-m', fixtureModel(), '-p', `${shape.point[0]},${shape.point[1]}`, '-o', first, '--low-res-out', npy, '--overlay', overlay]);
    expect(r.code).toBe(0);
    expect(readFileSync(npy).subarray(1, 6).toString()).toBe('NUMPY');
    const meta = await sharp(overlay).metadata();
    expect([meta.width, meta.height]).toEqual([320, 240]);
    const truth = scene.masks.get(shape.name)!;
    for (const maskInput of [npy, first]) {
      const refined = out('.png');
      r = await runSam(['segment', scene.path, '-m', fixtureModel(), '-p', `${shape.point[0]},${shape.point[1]}`, '--mask-input', maskInput, '-o', refined]);
      expect(r.code).toBe(0);
      expect(maskIou(await readBinaryPng(refined), truth)).toBeGreaterThanOrEqual(0.9);
    }
  });
});

describe('real photos', () => {
  const photos = readdirSync(join(sharedDir(), 'images')).filter((f) => /\.(jpe?g|png)$/i.test(f));

  it('go through embed and segment; outputs have the photo size', async () => {
    expect(photos.length).toBeGreaterThan(0);
    const embDir = join(tmp.dir, 'photo-emb');
    const e = await runSam(['embed', join(sharedDir(), 'images'), '-m', fixtureModel(), '-o', embDir]);
    expect(e.code).toBe(0);
    for (const f of photos) {
      const photo = join(sharedDir(), 'images', f);
      const meta = await sharp(photo).rotate().metadata();
      const stem = f.replace(/\.[^.]+$/, '');
      expect(existsSync(join(embDir, `${stem}.safetensors`))).toBe(true);
      const png = out('.png');
      const json = out('.json');
      const t0 = performance.now();
      const r = await runSam(['segment', photo, '-m', fixtureModel(), '-p', `${Math.floor(meta.width! / 2)},${Math.floor(meta.height! / 2)}`, '-o', png]);
      console.log(`segment ${f} (${meta.width}x${meta.height}) with the oracle model: ${(performance.now() - t0).toFixed(0)} ms wall`);
      expect(r.code).toBe(0);
      const m = await sharp(png).metadata();
      expect([m.width, m.height]).toEqual([meta.width, meta.height]);
      const r2 = await runSam(['segment', photo, '-m', fixtureModel(), '-e', join(embDir, `${stem}.safetensors`), '--box', `10,10,${meta.width! - 10},${meta.height! - 10}`, '-o', json]);
      expect(r2.code).toBe(0);
      expect(readJson(json).size).toEqual([meta.height, meta.width]);
    }
  });

  it('embed skips existing embeddings unless --force', async () => {
    const embDir = join(tmp.dir, 'skip-emb');
    const photo = join(sharedDir(), 'images', photos[0]);
    expect((await runSam(['embed', photo, '-m', fixtureModel(), '-o', embDir])).code).toBe(0);
    const again = await runSam(['embed', photo, '-m', fixtureModel(), '-o', embDir]);
    expect(again.code).toBe(0);
    expect(again.stderr).toMatch(/0 done, 1 skipped, 0 failed/);
    const forced = await runSam(['embed', photo, '-m', fixtureModel(), '-o', embDir, '--force']);
    expect(forced.stderr).toMatch(/1 done, 0 skipped, 0 failed/);
  });
});

