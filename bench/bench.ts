/**
 * `npm run bench [-- --model DIR] [-- --points-per-side N] [-- IMAGES_OR_FOLDERS...]`
 *
 * Runs the `sam auto` pipeline (library calls, coco_rle output to a temp folder) over a folder
 * and prints where the time goes, per stage, plus wall time, images/s, masks and peak RSS.
 * Defaults: the oracle fixture model (built if missing) over ../shared/images. When the model has
 * a batched decoder (manifest "batchedDecoder", as `sam models convert` writes) or a batched
 * sibling folder (`<model>-batched`, as the fixture's oracle-batched), the same images are run
 * with the single-prompt decoder too and the decoders compared.
 */
import { table } from '../src/util/format.js';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { generateFixtures } from '../fixtures/generate.js';
import { AMG_DEFAULTS } from '../src/amg/generator.js';
import { STAGES, StageTimes, type Stage } from '../src/core/timings.js';
import { autoImage, autoSetup } from '../src/pipeline/auto.js';
import { collectInputs, type InputImage } from '../src/io/inputs.js';
import { SamModel, type DecoderChoice } from '../src/engine/model.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const FIXTURES = path.join(REPO, '.cache', 'test-fixtures');

interface RunResult {
  times: StageTimes;
  wallMs: number;
  masks: number;
  images: number;
  decoderBatched: boolean;
  /** Process peak RSS (MB) when the run ended: runs go one after the other, so it only grows. */
  peakRssMb: number;
}

async function runModel(modelDir: string, items: readonly InputImage[], pointsPerSide: number, decoderChoice: DecoderChoice = 'auto'): Promise<RunResult> {
  const model = await SamModel.open(modelDir);
  // Session creation is start-up cost, not per-image work: keep it out of the figures.
  await model.encoder();
  const decoder = await model.amgDecoder(decoderChoice);
  const out = await mkdtemp(path.join(tmpdir(), 'sam-bench-'));
  try {
    const setup = autoSetup({
      model,
      amg: { ...AMG_DEFAULTS, pointsPerSide },
      outDir: out,
      outputMode: 'coco_rle',
      coco: false,
      force: true,
      decoder: decoderChoice,
    });
    const times = new StageTimes();
    let masks = 0;
    const t0 = performance.now();
    for (const item of items) {
      const t = new StageTimes();
      masks += (await autoImage(setup, item, t)).masks;
      times.merge(t);
    }
    const wallMs = performance.now() - t0;
    return { times, wallMs, masks, images: items.length, decoderBatched: !('batched' in decoder) || decoder.batched, peakRssMb: process.resourceUsage().maxRSS / 1024 };
  } finally {
    await rm(out, { recursive: true, force: true });
  }
}

const LABELS: Record<Stage, string> = {
  decode: 'decode (image file)',
  preprocess: 'preprocess (resize, normalize)',
  encoder: 'encoder (ORT)',
  decoder: 'decoder calls (ORT)',
  postprocess: 'postprocess (upscale + filters)',
  nms: 'nms',
  rle: 'rle',
  write: 'write',
};

/** Numbers right-aligned: every column but the first. */
const numTable = (rows: string[][]): string => table(rows, { right: rows[0].map((_, i) => i).filter((i) => i > 0) });

const ms = (v: number): string => v.toFixed(0);

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    options: { model: { type: 'string' }, 'points-per-side': { type: 'string' } },
    allowPositionals: true,
  });
  let modelDir = values.model;
  if (!modelDir) {
    modelDir = path.join(FIXTURES, 'models', 'oracle');
    if (!existsSync(path.join(modelDir, 'manifest.json'))) await generateFixtures(FIXTURES);
  }
  const pointsPerSide = values['points-per-side'] ? Number(values['points-per-side']) : AMG_DEFAULTS.pointsPerSide!;
  const inputs = positionals.length > 0 ? positionals : [path.join(REPO, '..', 'shared', 'images')];
  const items = await collectInputs(inputs);
  if (items.length === 0) throw new Error(`no images found in ${inputs.join(', ')}`);

  process.stdout.write(`model ${modelDir}\nimages ${items.length} (${inputs.join(', ')}), points per side ${pointsPerSide}\n\n`);
  const main = await runModel(modelDir, items, pointsPerSide);
  const staged = STAGES.reduce((a, s) => a + main.times.ms[s], 0);
  const rows = [['stage', 'ms', '% wall']];
  for (const s of STAGES) rows.push([LABELS[s], ms(main.times.ms[s]), ((100 * main.times.ms[s]) / main.wallMs).toFixed(1)]);
  rows.push(['other (untimed)', ms(main.wallMs - staged), ((100 * (main.wallMs - staged)) / main.wallMs).toFixed(1)]);
  rows.push(['wall', ms(main.wallMs), '100.0']);
  process.stdout.write(`${numTable(rows)}\n\n`);
  process.stdout.write(
    `${numTable([
      ['images/s', (main.images / (main.wallMs / 1000)).toFixed(3)],
      ['masks', String(main.masks)],
      ['peak RSS (MB)', main.peakRssMb.toFixed(0)],
      ['decoder', main.decoderBatched ? 'batched' : 'single prompt per call'],
    ])}\n`,
  );

  // Compare against the other decoder of the same model, else against a `-batched` sibling.
  const batchedDir = `${modelDir.replace(/[/\\]+$/, '')}-batched`;
  let pair: [RunResult, RunResult, string] | undefined;
  if (main.decoderBatched) pair = [await runModel(modelDir, items, pointsPerSide, 'single'), main, path.basename(modelDir)];
  else if (existsSync(batchedDir)) pair = [main, await runModel(batchedDir, items, pointsPerSide), path.basename(batchedDir)];
  if (pair) {
    const [single, batched, name] = pair;
    process.stdout.write(`\nsingle vs batched decoder (${name}, points per batch ${AMG_DEFAULTS.pointsPerBatch})\n`);
    const cmp = [['decoder', 'decoder ms', 'wall ms', 'images/s', 'masks', 'peak RSS MB']];
    for (const [label, r] of [['single', single], ['batched', batched]] as const) {
      cmp.push([label, ms(r.times.ms.decoder), ms(r.wallMs), (r.images / (r.wallMs / 1000)).toFixed(3), String(r.masks), r.peakRssMb.toFixed(0)]);
    }
    process.stdout.write(`${numTable(cmp)}\n`);
    process.stdout.write(`decoder-stage speed-up of batched over single: ${(single.times.ms.decoder / batched.times.ms.decoder).toFixed(2)}x\n`);
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`bench: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
});
