/**
 * `--prompt-strategy hierarchical` (TinySAM's hierarchical segment everything, per crop): which
 * grid points each round prompts (a fake disc predictor, no ONNX), and end to end through the
 * real CLI on the colour-oracle model and the synthetic fixture scenes, whose true masks are known.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SamAutomaticMaskGenerator, type AmgOptions, type PromptCounts } from '../src/amg/generator.js';
import { sparseGridIndices, sparseGridLines } from '../src/amg/grid.js';
import { decodeRle } from '../src/core/rle.js';
import type { CocoRle, MaskRecord, Size } from '../src/core/types.js';
import { fixtureModel, maskIou, runSam, tempDir, type CliResult } from './helpers/cli.js';
import { DiscPredictor, type Disc } from './helpers/disc-predictor.js';
import { copyScenes, loadScene, writeSmallThingsScene } from './helpers/scenes.js';

const SIZE: Size = [256, 256];
/** 8 points per side on 256 px: grid point (row r, column c) at x = 16 + 32 c, y = 16 + 32 r. */
const at = (i: number): [number, number] => [16 + 32 * (i % 8), 16 + 32 * Math.floor(i / 8)];
/** Hit by the sparse point (80, 80) (row 2, column 2); its confident part holds the 3x3 block of points around it (distances 0, 32, 45.3 < 50 - 0.85). */
const A: Disc = { cx: 80, cy: 80, r: 50 };
/** Between the sparse points: holds the grid points (144, 176) and (176, 176) only. */
const B: Disc = { cx: 160, cy: 176, r: 20 };
/** Hit by the sparse point (208, 208); no other grid point inside. */
const C: Disc = { cx: 208, cy: 208, r: 30 };

async function generate(discs: Disc[], options: Partial<AmgOptions>) {
  const predictor = new DiscPredictor(discs);
  const prompts: PromptCounts = { run: -1, grid: -1 };
  const records = await new SamAutomaticMaskGenerator(predictor, { pointsPerSide: 8, promptStrategy: 'hierarchical', ...options }).generate(
    SIZE,
    undefined,
    prompts,
  );
  return { records, predictor, prompts };
}

function discMask(d: Disc): Uint8Array {
  const [h, w] = SIZE;
  const m = new Uint8Array(h * w);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) m[y * w + x] = (x + 0.5 - d.cx) ** 2 + (y + 0.5 - d.cy) ** 2 < d.r * d.r ? 1 : 0;
  return m;
}

describe('hierarchical prompt selection (fake predictor)', () => {
  it('picks rows and columns r % stride === floor(stride / 2), or the middle one', () => {
    expect(sparseGridLines(8, 4)).toEqual([2, 6]);
    expect(sparseGridLines(16, 4)).toEqual([2, 6, 10, 14]);
    expect(sparseGridLines(32, 4)).toEqual([2, 6, 10, 14, 18, 22, 26, 30]);
    expect(sparseGridLines(7, 3)).toEqual([1, 4]);
    expect(sparseGridLines(5, 2)).toEqual([1, 3]);
    expect(sparseGridLines(3, 4)).toEqual([2]);
    // floor(stride / 2) is past the grid: the middle row.
    expect(sparseGridLines(2, 4)).toEqual([0]);
    expect(sparseGridLines(4, 10)).toEqual([1]);
    expect(sparseGridLines(1, 4)).toEqual([0]);
    expect(sparseGridLines(0, 4)).toEqual([]);
    // Row-major indices of a 8x8 grid: row 2 and 6, columns 2 and 6.
    expect([...sparseGridIndices(8, 4)]).toEqual([18, 22, 50, 54]);
  });

  it('round 1 runs the sparse points; round 2 only the other points outside the confident regions', async () => {
    const { records, predictor, prompts } = await generate([A, B, C], {});
    // Round 1: rows/columns 2 and 6, row-major (one call: points_per_batch 64).
    const sparse = [18, 22, 50, 54];
    expect(predictor.calls[0]).toEqual(sparse.map(at));
    // Round 2: every other point except A's 3x3 block around (80, 80) (C covers only its own sparse point).
    const coveredByA = [9, 10, 11, 17, 19, 25, 26, 27];
    const expected = [...Array(64).keys()].filter((i) => !sparse.includes(i) && !coveredByA.includes(i));
    expect(expected).toHaveLength(52);
    expect(predictor.calls.slice(1).flat()).toEqual(expected.map(at));
    expect(prompts).toEqual({ run: 56, grid: 64 });
    // Both rounds' masks, merged by the crop's NMS: A and C from round 1, B from round 2.
    expect(records).toHaveLength(3);
    for (const d of [A, B, C]) {
      const best = Math.max(...records.map((r) => maskIou(decodeRle(r.segmentation).data, discMask(d))));
      expect(best, `disc at ${d.cx},${d.cy}`).toBeGreaterThan(0.95);
    }
    const bRecord = records.find((r) => maskIou(decodeRle(r.segmentation).data, discMask(B)) > 0.95)!;
    expect([[144, 176], [176, 176]]).toContainEqual(bRecord.point_coords[0]);
  });

  it('covers with the logits above highScoreThresh, and only of masks that pass the filters', async () => {
    // No logit is that high: every non-sparse point runs.
    expect((await generate([A, B, C], { highScoreThresh: 1e4 })).prompts).toEqual({ run: 64, grid: 64 });
    // Every logit is above it: a kept round-1 mask covers the whole crop.
    expect((await generate([A, B, C], { highScoreThresh: -1e4 })).prompts).toEqual({ run: 4, grid: 64 });
    // Masks dropped by pred_iou_thresh cover nothing.
    const dropped = await generate([A, B, C], { highScoreThresh: -1e4, predIouThresh: 0.96 });
    expect(dropped.records).toHaveLength(0);
    expect(dropped.prompts).toEqual({ run: 64, grid: 64 });
  });

  it('uses the middle point when the stride skips past a small grid', async () => {
    const { predictor, prompts } = await generate([A], { pointsPerSide: 2, highScoreThresh: 1e4 });
    // 2x2 grid at 64 and 192: round 1 is row 0, column 0 only.
    expect(predictor.calls[0]).toEqual([[64, 64]]);
    expect(predictor.calls.slice(1).flat()).toEqual([
      [192, 64],
      [64, 192],
      [192, 192],
    ]);
    expect(prompts).toEqual({ run: 4, grid: 4 });
  });

  it('runs both rounds in every crop, counting each crop’s grid', async () => {
    const { records, prompts } = await generate([A, B, C], { cropNLayers: 1 });
    expect(prompts.grid).toBe(5 * 64);
    expect(prompts.run).toBeLessThan(prompts.grid);
    for (const d of [A, B, C]) {
      const best = Math.max(...records.map((r) => maskIou(decodeRle(r.segmentation).data, discMask(d))));
      expect(best, `disc at ${d.cx},${d.cy}`).toBeGreaterThan(0.95);
    }
  });

  it('grid mode reports the full grid and ignores the hierarchical options', async () => {
    const plain = new DiscPredictor([A, B, C]);
    const prompts: PromptCounts = { run: 0, grid: 0 };
    const records = await new SamAutomaticMaskGenerator(plain, { pointsPerSide: 8 }).generate(SIZE, undefined, prompts);
    expect(prompts).toEqual({ run: 64, grid: 64 });
    const other = await generate([A, B, C], { promptStrategy: 'grid', sparseStride: 3, highScoreThresh: -5 });
    expect(other.records).toEqual(records);
    expect(other.predictor.calls).toEqual(plain.calls);
  });

  it('refuses explicit point grids and a bad stride', () => {
    const p = new DiscPredictor([]);
    const grid = Float64Array.from([0.5, 0.5]);
    expect(() => new SamAutomaticMaskGenerator(p, { pointsPerSide: null, pointGrids: [grid], promptStrategy: 'hierarchical' })).toThrow(/pointGrids/);
    expect(() => new SamAutomaticMaskGenerator(p, { pointsPerSide: 8, promptStrategy: 'hierarchical', sparseStride: 1 })).toThrow(/sparseStride/);
    expect(() => new SamAutomaticMaskGenerator(p, { pointsPerSide: 8, promptStrategy: 'hierarchical', sparseStride: 2.5 })).toThrow(/sparseStride/);
    expect(() => new SamAutomaticMaskGenerator(p, { pointsPerSide: 8, promptStrategy: 'tiles' as 'grid' })).toThrow(/promptStrategy/);
  });
});

// End to end through the CLI.

const MODEL = fixtureModel('oracle');
/** As test/auto.test.ts. */
const PPS = ['--points-per-side', '8'];
const auto = (args: readonly string[]): Promise<CliResult> => runSam(['auto', '--model', MODEL, ...args]);

const tmp = tempDir('sam-hier-');
afterAll(() => tmp.cleanup());
let dirCount = 0;
function freshDir(name: string): string {
  const dir = path.join(tmp.dir, `${++dirCount}-${name}`);
  mkdirSync(dir, { recursive: true });
  return dir;
}

const readRecords = (file: string): MaskRecord<CocoRle>[] => JSON.parse(readFileSync(file, 'utf8')) as MaskRecord<CocoRle>[];
const masksOf = (file: string): Uint8Array[] => readRecords(file).map((r) => decodeRle(r.segmentation).data);

/** Per-image progress lines of a hierarchical run: key → masks and prompts. */
function promptLines(stderr: string): Map<string, { masks: number; run: number; grid: number }> {
  const out = new Map<string, { masks: number; run: number; grid: number }>();
  for (const m of stderr.matchAll(/^\[\d+\/\d+\] done (\S+) \((\d+) masks, (\d+) of (\d+) prompts\)$/gm)) {
    out.set(m[1], { masks: Number(m[2]), run: Number(m[3]), grid: Number(m[4]) });
  }
  return out;
}

/** The summary line's "N masks, R of G prompts". */
function promptSummary(stderr: string): { masks: number; run: number; grid: number } {
  const m = /^sam: \d+ done, \d+ skipped, 0 failed, (\d+) masks, (\d+) of (\d+) prompts in /m.exec(stderr);
  expect(m, stderr).not.toBeNull();
  return { masks: Number(m![1]), run: Number(m![2]), grid: Number(m![3]) };
}

function expectShapesFound(masks: readonly Uint8Array[], shapes: Iterable<[string, Uint8Array]>): void {
  for (const [name, mask] of shapes) {
    const best = Math.max(0, ...masks.map((m) => maskIou(m, mask)));
    expect(best, `best IoU for ${name}`).toBeGreaterThanOrEqual(0.9);
  }
}

describe('sam auto --prompt-strategy hierarchical on flat-coloured shapes', () => {
  const SCENES = ['basic-320x240', 'tall-200x500', 'wide-640x360', 'exif-rot6-300x200', 'small-96x64'];
  let inDir: string;
  let plainOut: string;
  let gridOut: string;
  let hierOut: string;
  let plain: CliResult;
  let grid: CliResult;
  let hier: CliResult;

  beforeAll(async () => {
    const dir = freshDir('scenes');
    inDir = path.join(dir, 'in');
    copyScenes(inDir, SCENES);
    [plainOut, gridOut, hierOut] = ['plain', 'grid', 'hier'].map((n) => path.join(dir, n));
    plain = await auto([inDir, '--out', plainOut, ...PPS]);
    // Explicit --prompt-strategy grid is the default.
    grid = await auto([inDir, '--out', gridOut, ...PPS, '--prompt-strategy', 'grid']);
    hier = await auto([inDir, '--out', hierOut, ...PPS, '--prompt-strategy', 'hierarchical']);
  });

  it('runs at least 2x fewer decoder prompts than the grid and still finds every shape', async () => {
    expect(hier.code, hier.stderr).toBe(0);
    // Measured (8 points per side, 64 prompts per image): basic-320x240 50, tall-200x500 20,
    // wide-640x360 18, exif-rot6-300x200 5, small-96x64 4; 97 of 320 in all (3.3x fewer).
    // basic-320x240 saves least: the oracle's predicted IoU drops with mask area, so its white
    // background (~70% of the 1024 frame) never passes pred_iou_thresh, never covers anything,
    // and every background point runs in round 2 (1.3x fewer there).
    const lines = promptLines(hier.stderr);
    expect([...lines.keys()].sort()).toEqual([...SCENES].sort());
    let masks = 0;
    for (const name of SCENES) {
      const p = lines.get(name)!;
      expect(p.grid, name).toBe(64);
      expect(p.run, name).toBeLessThan(p.grid);
      masks += p.masks;
      const scene = await loadScene(name);
      const found = masksOf(path.join(hierOut, `${name}.json`));
      expect(found, name).toHaveLength(p.masks);
      expectShapesFound(found, scene.masks);
    }
    const total = promptSummary(hier.stderr);
    expect(total.masks).toBe(masks);
    expect(total.grid).toBe(SCENES.length * 64);
    expect(total.run).toBe([...lines.values()].reduce((a, p) => a + p.run, 0));
    expect(2 * total.run).toBeLessThanOrEqual(total.grid);
    // The scenes whose background is a confident mask save far more than 2x.
    for (const name of ['tall-200x500', 'wide-640x360', 'exif-rot6-300x200', 'small-96x64']) {
      expect(2 * lines.get(name)!.run, name).toBeLessThanOrEqual(64);
    }
  });

  it('grid mode (the default) is unchanged: same bytes and output as a run without the option', () => {
    expect(plain.code).toBe(0);
    expect(grid.code).toBe(0);
    for (const name of SCENES) {
      const a = readFileSync(path.join(plainOut, `${name}.json`));
      expect(readFileSync(path.join(gridOut, `${name}.json`)).equals(a), name).toBe(true);
    }
    // No prompt counts in grid mode's progress or summary.
    for (const res of [plain, grid]) {
      expect(res.stderr).not.toMatch(/prompts/);
      expect(res.stderr).toMatch(/^\[\d\/5\] done basic-320x240 \(\d+ masks\)$/m);
      expect(res.stderr).toMatch(/^sam: 5 done, 0 skipped, 0 failed, \d+ masks in /m);
    }
  });
});

describe('sam auto --prompt-strategy hierarchical with crop layers', () => {
  // The scene of test/auto.test.ts's crop-layer test: a large disc and four 14 px squares that
  // only the layer-1 crops find.
  let shapes: Map<string, Uint8Array>;
  let image: string;

  beforeAll(async () => {
    const scene = await writeSmallThingsScene(freshDir('crops'));
    image = scene.image;
    shapes = new Map(scene.shapes.map((s) => [s.name, s.mask]));
  });

  it('--crop-n-layers 1 finds every shape with fewer prompts than the grid', async () => {
    const out = freshDir('crop-hier');
    const res = await auto([image, '--out', out, ...PPS, '--crop-n-layers', '1', '--prompt-strategy', 'hierarchical']);
    expect(res.code, res.stderr).toBe(0);
    // Measured: 308 of 320 (5 crops x 64; grid mode runs all 320 and finds the same 5 shapes).
    // Little is saved on this mostly white scene: the background is never a kept mask (in crop 0
    // it is too large for the oracle's predicted IoU, in the layer-1 crops it touches their inner
    // edges), crop 0's sparse points miss the disc, and only the disc and squares cover points.
    const p = promptLines(res.stderr).get('small-things')!;
    expect(p.grid).toBe(5 * 64);
    expect(p.run).toBeLessThan(p.grid);
    expect(promptSummary(res.stderr)).toEqual(p);
    expectShapesFound(masksOf(path.join(out, 'small-things.json')), shapes);
  });
});

describe('sam auto --prompt-strategy usage errors', () => {
  it('refuses --point-grids with hierarchical, a bad --sparse-stride or strategy', async () => {
    const input = (await loadScene('small-96x64')).path;
    const out = freshDir('usage');
    const grids = path.join(out, 'grids.json');
    writeFileSync(grids, JSON.stringify([[[0.25, 0.5]]]));
    const res = await auto([input, '--out', out, '--point-grids', grids, '--prompt-strategy', 'hierarchical']);
    expect(res.code).toBe(2);
    expect(res.stderr).toMatch(/--prompt-strategy hierarchical needs the square grid of --points-per-side; drop --point-grids/);
    for (const stride of ['1', '0', '2.5', 'x']) {
      const bad = await auto([input, '--out', out, '--prompt-strategy', 'hierarchical', '--sparse-stride', stride]);
      expect(bad.code, stride).toBe(2);
      expect(bad.stderr, stride).toMatch(/--sparse-stride .*expected an integer from 2/);
    }
    const threshold = await auto([input, '--out', out, '--prompt-strategy', 'hierarchical', '--high-score-thresh', 'high']);
    expect(threshold.code).toBe(2);
    expect(threshold.stderr).toMatch(/--high-score-thresh high: expected a number/);
    for (const [flag, value] of [['--sparse-stride', '3'], ['--high-score-thresh', '1']]) {
      const gridOnly = await auto([input, '--out', out, flag, value]);
      expect(gridOnly.code, flag).toBe(2);
      expect(gridOnly.stderr).toContain(`${flag} applies to --prompt-strategy hierarchical only; add --prompt-strategy hierarchical or drop ${flag}`);
    }
    const strategy = await auto([input, '--out', out, '--prompt-strategy', 'tiles']);
    expect(strategy.code).toBe(2);
    expect(strategy.stderr).toMatch(/--prompt-strategy.*grid, hierarchical/);
  });
});
