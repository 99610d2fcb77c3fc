/**
 * `sam auto` on a SAM 2 model against SAM2AutomaticMaskGenerator (../shared/golden/sam2/amg):
 * the golden random sam2.1_hiera_tiny checkpoint converted by `sam models convert`, then the
 * generator through the CLI on dog.jpg with the three golden option sets (plain, use_m2m,
 * stability_score_offset 0.01); SAM 2's defaults; and the options one family has and the other
 * lacks, refused as usage errors.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { Command } from 'commander';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeRle } from '../src/core/rle.js';
import type { CocoRle, MaskRecord } from '../src/core/types.js';
import { addAmgOptions, amgOptionsFrom, type AmgCliOptions } from '../src/commands/auto-options.js';
import { SamAutomaticMaskGenerator, resolveAmgOptions } from '../src/amg/generator.js';
import { SamModel } from '../src/engine/model.js';
import { Sam2AmgPredictor } from '../src/engine/sam2-amg-predictor.js';
import { Sam2SplitDecoderSession } from '../src/engine/sam2-split-decoder.js';
import { loadImage, preprocessSam2 } from '../src/io/image.js';
import { fixtureModel, maskIou, runSam, tempDir } from './helpers/cli.js';
import { sharedDir } from './helpers/golden.js';

const tmp = tempDir('sam-sam2-auto-');
afterAll(() => tmp.cleanup());
const modelDir = path.join(tmp.dir, 'sam2.1_hiera_tiny');
const sam2Dir = (): string => path.join(sharedDir(), 'golden', 'sam2');
const dog = (): string => path.join(sharedDir(), 'images', 'dog.jpg');
const out = (name: string): string => path.join(tmp.dir, name);

beforeAll(async () => {
  const r = await runSam(['models', 'convert', path.join(sam2Dir(), 'sam2.1_hiera_tiny-random-fp16.pt'), '--out', modelDir, '-q']);
  expect(r.code, r.stderr).toBe(0);
}, 300_000);

/** The golden runs' options (index.json "amg" → options_given), as sam auto flags. */
const BASE = ['--points-per-side', '3', '--pred-iou-thresh', '0', '--stability-score-thresh', '0', '--box-nms-thresh', '1.0'];
const RUNS: { name: string; flags: string[] }[] = [
  { name: 'dog_pps3', flags: [] },
  { name: 'dog_pps3_m2m', flags: ['--use-m2m'] },
  { name: 'dog_pps3_offset0.01', flags: ['--stability-score-offset', '0.01'] },
];

type Rec = MaskRecord<CocoRle>;
const samePoint = (a: Rec, b: Rec): boolean =>
  a.point_coords.length === b.point_coords.length && a.point_coords.every((p, i) => Math.abs(p[0] - b.point_coords[i][0]) < 1e-3 && Math.abs(p[1] - b.point_coords[i][1]) < 1e-3);

describe('sam auto on SAM 2.1 tiny against SAM2AutomaticMaskGenerator', () => {
  it('the golden options given match index.json', () => {
    const amg = (JSON.parse(readFileSync(path.join(sam2Dir(), 'index.json'), 'utf8')) as { amg: Record<string, { options_given: Record<string, unknown> }> }).amg;
    expect(amg.dog_pps3.options_given).toEqual({ points_per_side: 3, pred_iou_thresh: 0, stability_score_thresh: 0, box_nms_thresh: 1 });
    expect(amg.dog_pps3_m2m.options_given).toMatchObject({ use_m2m: true });
    expect(amg['dog_pps3_offset0.01'].options_given).toMatchObject({ stability_score_offset: 0.01 });
  });

  for (const run of RUNS) {
    it(`${run.name}: same records (mask IoU >= 0.99, predicted_iou and stability_score within 1e-3)`, async () => {
      const dir = out(run.name);
      const r = await runSam(['auto', dog(), '--model', modelDir, '--out', dir, '-q', ...BASE, ...run.flags]);
      expect(r.code, r.stderr).toBe(0);
      const text = readFileSync(path.join(dir, 'dog.json'), 'utf8');
      const ours = JSON.parse(text) as Rec[];
      const golden = JSON.parse(readFileSync(path.join(sam2Dir(), 'amg', `${run.name}.json`), 'utf8')) as Rec[];
      expect(ours.length).toBe(golden.length);
      // SAM 2's number types: float boxes and points.
      expect(text).toMatch(/"bbox": \[-?\d+\.\d+, -?\d+\.\d+, -?\d+\.\d+, -?\d+\.\d+\]/);
      expect(text).toContain('"crop_box": [0.0, 0.0, 800.0, 534.0]');
      const used = new Set<number>();
      let minIou = 1;
      let dIou = 0;
      let dStab = 0;
      let sameOrder = 0;
      golden.forEach((g, i) => {
        const gm = decodeRle(g.segmentation).data;
        // The record at the same position if it has the same point, else the best unmatched one with that point.
        let best = -1;
        let bestIou = -1;
        for (let j = 0; j < ours.length; j++) {
          if (used.has(j) || !samePoint(ours[j], g)) continue;
          const iou = maskIou(decodeRle(ours[j].segmentation).data, gm);
          if (iou > bestIou) [best, bestIou] = [j, iou];
          if (j === i && iou >= 0.99) break;
        }
        expect(best, `golden record ${i} (point ${JSON.stringify(g.point_coords)}) has no record with its point`).toBeGreaterThanOrEqual(0);
        used.add(best);
        const o = ours[best];
        if (best === i) sameOrder++;
        minIou = Math.min(minIou, bestIou);
        dIou = Math.max(dIou, Math.abs(o.predicted_iou - g.predicted_iou));
        dStab = Math.max(dStab, Math.abs(o.stability_score - g.stability_score));
        expect(o.segmentation.size).toEqual(g.segmentation.size);
        expect(o.crop_box).toEqual(g.crop_box);
      });
      console.log(
        `${run.name}: ${ours.length} records (golden ${golden.length}), ${sameOrder} in the same position; min mask IoU ${minIou.toFixed(6)}, ` +
          `max |d predicted_iou| ${dIou.toExponential(2)}, max |d stability_score| ${dStab.toExponential(2)}`,
      );
      expect(minIou).toBeGreaterThanOrEqual(0.99);
      expect(dIou).toBeLessThanOrEqual(1e-3);
      expect(dStab).toBeLessThanOrEqual(1e-3);
    }, 300_000);
  }

  it('the split decoder (default) gives the plain graph\'s records to float32 rounding, skipping masks of prompts the IoU filter drops', async () => {
    const model = await SamModel.open(modelDir);
    const split = await model.sam2SplitDecoder();
    expect(split).toBeInstanceOf(Sam2SplitDecoderSession);
    const [encoder, plain, refiner] = await Promise.all([model.encoder(), model.sam2Decoder(true), model.sam2Decoder(false)]);
    const image = await loadImage(dog());
    // Encoded once: every run below takes the stored features (as with sam embed) and differs only in the decoder.
    const features = await encoder.runSam2(preprocessSam2(image));
    const state = { embeddings: features.embeddings, highResFeats: features.highResFeats, originalSize: [534, 800] as [number, number], inputSize: [1024, 1024] as [number, number] };
    // Random-weight IoUs sit near 0.5: 0.5 keeps some prompts and drops others.
    for (const extra of [{ predIouThresh: 0.5 }, { predIouThresh: 0.5, minMaskRegionArea: 20 }, { predIouThresh: 0.495, useM2m: true }]) {
      const o = resolveAmgOptions({ family: 'sam2', pointsPerSide: 4, stabilityScoreThresh: 0, boxNmsThresh: 1, ...extra });
      const run = (d: typeof plain | Sam2SplitDecoderSession) =>
        new SamAutomaticMaskGenerator(new Sam2AmgPredictor(undefined, d, o.useM2m ? refiner : undefined, image, undefined, state), o).generate([534, 800]);
      const [a, b] = [await run(plain), await run(split!)];
      const what = JSON.stringify(extra);
      expect(b.length, what).toBeGreaterThan(0);
      expect(b.length, what).toBeLessThan(48);
      expect(b.length, what).toBe(a.length);
      // The factorized cross attentions reassociate float32 sums: logits agree to ~2e-8, so only
      // pixels whose logit is that close to 0 may flip; everything else is the same.
      let minIou = 1;
      b.forEach((r, i) => {
        expect(r.point_coords, what).toEqual(a[i].point_coords);
        expect(Math.abs(r.predicted_iou - a[i].predicted_iou), what).toBeLessThan(1e-6);
        expect(Math.abs(r.stability_score - a[i].stability_score), what).toBeLessThan(1e-6);
        minIou = Math.min(minIou, maskIou(decodeRle(r.segmentation).data, decodeRle(a[i].segmentation).data));
      });
      console.log(`split vs plain ${what}: ${b.length} records, min mask IoU ${minIou.toFixed(7)}`);
      expect(minIou, what).toBeGreaterThan(0.9999);
    }
  }, 300_000);

  it('--min-mask-region-area runs SAM 2\'s hole and sprinkle filling: same candidates, fewer noise pieces', async () => {
    const plainDir = out('dog_pps3');
    const dir = out('minarea');
    const r = await runSam(['auto', dog(), '--model', modelDir, '--out', dir, '-q', ...BASE, '--min-mask-region-area', '25']);
    expect(r.code, r.stderr).toBe(0);
    const filled = JSON.parse(readFileSync(path.join(dir, 'dog.json'), 'utf8')) as Rec[];
    const plain = JSON.parse(readFileSync(path.join(plainDir, 'dog.json'), 'utf8')) as Rec[];
    // Nothing filtered (thresholds 0, NMS 1.0): one record per candidate, with the same points and IoUs.
    expect(filled.map((m) => [m.point_coords, m.predicted_iou])).toEqual(plain.map((m) => [m.point_coords, m.predicted_iou]));
    // Random-weight masks are noise: many pieces of <= 25 low-res pixels, so every mask changes.
    const counts = (m: Rec): number => m.segmentation.counts.length;
    filled.forEach((m, i) => {
      expect(m.area).not.toBe(plain[i].area);
      expect(counts(m)).toBeLessThan(counts(plain[i]));
    });
  }, 300_000);

  it('SAM 2 models get SAM 2 defaults (pred_iou_thresh 0.8), SAM (v1) models keep theirs (0.88)', async () => {
    const parse = (args: string[]): { opts: AmgCliOptions; cmd: Command } => {
      const cmd = addAmgOptions(new Command('auto').exitOverride());
      cmd.parse(args, { from: 'user' });
      return { opts: cmd.opts<AmgCliOptions>(), cmd };
    };
    const a = parse([]);
    expect(await amgOptionsFrom(a.opts, a.cmd, 'sam2')).toMatchObject({ family: 'sam2', predIouThresh: 0.8, maskThreshold: 0, useM2m: false, multimaskOutput: true, stabilityScoreThresh: 0.95, stabilityScoreOffset: 1, boxNmsThresh: 0.7 });
    const v1 = await amgOptionsFrom(a.opts, a.cmd, 'sam');
    expect(v1.predIouThresh).toBe(0.88);
    expect(v1).not.toHaveProperty('family');
    expect(v1).not.toHaveProperty('useM2m');
    const b = parse(['--pred-iou-thresh', '0.5', '--use-m2m', '--mask-threshold', '0.25', '--no-multimask-output']);
    expect(await amgOptionsFrom(b.opts, b.cmd, 'sam2')).toMatchObject({ predIouThresh: 0.5, useM2m: true, maskThreshold: 0.25, multimaskOutput: false });
  });

  it('refuses, as one-line usage errors (exit 2), SAM 2 options on a SAM (v1) model and v1-only options on SAM 2', async () => {
    const cases: { args: string[]; re: RegExp }[] = [
      { args: ['--model', fixtureModel(), '--use-m2m'], re: /--use-m2m applies to SAM 2 models only .* is a SAM \(v1\) model: drop --use-m2m/ },
      { args: ['--model', fixtureModel(), '--mask-threshold', '0.5'], re: /--mask-threshold applies to SAM 2 models only/ },
      { args: ['--model', fixtureModel(), '--no-multimask-output'], re: /--no-multimask-output applies to SAM 2 models only/ },
      { args: ['--model', modelDir, '--decoder', 'split'], re: /--decoder split applies to SAM \(v1\) models only/ },
    ];
    for (const c of cases) {
      const r = await runSam(['auto', dog(), '--out', out('refused'), ...c.args]);
      expect(r.code, r.stderr).toBe(2);
      expect(r.stderr).toMatch(c.re);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
    }
  }, 120_000);
});
