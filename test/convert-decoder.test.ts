/**
 * The converted prompt encoder + mask decoder against the official PyTorch outputs
 * (../shared/golden/convert: MobileSAM vit_t with random weights, image dog.jpg).
 *
 * Bar: low_res_masks and iou_predictions within TOL (test/helpers/golden.ts: ~10x what is reached), for the
 * single-call decoder and the batched decoder alike. A batch only mixes cases with the same number
 * of points N: padding a shorter prompt with (0,0)/−1 points adds not_a_point_embed tokens that the
 * transformer attends to, so it would change that prompt's result in the official model too.
 */
import { availableParallelism } from 'node:os';
import * as ort from 'onnxruntime-node';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadStateDict, type StateDict } from '../src/convert/checkpoint.js';
import { buildSamDecoder } from '../src/convert/sam-decoder.js';
import { TOL, absErrors, convertGoldenPath, loadGolden, readDecoderGolden, readGoldenNpy } from './helpers/golden.js';
import { promptFeeds, type DecoderPrompt } from './helpers/decoder-feeds.js';

interface GoldenCase {
  decoder_point_coords_1024: number[][];
  decoder_point_labels: number[];
  iou_predictions: number[][];
  mask_area_at_orig_size: number[];
}
interface ConvertGolden {
  orig_size: [number, number];
  cases: Record<string, GoldenCase>;
}

const CASES = ['point', 'two_points', 'box', 'box_point', 'point_mask_input'] as const;
type CaseName = (typeof CASES)[number];
/** Batches of cases with equal N (see the module comment). */
const BATCHES: readonly (readonly CaseName[])[] = [
  ['point', 'point_mask_input', 'box'], // N = 2; only point_mask_input has a mask input
  ['two_points', 'box_point'], // N = 3
];

const M = 4;
const LOW = 256 * 256;


const fmt = (e: { max: number; mean: number }): string => `max ${e.max.toExponential(2)} mean ${e.mean.toExponential(2)}`;

/** Mask areas (logits > 0) per channel of [M, h·w] logits. */
function areas(masks: Float32Array, channels: number): number[] {
  const per = masks.length / channels;
  return Array.from({ length: channels }, (_, c) => {
    let n = 0;
    for (let i = c * per; i < (c + 1) * per; i++) if (masks[i] > 0) n++;
    return n;
  });
}

async function session(sd: StateDict, batched: boolean, upscale = true): Promise<ort.InferenceSession> {
  const bytes = buildSamDecoder(sd, { batched, upscale }).serialize();
  return ort.InferenceSession.create(bytes, {
    intraOpNumThreads: availableParallelism(),
    interOpNumThreads: 1,
    executionMode: 'sequential',
    graphOptimizationLevel: 'all',
    logSeverityLevel: 3,
  });
}

type Prompt = DecoderPrompt;

function feeds(embeddings: ort.Tensor, prompts: readonly Prompt[], origSize?: readonly number[]): Record<string, ort.Tensor> {
  const f: Record<string, ort.Tensor> = { image_embeddings: embeddings, ...promptFeeds(prompts) };
  if (origSize) f.orig_im_size = new ort.Tensor('float32', Float32Array.from(origSize), [2]);
  return f;
}

describe('converted SAM decoder (vit_t-random) vs the official PyTorch outputs', () => {
  let golden: ConvertGolden;
  let sd: StateDict;
  let embeddings: ort.Tensor;
  let single: ort.InferenceSession;
  let batched: ort.InferenceSession;
  let batchedLowRes: ort.InferenceSession;
  const prompts = new Map<CaseName, Prompt>();
  const lowResGolden = new Map<CaseName, Float32Array>();

  beforeAll(async () => {
    golden = loadGolden<ConvertGolden>('convert/convert-golden.json');
    sd = await loadStateDict(convertGoldenPath('vit_t-random.pth'));
    const g = readDecoderGolden(CASES);
    embeddings = new ort.Tensor('float32', g.embedding, [1, 256, 64, 64]);
    for (const [name, low] of g.lowRes) lowResGolden.set(name, low);
    for (const name of CASES) {
      const c = golden.cases[name];
      prompts.set(name, {
        coords: Float32Array.from(c.decoder_point_coords_1024.flat()),
        labels: Float32Array.from(c.decoder_point_labels),
        // the official case feeds channel 2 of case point's low-res logits back as mask_input
        maskInput: name === 'point_mask_input' ? lowResGolden.get('point')!.slice(2 * LOW, 3 * LOW) : undefined,
      });
    }
    [single, batched, batchedLowRes] = await Promise.all([session(sd, false), session(sd, true), session(sd, true, false)]);
  });

  it('has the official signature (single) and a dynamic prompt batch (batched)', () => {
    const io = (s: ort.InferenceSession) => ({
      inputs: s.inputMetadata.map((m) => [m.name, m.isTensor ? m.shape : []]),
      outputs: s.outputMetadata.map((m) => [m.name, m.isTensor ? m.shape : []]),
    });
    expect(io(single)).toEqual({
      inputs: [
        ['image_embeddings', [1, 256, 64, 64]],
        ['point_coords', [1, 'num_points', 2]],
        ['point_labels', [1, 'num_points']],
        ['mask_input', [1, 1, 256, 256]],
        ['has_mask_input', [1]],
        ['orig_im_size', [2]],
      ],
      outputs: [
        ['masks', [1, M, 'orig_h', 'orig_w']],
        ['iou_predictions', [1, M]],
        ['low_res_masks', [1, M, 256, 256]],
      ],
    });
    expect(io(batched).inputs.slice(1, 5)).toEqual([
      ['point_coords', ['batch', 'num_points', 2]],
      ['point_labels', ['batch', 'num_points']],
      ['mask_input', ['batch', 1, 256, 256]],
      ['has_mask_input', ['batch']],
    ]);
    // without upscaling: no orig_im_size input, no masks output
    expect(batchedLowRes.inputNames).toEqual(['image_embeddings', 'point_coords', 'point_labels', 'mask_input', 'has_mask_input']);
    expect(batchedLowRes.outputNames).toEqual(['iou_predictions', 'low_res_masks']);
  });

  it('single-call decoder: every case within TOL (golden.ts), mask areas at the original size', async () => {
    const origSize = golden.orig_size;
    for (const name of CASES) {
      const out = await single.run(feeds(embeddings, [prompts.get(name)!], origSize));
      const low = absErrors(out.low_res_masks.data as Float32Array, lowResGolden.get(name)!);
      const iou = absErrors(out.iou_predictions.data as Float32Array, Float32Array.from(golden.cases[name].iou_predictions.flat()));
      expect(out.masks.dims).toEqual([1, M, origSize[0], origSize[1]]);
      const got = areas(out.masks.data as Float32Array, M);
      const want = golden.cases[name].mask_area_at_orig_size;
      const areaDiff = Math.max(...got.map((a, i) => Math.abs(a - want[i])));
      console.log(`single  ${name.padEnd(16)} low_res ${fmt(low)} | iou ${fmt(iou)} | area Δ ≤ ${areaDiff} px`);
      expect(low.max).toBeLessThanOrEqual(TOL.decoderLogits.max);
      expect(low.mean).toBeLessThanOrEqual(TOL.decoderLogits.mean);
      expect(iou.max).toBeLessThanOrEqual(TOL.decoderIou.max);
      expect(iou.mean).toBeLessThanOrEqual(TOL.decoderIou.mean);
      // logits within ~1e-5 of the reference can flip pixels sitting at exactly 0
      expect(areaDiff).toBeLessThanOrEqual(8);
      if (name === 'point') {
        const ref = readGoldenNpy('vit_t-random.dog.point.masks.npy');
        expect(ref.shape).toEqual([1, M, origSize[0], origSize[1]]);
        const up = absErrors(out.masks.data as Float32Array, ref.data);
        console.log(`single  point            masks (upscaled to ${origSize.join('×')}) ${fmt(up)}`);
        expect(up.max).toBeLessThanOrEqual(TOL.upscaledLogits.max);
        expect(up.mean).toBeLessThanOrEqual(TOL.upscaledLogits.mean);
      }
    }
  });

  it('batched decoder: batches of equal-N cases give each case its own result', async () => {
    const origSize = golden.orig_size;
    for (const batch of BATCHES) {
      const out = await batched.run(feeds(embeddings, batch.map((n) => prompts.get(n)!), origSize));
      const lowOnly = await batchedLowRes.run(feeds(embeddings, batch.map((n) => prompts.get(n)!)));
      const b = batch.length;
      expect(out.low_res_masks.dims).toEqual([b, M, 256, 256]);
      expect(out.iou_predictions.dims).toEqual([b, M]);
      expect(out.masks.dims).toEqual([b, M, origSize[0], origSize[1]]);
      expect(lowOnly.low_res_masks.data).toEqual(out.low_res_masks.data);
      expect(lowOnly.iou_predictions.data).toEqual(out.iou_predictions.data);
      const hw = origSize[0] * origSize[1];
      batch.forEach((name, i) => {
        const lowRes = (out.low_res_masks.data as Float32Array).subarray(i * M * LOW, (i + 1) * M * LOW);
        const iouPred = (out.iou_predictions.data as Float32Array).subarray(i * M, (i + 1) * M);
        const low = absErrors(lowRes, lowResGolden.get(name)!);
        const iou = absErrors(iouPred, Float32Array.from(golden.cases[name].iou_predictions.flat()));
        const got = areas((out.masks.data as Float32Array).subarray(i * M * hw, (i + 1) * M * hw), M);
        const want = golden.cases[name].mask_area_at_orig_size;
        const areaDiff = Math.max(...got.map((a, j) => Math.abs(a - want[j])));
        console.log(`batched ${name.padEnd(16)} (B=${b}, row ${i}) low_res ${fmt(low)} | iou ${fmt(iou)} | area Δ ≤ ${areaDiff} px`);
        expect(low.max).toBeLessThanOrEqual(TOL.decoderLogits.max);
        expect(low.mean).toBeLessThanOrEqual(TOL.decoderLogits.mean);
        expect(iou.max).toBeLessThanOrEqual(TOL.decoderIou.max);
        expect(iou.mean).toBeLessThanOrEqual(TOL.decoderIou.mean);
        expect(areaDiff).toBeLessThanOrEqual(8);
      });
    }
  });

  it('reads prefixed keys, and refuses a state dict without decoder weights', () => {
    const prefixed: StateDict = new Map([...sd].map(([k, v]) => [`sam.${k}`, v]));
    const names = buildSamDecoder(prefixed, { batched: true }, 'sam.').toGraph().initializer?.map((t) => t.name) ?? [];
    expect(names).toContain('sam.mask_decoder.transformer.layers.1.norm4.weight');
    expect(() => buildSamDecoder(new Map(), { batched: false })).toThrow(/no 'prompt_encoder\.no_mask_embed\.weight'.*not a SAM/);
    expect(() => buildSamDecoder(sd, { batched: false }, 'model.')).toThrow(/no 'model\.prompt_encoder\./);
  });

  it('a batch of 64 grid prompts gives each prompt its single-call result', async () => {
    // an 8×8 grid of foreground points (automatic mask generation's prompts) plus the padding point
    const grid: Prompt[] = [];
    for (let i = 0; i < 64; i++) {
      const x = ((i % 8) + 0.5) * (1024 / 8);
      const y = (Math.floor(i / 8) + 0.5) * (683 / 8);
      grid.push({ coords: Float32Array.from([x, y, 0, 0]), labels: Float32Array.from([1, -1]) });
    }
    // Timings of single vs batched calls are the bench's job (npm run bench), not a test's.
    const b = await batchedLowRes.run(feeds(embeddings, grid));
    for (let i = 0; i < grid.length; i++) {
      const s = await single.run(feeds(embeddings, [grid[i]], golden.orig_size), ['low_res_masks']);
      const e = absErrors((b.low_res_masks.data as Float32Array).subarray(i * M * LOW, (i + 1) * M * LOW), s.low_res_masks.data as Float32Array);
      expect(e.max).toBeLessThanOrEqual(TOL.decoderLogits.max);
    }
  });
});
