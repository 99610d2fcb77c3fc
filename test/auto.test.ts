/**
 * `sam auto` end to end through the real CLI (dist/bin/sam.js) on the colour-oracle model and the
 * synthetic scenes of fixtures/synthetic.ts, whose true masks are known.
 */
import { spawn } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeScene, type Scene } from '../fixtures/synthetic.js';
import { decodeRle, rleToBbox, rleToString } from '../src/core/rle.js';
import type { CocoRle, MaskRecord, UncompressedRle } from '../src/core/types.js';
import { METADATA_HEADER } from '../src/output/records.js';
import { fixtureImage, fixtureModel, maskIou, runSam, SAM_BIN, tempDir, type CliResult } from './helpers/cli.js';
import { samBbox, tightBbox } from './helpers/boxes.js';
import { copyScenes, writeSmallThingsScene, type PaintedShape } from './helpers/scenes.js';

const MODEL = fixtureModel('oracle');
/** Enough for the fixture shapes (tens of pixels and up) and keeps each image near one second. */
const PPS = ['--points-per-side', '8'];

const tmp = tempDir('sam-auto-');
afterAll(() => tmp.cleanup());

let dirCount = 0;
/** A fresh folder under the test's temp folder. */
function freshDir(name: string): string {
  const dir = path.join(tmp.dir, `${++dirCount}-${name}`);
  mkdirSync(dir, { recursive: true });
  return dir;
}

const auto = (args: readonly string[]): Promise<CliResult> => runSam(['auto', '--model', MODEL, ...args]);

function readRecords<S = CocoRle>(file: string): MaskRecord<S>[] {
  const parsed = JSON.parse(readFileSync(file, 'utf8')) as MaskRecord<S>[];
  expect(Array.isArray(parsed)).toBe(true);
  return parsed;
}

const masksOf = (records: readonly MaskRecord<CocoRle | UncompressedRle>[]): Uint8Array[] => records.map((r) => decodeRle(r.segmentation).data);

/** Each true shape has a mask with IoU >= 0.9, and no two output masks overlap with IoU > 0.9. */
function expectShapesFoundOnce(masks: readonly Uint8Array[], shapes: readonly { name: string; mask: Uint8Array }[]): void {
  for (const shape of shapes) {
    const best = Math.max(0, ...masks.map((m) => maskIou(m, shape.mask)));
    expect(best, `best IoU for ${shape.name}`).toBeGreaterThanOrEqual(0.9);
  }
  for (let i = 0; i < masks.length; i++) {
    for (let j = i + 1; j < masks.length; j++) expect(maskIou(masks[i], masks[j]), `masks ${i} and ${j}`).toBeLessThanOrEqual(0.9);
  }
}

/** Byte equality (vitest's deep equality is slow on large typed arrays). */
const sameMask = (a: Uint8Array, b: Uint8Array): boolean => Buffer.from(a.buffer, a.byteOffset, a.length).equals(Buffer.from(b.buffer, b.byteOffset, b.length));

/** Every entry under `dir`, as '/'-separated relative paths. */
function listTree(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string, rel: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      out.push(r);
      if (e.isDirectory()) walk(path.join(d, e.name), r);
    }
  };
  if (existsSync(dir)) walk(dir, '');
  return out.sort();
}

/** Keys named by the per-image progress lines ("[i/n] done key (...)"). */
const progressKeys = (stderr: string, status: 'done' | 'skipped'): string[] =>
  [...stderr.matchAll(new RegExp(`^\\[\\d+/\\d+\\] ${status} (\\S+)`, 'gm'))].map((m) => m[1]);

describe('sam auto on flat-coloured shapes', () => {
  const SCENES = ['basic-320x240', 'tall-200x500', 'wide-640x360', 'sub/exif-rot6-300x200', 'small-96x64'];
  let inDir: string;
  let outDir: string;
  let cocoFile: string;
  let overlayDir: string;
  let run: CliResult;

  beforeAll(async () => {
    const dir = freshDir('shapes');
    inDir = path.join(dir, 'in');
    outDir = path.join(dir, 'out');
    cocoFile = path.join(dir, 'dataset.json');
    copyScenes(inDir, SCENES);
    overlayDir = path.join(dir, 'overlay');
    run = await auto([inDir, '--out', outDir, '--coco', cocoFile, '--overlay', overlayDir, ...PPS]);
  });

  it('finds every shape once, with outputs mirroring the input folders', () => {
    expect(run.stderr).toMatch(/5 done, 0 skipped, 0 failed, \d+ masks/);
    expect(run.code).toBe(0);
    for (const name of SCENES) {
      const scene = makeScene(path.basename(name));
      const records = readRecords(path.join(outDir, `${name}.json`));
      for (const r of records) expect(r.segmentation.size).toEqual([scene.height, scene.width]);
      expectShapesFoundOnce(masksOf(records), scene.shapes);
    }
  });

  it('--overlay writes a picture per image, at the image size', async () => {
    for (const name of SCENES) {
      const scene = makeScene(path.basename(name));
      const meta = await sharp(path.join(overlayDir, `${name}.png`)).metadata();
      expect([meta.width, meta.height]).toEqual([scene.width, scene.height]);
    }
  });

  it('writes records as amg.py --convert-to-rle does', () => {
    const text = readFileSync(path.join(outDir, 'basic-320x240.json'), 'utf8');
    // json.dump's separators and Python float reprs (point coordinates are floats: "60.0").
    expect(text).toMatch(/^\[\{"segmentation": \{"size": \[240, 320\], "counts": "/);
    expect(text).toMatch(/"point_coords": \[\[\d+\.\d+, \d+\.\d+\]\]/);
    const r = readRecords(path.join(outDir, 'basic-320x240.json'))[0];
    expect(Object.keys(r)).toEqual(['segmentation', 'area', 'bbox', 'predicted_iou', 'point_coords', 'stability_score', 'crop_box']);
    const mask = decodeRle(r.segmentation).data;
    expect(r.area).toBe(mask.reduce((a, v) => a + v, 0));
    expect(r.bbox).toEqual(samBbox(mask, 320));
    expect(r.crop_box).toEqual([0, 0, 320, 240]);
  });

  it('writes a COCO dataset that decodes back to the per-image masks', () => {
    interface Coco {
      info: Record<string, unknown>;
      images: { id: number; file_name: string; width: number; height: number }[];
      annotations: (Omit<MaskRecord, 'segmentation'> & { id: number; image_id: number; category_id: number; iscrowd: number; segmentation: CocoRle })[];
      categories: { id: number; name: string; supercategory: string }[];
    }
    const coco = JSON.parse(readFileSync(cocoFile, 'utf8')) as Coco;
    expect(coco.categories).toEqual([{ id: 1, name: 'object', supercategory: 'object' }]);
    // Images in input order (the folder walk is sorted), ids from 1.
    const expectedFiles = [...SCENES].sort().map((n) => `${n}.png`);
    expect(coco.images.map((i) => i.file_name)).toEqual(expectedFiles);
    expect(coco.images.map((i) => i.id)).toEqual(expectedFiles.map((_, i) => i + 1));
    for (const img of coco.images) {
      const scene = makeScene(path.basename(img.file_name, '.png'));
      expect([img.width, img.height]).toEqual([scene.width, scene.height]);
    }
    expect(coco.annotations.map((a) => a.id)).toEqual(coco.annotations.map((_, i) => i + 1));
    for (const img of coco.images) {
      const anns = coco.annotations.filter((a) => a.image_id === img.id);
      const records = readRecords(path.join(outDir, img.file_name.replace(/\.png$/, '.json')));
      expect(anns).toHaveLength(records.length);
      anns.forEach((a, k) => {
        expect(a.category_id).toBe(1);
        expect(a.iscrowd).toBe(0);
        expect(typeof a.segmentation.counts).toBe('string');
        const mask = decodeRle(a.segmentation);
        expect([mask.h, mask.w]).toEqual([img.height, img.width]);
        expect(sameMask(mask.data, decodeRle(records[k].segmentation).data)).toBe(true);
        expect(a.area).toBe(mask.data.reduce((s, v) => s + v, 0));
        // COCO's tight box (pycocotools toBbox: w = max - min + 1); the per-image file keeps SAM's box.
        expect(a.bbox).toEqual(tightBbox(mask.data, img.width));
        expect(a.bbox).toEqual(rleToBbox(a.segmentation));
        expect(records[k].bbox).toEqual(samBbox(mask.data, img.width));
        expect(a.predicted_iou).toBe(records[k].predicted_iou);
        expect(a.stability_score).toBe(records[k].stability_score);
        expect(a.point_coords).toEqual(records[k].point_coords);
        expect(a.crop_box).toEqual(records[k].crop_box);
      });
    }
    expect(new Set(coco.annotations.map((a) => a.image_id))).toEqual(new Set(coco.images.map((i) => i.id)));
  });

  it('--output-mode png writes amg.py’s folder layout with metadata.csv', async () => {
    const out = freshDir('png');
    const input = path.join(inDir, 'basic-320x240.png');
    const res = await auto([input, '--out', out, '--output-mode', 'png', '--coco', path.join(out, 'c.json'), ...PPS, '-q']);
    expect(res.code).toBe(0);
    const records = readRecords(path.join(outDir, 'basic-320x240.json'));
    const folder = path.join(out, 'basic-320x240');
    const files = readdirSync(folder).sort();
    expect(files).toEqual([...records.map((_, i) => `${i}.png`), 'metadata.csv', 'rle.json'].sort());
    const csv = readFileSync(path.join(folder, 'metadata.csv'), 'utf8');
    const lines = csv.split('\n');
    expect(lines[0]).toBe(METADATA_HEADER);
    expect(lines).toHaveLength(records.length + 1);
    for (let i = 0; i < records.length; i++) {
      const r = records[i];
      const f = lines[i + 1].split(',');
      expect(f).toHaveLength(14);
      expect(f.slice(0, 6).map(Number)).toEqual([i, r.area, ...r.bbox]);
      expect(f.slice(6, 10).map(Number)).toEqual([...r.point_coords[0], r.predicted_iou, r.stability_score]);
      expect(f[6]).toMatch(/\./); // Python's str of a float
      expect(f.slice(10).map(Number)).toEqual(r.crop_box);
      const file = path.join(folder, `${i}.png`);
      // 8-bit grayscale, as cv2.imwrite(mask * 255).
      expect((await sharp(file).metadata()).channels).toBe(1);
      const px = await sharp(file).extractChannel(0).raw().toBuffer();
      expect(px.every((v) => v === 0 || v === 255)).toBe(true);
      expect(sameMask(Uint8Array.from(px, (v) => (v ? 1 : 0)), decodeRle(r.segmentation).data)).toBe(true);
    }
    // rle.json (kept for --coco) holds the same records.
    expect(readRecords(path.join(folder, 'rle.json'))).toEqual(records);
    const coco = JSON.parse(readFileSync(path.join(out, 'c.json'), 'utf8')) as { annotations: unknown[] };
    expect(coco.annotations).toHaveLength(records.length);
  });

  it('--output-mode uncompressed_rle writes run lengths', async () => {
    const out = freshDir('uncompressed');
    const res = await auto([path.join(inDir, 'basic-320x240.png'), '--out', out, '--output-mode', 'uncompressed_rle', ...PPS, '-q']);
    expect(res.code).toBe(0);
    const raw = readRecords<UncompressedRle>(path.join(out, 'basic-320x240.json'));
    const coco = readRecords(path.join(outDir, 'basic-320x240.json'));
    expect(raw).toHaveLength(coco.length);
    raw.forEach((r, i) => {
      expect(Array.isArray(r.segmentation.counts)).toBe(true);
      expect(r.segmentation.counts.reduce((a, b) => a + b, 0)).toBe(240 * 320);
      expect(rleToString(r.segmentation.counts)).toBe(coco[i].segmentation.counts);
      expect({ ...r, segmentation: null }).toEqual({ ...coco[i], segmentation: null });
    });
  });

  it('--embeddings reuses sam embed files and gives the same bytes', async () => {
    const dir = freshDir('embeddings');
    const input = path.join(inDir, 'basic-320x240.png');
    const emb = path.join(dir, 'emb');
    const embed = await runSam(['embed', input, '--model', MODEL, '--out', emb, '-q']);
    expect(embed.code).toBe(0);
    expect(existsSync(path.join(emb, 'basic-320x240.safetensors'))).toBe(true);
    const res = await auto([input, '--out', path.join(dir, 'out'), '--embeddings', emb, ...PPS]);
    expect(res.code).toBe(0);
    // The encoder never ran: crop 0 came from the file.
    expect(res.stderr).toMatch(/encoder 0\.00 s/);
    expect(readFileSync(path.join(dir, 'out', 'basic-320x240.json'))).toEqual(readFileSync(path.join(outDir, 'basic-320x240.json')));

    // An embedding of another image is refused for that image; the run reports it.
    renameSync(path.join(emb, 'basic-320x240.safetensors'), path.join(emb, 'small-96x64.safetensors'));
    const wrong = await auto([path.join(inDir, 'small-96x64.png'), '--out', path.join(dir, 'out2'), '--embeddings', emb, ...PPS, '-q']);
    expect(wrong.code).toBe(5);
    expect(wrong.stderr).toMatch(/small-96x64\.safetensors: embedding is for a 320x240 image/);
  });
});

describe('sam auto crop layers', () => {
  // The disc and four 14 px squares of writeSmallThingsScene (test/helpers/scenes.ts).
  let shapes: PaintedShape[];
  let image: string;

  beforeAll(async () => {
    ({ image, shapes } = await writeSmallThingsScene(freshDir('crops')));
  });

  it('--crop-n-layers 1 finds small shapes the whole-image crop misses, without duplicates', async () => {
    const out0 = freshDir('crop0');
    const out1 = freshDir('crop1');
    const [r0, r1] = [await auto([image, '--out', out0, ...PPS, '-q']), await auto([image, '--out', out1, ...PPS, '--crop-n-layers', '1', '-q'])];
    expect(r0.code).toBe(0);
    expect(r1.code).toBe(0);

    const masks0 = masksOf(readRecords(path.join(out0, 'small-things.json')));
    const found0 = shapes.filter((s) => masks0.some((m) => maskIou(m, s.mask) >= 0.9)).map((s) => s.name);
    expect(found0).toEqual(['disc']);

    const records1 = readRecords(path.join(out1, 'small-things.json'));
    expectShapesFoundOnce(masksOf(records1), shapes);
    // The disc lies inside every crop: found in several, kept once (from a layer-1 crop).
    const disc = records1.filter((r) => maskIou(decodeRle(r.segmentation).data, shapes[0].mask) > 0.5);
    expect(disc).toHaveLength(1);
    expect(disc[0].crop_box).not.toEqual([0, 0, 512, 512]);
    for (const r of records1.filter((x) => x !== disc[0])) expect(r.crop_box[2]).toBe(343);
  });
});

describe('sam auto --min-mask-region-area', () => {
  it('removes a planted speck and fills a planted hole', async () => {
    const scene: Scene = makeScene('speck-hole-256');
    const square = scene.shapes.find((s) => s.name === 'blue-square')!;
    const speck = scene.shapes.find((s) => s.name === 'blue-speck')!;
    const input = fixtureImage('speck-hole-256.png');
    const plain = freshDir('speck-plain');
    const cleaned = freshDir('speck-cleaned');
    expect((await auto([input, '--out', plain, ...PPS, '-q'])).code).toBe(0);
    expect((await auto([input, '--out', cleaned, ...PPS, '--min-mask-region-area', '100', '-q'])).code).toBe(0);

    const blueMask = (dir: string) => {
      const masks = masksOf(readRecords(path.join(dir, 'speck-hole-256.json')));
      const best = masks.reduce((a, m) => (maskIou(m, square.mask) > maskIou(a, square.mask) ? m : a));
      expect(maskIou(best, square.mask)).toBeGreaterThan(0.9);
      return best;
    };
    const hole = { x0: 116, y0: 96, n: 8 };
    const count = (m: Uint8Array, pred: (i: number) => boolean) => m.reduce((a, v, i) => a + (v && pred(i) ? 1 : 0), 0);
    const inHole = (i: number) => {
      const x = i % 256;
      const y = (i - x) / 256;
      return x >= hole.x0 && x < hole.x0 + hole.n && y >= hole.y0 && y < hole.y0 + hole.n;
    };
    const before = blueMask(plain);
    // Same colour, so the oracle's mask holds the speck and leaves the hole out.
    expect(count(before, (i) => speck.mask[i] === 1)).toBe(16);
    expect(count(before, inHole)).toBe(0);
    const after = blueMask(cleaned);
    expect(count(after, (i) => speck.mask[i] === 1)).toBe(0);
    expect(count(after, inHole)).toBe(64);
    expect(after.reduce((a, v) => a + v, 0)).toBe(100 * 100);
  });
});

describe('sam auto never loses work', () => {
  it('resumes a killed run: every image done once, no temp or truncated file left', async () => {
    const dir = freshDir('resume');
    const inDir = path.join(dir, 'in');
    const out = path.join(dir, 'out');
    const names = ['basic-320x240', 'exif-rot6-300x200', 'rgba-320x240', 'small-96x64', 'tall-200x500', 'wide-640x360'];
    copyScenes(inDir, names);
    const done = () => readdirSync(out).filter((f) => f.endsWith('.json') && !f.startsWith('.'));

    // Kill (SIGKILL, no chance to clean up) once two images are finished.
    const child = spawn(process.execPath, [SAM_BIN, 'auto', inDir, '--model', MODEL, '--out', out, ...PPS, '-q'], { stdio: 'ignore' });
    const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
    await new Promise<void>((resolve, reject) => {
      const started = Date.now();
      const timer = setInterval(() => {
        if (existsSync(out) && done().length >= 2) {
          clearInterval(timer);
          child.kill('SIGKILL');
          resolve();
        } else if (Date.now() - started > 60_000) {
          clearInterval(timer);
          child.kill('SIGKILL');
          reject(new Error('no output appeared within 60 s'));
        }
      }, 20);
    });
    await exited;
    const finished = done();
    expect(finished.length).toBeGreaterThanOrEqual(2);
    expect(finished.length).toBeLessThan(names.length);

    // Leftovers of killed runs: a temp of a dead process (removed), a live process's (kept), and
    // a truncated output written by something else (redone).
    const dead = spawn(process.execPath, ['-e', '']);
    await new Promise((resolve) => dead.on('exit', resolve));
    writeFileSync(path.join(out, `.wide-640x360.json.${dead.pid}.0badf00d.tmp`), '[{"segm');
    mkdirSync(path.join(out, `.tall-200x500.${dead.pid}.0badf00d.tmpdir`));
    const live = `.other.json.${process.pid}.cafebabe.tmp`;
    writeFileSync(path.join(out, live), '');
    const unfinished = names.filter((n) => !finished.includes(`${n}.json`));
    writeFileSync(path.join(out, `${unfinished[0]}.json`), '[{"segmentation": {"size": [24');

    const rerun = await auto([inDir, '--out', out, ...PPS]);
    expect(rerun.code).toBe(0);
    expect(rerun.stderr).toContain(`${unfinished.length} done, ${finished.length} skipped, 0 failed`);
    expect(progressKeys(rerun.stderr, 'done').sort()).toEqual(unfinished);
    expect(progressKeys(rerun.stderr, 'skipped').sort()).toEqual(finished.map((f) => f.replace(/\.json$/, '')).sort());
    expect(listTree(out)).toEqual([live, ...names.map((n) => `${n}.json`)].sort());
    for (const n of names) expect(readRecords(path.join(out, `${n}.json`)).length).toBeGreaterThanOrEqual(2);

    // A third run has nothing left to do.
    const third = await auto([inDir, '--out', out, ...PPS, '-q']);
    expect(third.stderr).toContain(`0 done, ${names.length} skipped, 0 failed`);
  });

  it('reports corrupt and empty images, finishes the others and exits 5', async () => {
    const dir = freshDir('corrupt');
    const inDir = path.join(dir, 'in');
    const out = path.join(dir, 'out');
    copyScenes(inDir, ['basic-320x240', 'small-96x64']);
    const png = readFileSync(fixtureImage('tall-200x500.png'));
    writeFileSync(path.join(inDir, 'truncated.png'), png.subarray(0, Math.floor(png.length / 2)));
    writeFileSync(path.join(inDir, 'empty.jpg'), '');
    writeFileSync(path.join(inDir, 'notes.txt'), 'not an image');
    const res = await auto([inDir, '--out', out, ...PPS]);
    expect(res.code).toBe(5);
    expect(res.stderr).toContain('2 done, 0 skipped, 2 failed');
    const failedBlock = res.stderr.slice(res.stderr.indexOf('failed:\n'));
    expect(failedBlock).toMatch(/truncated\.png: .*(corrupt|truncated)/);
    expect(failedBlock).toMatch(/empty\.jpg: .*empty/);
    expect(listTree(out)).toEqual(['basic-320x240.json', 'small-96x64.json']);
  });
});

describe('sam auto --shard and globs', () => {
  it('--shard 0/2 and 1/2 cover a glob’s images exactly once', async () => {
    const dir = freshDir('shard');
    const inDir = path.join(dir, 'in');
    const out = path.join(dir, 'out');
    copyScenes(inDir, ['basic-320x240', 'a/small-96x64', 'a/gray-200x200', 'a/b/speck-hole-256', 'rgba-320x240']);
    copyFileSync(fixtureImage('small-96x64.png'), path.join(inDir, 'skipped-by-pattern.jpeg'));
    const glob = `${inDir}/**/*.png`;
    const fast = ['--points-per-side', '4'];
    const s0 = await auto([glob, '--out', out, '--shard', '0/2', ...fast]);
    const s1 = await auto([glob, '--out', out, '--shard', '1/2', ...fast]);
    expect(s0.code).toBe(0);
    expect(s1.code).toBe(0);
    const k0 = progressKeys(s0.stderr, 'done');
    const k1 = progressKeys(s1.stderr, 'done');
    expect(k0.length + k1.length).toBe(5);
    expect(k0.filter((k) => k1.includes(k))).toEqual([]);
    const all = ['a/b/speck-hole-256', 'a/gray-200x200', 'a/small-96x64', 'basic-320x240', 'rgba-320x240'];
    expect([...k0, ...k1].sort()).toEqual(all);
    // Keys are relative to the pattern's static base folder.
    expect(listTree(out).filter((f) => f.endsWith('.json'))).toEqual(all.map((k) => `${k}.json`));
  });

  it('refuses a bad --shard or a point-grids file that does not fit', async () => {
    const input = fixtureImage('small-96x64.png');
    const out = freshDir('usage');
    for (const shard of ['2/2', '1', '-1/2', '0/0']) {
      const res = await auto([input, '--out', out, '--shard', shard]);
      expect(res.code, shard).toBe(2);
      expect(res.stderr).toMatch(/--shard/);
    }
    const grids = path.join(out, 'grids.json');
    // One prompt, on the red rectangle (x 10..40, y 12..50 of 96x64).
    writeFileSync(grids, JSON.stringify([[[0.25, 0.5]]]));
    const layers = await auto([input, '--out', out, '--point-grids', grids, '--crop-n-layers', '1']);
    expect(layers.code).toBe(2);
    expect(layers.stderr).toMatch(/needs 2/);
    const ok = await auto([input, '--out', out, '--point-grids', grids, '-q']);
    expect(ok.code).toBe(0);
    const records = readRecords(path.join(out, 'small-96x64.json'));
    expect(records.map((r) => r.point_coords)).toEqual([[[24, 32]]]);
  });
});
