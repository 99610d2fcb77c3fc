/**
 * `sam queue add` + `sam worker` on a SAM 2 model (the golden random sam2.1_hiera_tiny checkpoint
 * converted by `sam models convert`) against a real redis-server: the outputs are byte for byte
 * those of `sam auto` with the same options (plain and --use-m2m), the stored settings carry SAM 2's
 * generator options and defaults, and the options one family lacks are refused in one line.
 */
import { copyFileSync, mkdirSync, readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SamQueue } from '../src/queue/queue.js';
import { parseRedisUrl } from '../src/queue/redis.js';
import { loadAmgOptions, storeAmgOptions } from '../src/queue/settings.js';
import { resolveAmgOptions } from '../src/amg/generator.js';
import { fixtureModel, runSam, tempDir } from './helpers/cli.js';
import { sharedDir } from './helpers/golden.js';
import { RedisServer } from '../fixtures/redis-server.js';

/** Small and fast, yet masks on both photos. */
const AMG = ['--points-per-side', '3', '--pred-iou-thresh', '0', '--stability-score-thresh', '0'];

let redis: RedisServer;
const tmp = tempDir('sam-sam2-queue-');
const modelDir = path.join(tmp.dir, 'sam2.1_hiera_tiny');
const images = path.join(tmp.dir, 'images');
const out = (name: string): string => path.join(tmp.dir, name);

/** Every file under `dir`, relative, '/'-separated, sorted. */
function tree(dir: string): string[] {
  const files: string[] = [];
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else files.push(path.relative(dir, p).split(path.sep).join('/'));
    }
  };
  walk(dir);
  return files.sort();
}

function expectSameTree(dir: string, ref: string): void {
  const files = tree(dir);
  expect(files).toEqual(tree(ref));
  for (const f of files) expect(readFileSync(path.join(dir, f)).equals(readFileSync(path.join(ref, f))), f).toBe(true);
}

const add = (queue: string, outDir: string, ...extra: string[]) =>
  runSam(['queue', 'add', images, '--redis', redis.url, '--queue', queue, '--model', modelDir, '--out', outDir, ...extra]);
const work = (queue: string, ...extra: string[]) =>
  runSam(['worker', '--redis', redis.url, '--queue', queue, '--model', modelDir, '--jobs', '1', '--threads', '2', '--exit-when-empty', ...extra]);

async function storedSettings(queue: string) {
  const q = await SamQueue.open(parseRedisUrl(redis.url), queue);
  try {
    return await q.settings();
  } finally {
    await q.close();
  }
}

beforeAll(async () => {
  redis = await RedisServer.start();
  const r = await runSam(['models', 'convert', path.join(sharedDir(), 'golden', 'sam2', 'sam2.1_hiera_tiny-random-fp16.pt'), '--out', modelDir, '-q']);
  expect(r.code, r.stderr).toBe(0);
  mkdirSync(images, { recursive: true });
  for (const f of ['dog.jpg', 'groceries.jpg']) copyFileSync(path.join(sharedDir(), 'images', f), path.join(images, f));
}, 300_000);

afterAll(async () => {
  await redis?.close();
  tmp.cleanup();
});

describe('sam queue + sam worker on SAM 2.1 tiny', () => {
  for (const [name, extra] of [
    ['plain', []],
    ['use-m2m', ['--use-m2m']],
  ] as const) {
    it(`${name}: a worker writes exactly what sam auto writes (outputs and COCO file)`, async () => {
      const ref = out(`${name}-ref`);
      const a = await runSam(['auto', images, '--model', modelDir, '--out', ref, '--coco', out(`${name}-ref.json`), '-q', ...AMG, ...extra]);
      expect(a.code, a.stderr).toBe(0);
      const refMasks = JSON.parse(readFileSync(path.join(ref, 'dog.json'), 'utf8')) as unknown[];
      expect(refMasks.length).toBeGreaterThan(0);

      const dir = out(name);
      const q = await add(name, dir, ...AMG, ...extra);
      expect(q.code, q.stderr).toBe(0);
      expect(q.stderr).toContain('added 2 image(s)');
      const w = await work(name);
      expect(w.code, w.stderr).toBe(0);
      expect(w.stderr).toMatch(/2 done, 0 skipped, 0 failed/);
      expectSameTree(dir, ref);
      const coco = out(`${name}.json`);
      const c = await runSam(['queue', 'collect', '--redis', redis.url, '--queue', name, '--coco', coco]);
      expect(c.code, c.stderr).toBe(0);
      expect(readFileSync(coco).equals(readFileSync(out(`${name}-ref.json`)))).toBe(true);

      const s = await storedSettings(name);
      expect(s?.amg).toMatchObject({ family: 'sam2', useM2m: name === 'use-m2m', maskThreshold: 0, multimaskOutput: true, predIouThresh: 0 });
    }, 240_000);
  }

  it("the stored settings take SAM 2's defaults (pred_iou_thresh 0.8) and its options, and load back as given", async () => {
    const q = await add('defaults', out('defaults'), '--points-per-side', '2', '--mask-threshold', '0.5', '--no-multimask-output');
    expect(q.code, q.stderr).toBe(0);
    const s = (await storedSettings('defaults'))!;
    expect(s.amg).toMatchObject({ family: 'sam2', predIouThresh: 0.8, stabilityScoreThresh: 0.95, maskThreshold: 0.5, multimaskOutput: false, useM2m: false, pointsPerSide: 2 });
    const given = resolveAmgOptions({ pointsPerSide: 2, family: 'sam2', predIouThresh: 0.8, maskThreshold: 0.5, multimaskOutput: false, useM2m: true });
    expect(loadAmgOptions(JSON.parse(JSON.stringify(storeAmgOptions(given))) as ReturnType<typeof storeAmgOptions>)).toEqual(given);
    // The same folder with other SAM 2 options: refused, naming them.
    const other = await add('defaults', out('defaults'), '--points-per-side', '2', '--mask-threshold', '0.5');
    expect(other.code).toBe(2);
    expect(other.stderr).toMatch(/--multimask-output false \(given true\)/);
  });

  it('refused in one line: SAM 2 options on a SAM (v1) queue, --use-m2m without a single-mask decoder, a worker --decoder split; --min-mask-region-area stored', async () => {
    const v1 = await runSam(['queue', 'add', images, '--redis', redis.url, '--queue', 'v1', '--model', fixtureModel(), '--out', out('v1'), '--use-m2m']);
    expect(v1.code).toBe(2);
    expect(v1.stderr).toMatch(/--use-m2m applies to SAM 2 models only.*is a SAM \(v1\) model: drop --use-m2m/);
    expect(v1.stderr.trim().split('\n')).toHaveLength(1);
    // --min-mask-region-area is SAM 2's hole / sprinkle filling there: stored like any option.
    const area = await add('area', out('area'), '--min-mask-region-area', '100');
    expect(area.code, area.stderr).toBe(0);
    expect((await storedSettings('area'))!.amg).toMatchObject({ family: 'sam2', minMaskRegionArea: 100 });

    // A samexporter-style folder lacks the single-mask graph --use-m2m runs: refused at add (exit 3).
    const sx = out('samexporter');
    mkdirSync(sx, { recursive: true });
    copyFileSync(path.join(modelDir, 'encoder.onnx'), path.join(sx, 'sam2.1_hiera_tiny.encoder.onnx'));
    copyFileSync(path.join(modelDir, 'decoder.onnx'), path.join(sx, 'sam2.1_hiera_tiny.decoder.onnx'));
    const m2m = await runSam(['queue', 'add', images, '--redis', redis.url, '--queue', 'sx', '--model', sx, '--out', out('sx'), '--use-m2m']);
    expect(m2m.code).toBe(3);
    expect(m2m.stderr).toMatch(/has no SAM 2 single-mask decoder .*which --use-m2m runs; convert the checkpoint with 'sam models convert'/);
    expect(m2m.stderr.trim().split('\n')).toHaveLength(1);
    expect(await storedSettings('sx')).toBeUndefined();

    expect((await add('split', out('split'), ...AMG)).code).toBe(0);
    const w = await work('split', '--decoder', 'split');
    expect(w.code).toBe(2);
    expect(w.stderr).toMatch(/--decoder split applies to SAM \(v1\) models only: SAM 2's generator always takes the folder's split decoder/);
    expect(w.stderr.trim().split('\n')).toHaveLength(1);
    // Nothing taken: both images still wait for a worker started right.
    const st = await runSam(['queue', 'status', '--redis', redis.url, '--queue', 'split', '--json']);
    expect(JSON.parse(st.stdout)).toMatchObject({ waiting: 2, active: 0, completed: 0, failed: 0 });
  });
});
