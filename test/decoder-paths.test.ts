/**
 * `sam auto`'s three decoder paths on the fixture scenes (the colour oracle): the official
 * single-prompt decoder (one call per point), the batched decoder (models/oracle-batched) and the
 * split decoder with two-stage decoding (models/oracle, `--decoder split` and the default) write
 * the same bytes, with the model in the engine worker (pipelined, the default) or on the main
 * thread (--no-pipeline). The oracle's graphs compute the same float32 values on every path
 * (test/fixtures.test.ts), so anything that differs here is the engine's doing: row order, the
 * rows stage 2 runs, the IoU filter.
 */
import { readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { fixtureImage, fixtureModel, runSam, tempDir } from './helpers/cli.js';

const tmp = tempDir('sam-decoder-paths-');
afterAll(() => tmp.cleanup());

const IMAGES = ['basic-320x240.png', 'many-small-512.png', 'speck-hole-256.png', 'tall-200x500.png', 'wide-640x360.png'];

async function autoRun(name: string, model: string, extra: readonly string[]): Promise<Map<string, string>> {
  const out = path.join(tmp.dir, name);
  const r = await runSam(['auto', ...IMAGES.map(fixtureImage), '-m', fixtureModel(model), '-o', out, '--points-per-side', '12', '-q', ...extra]);
  expect(r.stderr).toMatch(/5 done, 0 skipped, 0 failed, [1-9]\d* masks/);
  expect(r.code).toBe(0);
  return new Map(readdirSync(out).map((f) => [f, readFileSync(path.join(out, f), 'utf8')]));
}

describe('sam auto decoder paths on the fixture scenes', () => {
  it('single, batched and split (two-stage) decoders write the same records', async () => {
    const single = await autoRun('single', 'oracle', ['--decoder', 'single']);
    expect(single.size).toBe(IMAGES.length);
    for (const [name, model, extra] of [
      ['batched', 'oracle-batched', ['--decoder', 'batched']],
      ['split', 'oracle', ['--decoder', 'split']],
      // The default: split decoder in the engine worker, decoding while the main thread post-processes.
      ['auto', 'oracle', []],
      ['split-one-thread', 'oracle', ['--decoder', 'split', '--no-pipeline']],
    ] as const) {
      const got = await autoRun(name, model, extra);
      for (const [file, text] of single) expect(got.get(file), `${name}: ${file}`).toBe(text);
    }
  });

  it('with every threshold at 0 the split decoder still writes what the single-prompt decoder writes', async () => {
    const open = ['--pred-iou-thresh', '0', '--stability-score-thresh', '0', '--box-nms-thresh', '1'];
    const single = await autoRun('single-0', 'oracle', ['--decoder', 'single', ...open]);
    const split = await autoRun('split-0', 'oracle', ['--decoder', 'split', ...open]);
    for (const [file, text] of single) expect(split.get(file), file).toBe(text);
  });

  it('--decoder split on a model without a split decoder names the fix', async () => {
    const r = await runSam(['auto', fixtureImage('basic-320x240.png'), '-m', fixtureModel('oracle-batched'), '-o', path.join(tmp.dir, 'x'), '--decoder', 'split']);
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/no split decoder \(manifest "splitDecoder"\); run 'sam models convert' on the checkpoint again to add it, or drop --decoder split/);
  });
});
