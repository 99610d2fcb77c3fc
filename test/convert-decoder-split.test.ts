/**
 * The split decoder (src/convert/sam-decoder-split.ts: image side once per image, prompt-side
 * stage 1 → IoU, stage 2 → masks for the prompts that pass the filter) against the official
 * PyTorch outputs (../shared/golden/convert: MobileSAM vit_t with random weights, image dog.jpg)
 * for every golden case without mask input, and against today's batched decoder (buildSamDecoder)
 * on a 4×4 grid of point prompts. Bars: TOL (test/helpers/golden.ts), as for the other decoders.
 *
 * Also counts the multiply-adds of every MatMul/Gemm of each graph, with the shapes onnxruntime
 * gives the graph's tensors on a real run (the counter fetches the operands' shapes; nothing is
 * timed: timings are the bench's job).
 */
import { availableParallelism } from 'node:os';
import * as ort from 'onnxruntime-node';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadStateDict, type StateDict } from '../src/convert/checkpoint.js';
import { serializeModel, type GraphBuilder, type ValueInfoProto } from '../src/convert/onnx-builder.js';
import { buildSamDecoder } from '../src/convert/sam-decoder.js';
import { SPLIT_DECODER_IO, buildSamDecoderSplit } from '../src/convert/sam-decoder-split.js';
import { TOL, absErrors, convertGoldenPath, loadGolden, readDecoderGolden } from './helpers/golden.js';

interface GoldenCase {
  decoder_point_coords_1024: number[][];
  decoder_point_labels: number[];
  iou_predictions: number[][];
}
interface ConvertGolden {
  cases: Record<string, GoldenCase>;
}

/** The golden cases without mask input, and batches of equal N (padding is not neutral). */
const CASES = ['point', 'two_points', 'box', 'box_point'] as const;
type CaseName = (typeof CASES)[number];
const BATCHES: readonly (readonly CaseName[])[] = [
  ['point', 'box'], // N = 2
  ['two_points', 'box_point'], // N = 3
];

const M = 4;
const LOW = 256 * 256;
const HW = 64 * 64;
const C = 256;

const fmt = (e: { max: number; mean: number }): string => `max ${e.max.toExponential(2)} mean ${e.mean.toExponential(2)}`;

const sessionOptions = (level: 'all' | 'disabled' = 'all'): ort.InferenceSession.SessionOptions => ({
  intraOpNumThreads: availableParallelism(),
  interOpNumThreads: 1,
  executionMode: 'sequential',
  graphOptimizationLevel: level,
  logSeverityLevel: 3,
});

const session = (g: GraphBuilder): Promise<ort.InferenceSession> => ort.InferenceSession.create(g.serialize(), sessionOptions());

interface Prompts {
  point_coords: ort.Tensor;
  point_labels: ort.Tensor;
}

function prompts(list: readonly { coords: readonly number[]; labels: readonly number[] }[]): Prompts {
  const b = list.length;
  const n = list[0].labels.length;
  const coords = new Float32Array(b * n * 2);
  const labels = new Float32Array(b * n);
  list.forEach((p, i) => {
    expect(p.labels.length).toBe(n);
    coords.set(p.coords, i * n * 2);
    labels.set(p.labels, i * n);
  });
  return {
    point_coords: new ort.Tensor('float32', coords, [b, n, 2]),
    point_labels: new ort.Tensor('float32', labels, [b, n]),
  };
}

/** Rows `rows` of a [B, …] tensor as a new [rows.length, …] tensor (what the engine does for stage 2). */
function gatherRows(t: ort.Tensor, rows: readonly number[]): ort.Tensor {
  const per = t.dims.slice(1).reduce((a, d) => a * d, 1);
  const src = t.data as Float32Array;
  const out = new Float32Array(rows.length * per);
  rows.forEach((r, i) => out.set(src.subarray(r * per, (r + 1) * per), i * per));
  return new ort.Tensor('float32', out, [rows.length, ...t.dims.slice(1)]);
}

const rowOf = (t: ort.Tensor, r: number): Float32Array => {
  const per = t.dims.slice(1).reduce((a, d) => a * d, 1);
  return (t.data as Float32Array).subarray(r * per, (r + 1) * per);
};

/**
 * Multiply-adds of the MatMul/Gemm nodes of a graph on one run with `feeds`: the graph is run
 * (unoptimized) with every operand of those nodes added as an output, so the shapes are
 * onnxruntime's own. Nodes computing only from initializers (weight reshapes that onnxruntime
 * folds at load time) are not counted.
 */
async function countMacs(g: GraphBuilder, feeds: Record<string, ort.Tensor>): Promise<number> {
  const model = g.toModel();
  const graph = model.graph!;
  const dims = new Map<string, number[]>();
  const constant = new Set<string>();
  for (const t of graph.initializer ?? []) {
    dims.set(t.name!, (t.dims ?? []).map(Number));
    constant.add(t.name!);
  }
  for (const [name, t] of Object.entries(feeds)) dims.set(name, [...t.dims]);
  const nodes = graph.node ?? [];
  for (const n of nodes) if ((n.input ?? []).every((i) => i === '' || constant.has(i))) for (const o of n.output ?? []) constant.add(o);
  const counted = nodes.filter((n) => (n.opType === 'MatMul' || n.opType === 'Gemm') && !constant.has(n.output![0]));
  const wanted = [...new Set(counted.flatMap((n) => n.input!.slice(0, 2)))].filter((name) => !dims.has(name));
  const extra: ValueInfoProto[] = wanted.map((name) => ({ name, type: { tensorType: { elemType: 1 } } }));
  graph.output = [...(graph.output ?? []), ...extra];
  const s = await ort.InferenceSession.create(serializeModel(model), sessionOptions('disabled'));
  const out = await s.run(feeds, wanted);
  for (const name of wanted) dims.set(name, [...out[name].dims]);
  await s.release();

  let macs = 0;
  for (const n of counted) {
    let a = dims.get(n.input![0])!;
    let b = dims.get(n.input![1])!;
    if (n.opType === 'Gemm') {
      const flag = (k: string): boolean => (n.attribute ?? []).some((x) => x.name === k && Number(x.i) === 1);
      if (flag('transA')) a = [a[1], a[0]];
      if (flag('transB')) b = [b[1], b[0]];
    }
    const [mRows, k] = a.slice(-2);
    const nCols = b[b.length - 1];
    expect(b[b.length - 2]).toBe(k);
    // broadcast batch dims
    const ba = a.slice(0, -2);
    const bb = b.slice(0, -2);
    const rank = Math.max(ba.length, bb.length);
    let batch = 1;
    for (let i = 0; i < rank; i++) batch *= Math.max(ba[ba.length - rank + i] ?? 1, bb[bb.length - rank + i] ?? 1);
    macs += batch * mRows * k * nCols;
  }
  return macs;
}

describe('split SAM decoder (vit_t-random): image side, prompt-side IoU stage, mask stage', () => {
  let golden: ConvertGolden;
  let sd: StateDict;
  let embeddings: ort.Tensor;
  let image: ort.InferenceSession;
  let prompt: ort.InferenceSession;
  let masks: ort.InferenceSession;
  let imageSide: Record<string, ort.Tensor>;
  const lowResGolden = new Map<CaseName, Float32Array>();

  /** Stage 1 + stage 2 for all rows of `p`. */
  async function runSplit(p: Prompts, stage1 = prompt, image1 = imageSide): Promise<{ iou: ort.Tensor; low: ort.Tensor; s1: ort.InferenceSession.ReturnType }> {
    const s1 = await stage1.run({ ...image1, ...p });
    const s2 = await masks.run({ transformer_src: s1.transformer_src, hyper_in: s1.hyper_in });
    return { iou: s1.iou_predictions, low: s2.low_res_masks, s1 };
  }

  const caseOf = (name: CaseName) => {
    const c = golden.cases[name];
    return { coords: c.decoder_point_coords_1024.flat(), labels: c.decoder_point_labels };
  };

  /** The 4×4 grid of automatic mask generation prompts (a point plus the padding point). */
  const grid = (): Prompts =>
    prompts(
      Array.from({ length: 16 }, (_, i) => ({
        coords: [((i % 4) + 0.5) * (1024 / 4), (Math.floor(i / 4) + 0.5) * (683 / 4), 0, 0],
        labels: [1, -1],
      })),
    );

  beforeAll(async () => {
    golden = loadGolden<ConvertGolden>('convert/convert-golden.json');
    sd = await loadStateDict(convertGoldenPath('vit_t-random.pth'));
    const g = readDecoderGolden(CASES);
    embeddings = new ort.Tensor('float32', g.embedding, [1, 256, 64, 64]);
    for (const [name, low] of g.lowRes) lowResGolden.set(name, low);
    const graphs = buildSamDecoderSplit(sd);
    [image, prompt, masks] = await Promise.all([session(graphs.image), session(graphs.prompt), session(graphs.masks)]);
    imageSide = await image.run({ image_embeddings: embeddings });
  });

  it('has the documented inputs and outputs', () => {
    const io = (s: ort.InferenceSession) => ({
      inputs: s.inputMetadata.map((m) => [m.name, m.isTensor ? m.shape : []]),
      outputs: s.outputMetadata.map((m) => [m.name, m.isTensor ? m.shape : []]),
    });
    expect(io(image)).toEqual({
      inputs: [['image_embeddings', [1, 256, 64, 64]]],
      outputs: [
        ['src', [HW, C]],
        ['pos_src', [HW, C]],
        ['l0_t2i_k', [8, 16, HW]],
        ['l0_t2i_v', [8, HW, 16]],
        ['l0_i2t_q', [HW, 128]],
      ],
    });
    expect(io(prompt)).toEqual({
      inputs: [
        ['src', [HW, C]],
        ['pos_src', [HW, C]],
        ['l0_t2i_k', [8, 16, HW]],
        ['l0_t2i_v', [8, HW, 16]],
        ['l0_i2t_q', [HW, 128]],
        ['point_coords', ['batch', 'num_points', 2]],
        ['point_labels', ['batch', 'num_points']],
      ],
      outputs: [
        ['iou_predictions', ['batch', M]],
        ['transformer_src', ['batch', HW, C]],
        ['hyper_in', ['batch', M, C / 8]],
      ],
    });
    expect(io(masks)).toEqual({
      inputs: [
        ['transformer_src', ['batch', HW, C]],
        ['hyper_in', ['batch', M, C / 8]],
      ],
      outputs: [['low_res_masks', ['batch', M, 256, 256]]],
    });
    expect(image.outputNames).toEqual([...SPLIT_DECODER_IO.image.outputs]);
    expect(prompt.inputNames).toEqual([...SPLIT_DECODER_IO.prompt.inputs]);
    expect(prompt.outputNames).toEqual([...SPLIT_DECODER_IO.prompt.outputs]);
    expect(masks.inputNames).toEqual([...SPLIT_DECODER_IO.masks.inputs]);
  });

  it('every golden case without mask input within TOL, alone and in batches of equal N', async () => {
    const check = (label: string, name: CaseName, low: Float32Array, iou: Float32Array): void => {
      const lowErr = absErrors(low, lowResGolden.get(name)!);
      const iouErr = absErrors(iou, Float32Array.from(golden.cases[name].iou_predictions.flat()));
      console.log(`split ${label.padEnd(8)} ${name.padEnd(10)} low_res ${fmt(lowErr)} | iou ${fmt(iouErr)}`);
      expect(lowErr.max).toBeLessThanOrEqual(TOL.decoderLogits.max);
      expect(lowErr.mean).toBeLessThanOrEqual(TOL.decoderLogits.mean);
      expect(iouErr.max).toBeLessThanOrEqual(TOL.decoderIou.max);
      expect(iouErr.mean).toBeLessThanOrEqual(TOL.decoderIou.mean);
    };
    for (const name of CASES) {
      const out = await runSplit(prompts([caseOf(name)]));
      expect(out.low.dims).toEqual([1, M, 256, 256]);
      expect(out.iou.dims).toEqual([1, M]);
      check('B=1', name, out.low.data as Float32Array, out.iou.data as Float32Array);
    }
    for (const batch of BATCHES) {
      const out = await runSplit(prompts(batch.map(caseOf)));
      batch.forEach((name, i) => check(`B=${batch.length}/${i}`, name, rowOf(out.low, i), rowOf(out.iou, i)));
    }
  });

  it("a 4×4 grid gives today's batched decoder's logits and IoU; stage 2 on a subset of rows gives those rows", async () => {
    const p = grid();
    const b = 16;
    const batched = await session(buildSamDecoder(sd, { batched: true, upscale: false }));
    const direct = await session(buildSamDecoderSplit(sd, { factorized: false }).prompt);
    const ref = await batched.run({
      image_embeddings: embeddings,
      ...p,
      mask_input: new ort.Tensor('float32', new Float32Array(b * LOW), [b, 1, 256, 256]),
      has_mask_input: new ort.Tensor('float32', new Float32Array(b), [b]),
    });
    for (const [label, stage1] of [
      ['factorized', prompt],
      ['direct', direct],
    ] as const) {
      const out = await runSplit(p, stage1);
      const low = absErrors(out.low.data as Float32Array, ref.low_res_masks.data as Float32Array);
      const iou = absErrors(out.iou.data as Float32Array, ref.iou_predictions.data as Float32Array);
      console.log(`split (${label}) vs batched decoder, 16-point grid: low_res ${fmt(low)} | iou ${fmt(iou)}`);
      expect(low.max).toBeLessThanOrEqual(TOL.decoderLogits.max);
      expect(low.mean).toBeLessThanOrEqual(TOL.decoderLogits.mean);
      expect(iou.max).toBeLessThanOrEqual(TOL.decoderIou.max);
      expect(iou.mean).toBeLessThanOrEqual(TOL.decoderIou.mean);

      if (label === 'factorized') {
        // the engine's stage 2: only the rows whose IoU passes, gathered into a smaller batch
        const rows = [3, 7, 12];
        const sub = await masks.run({ transformer_src: gatherRows(out.s1.transformer_src, rows), hyper_in: gatherRows(out.s1.hyper_in, rows) });
        expect(sub.low_res_masks.dims).toEqual([rows.length, M, 256, 256]);
        rows.forEach((r, i) => {
          const e = absErrors(rowOf(sub.low_res_masks, i), rowOf(out.low, r));
          expect(e.max).toBeLessThanOrEqual(1e-6);
        });
      }
    }
    await Promise.all([batched.release(), direct.release()]);
  });

  it('counts multiply-adds: the split graphs do less than the batched decoder', async () => {
    const graphs = buildSamDecoderSplit(sd);
    const direct = buildSamDecoderSplit(sd, { factorized: false }).prompt;
    const batched = buildSamDecoder(sd, { batched: true, upscale: false });
    const gridAll = grid();
    const first = (k: number): Prompts => ({
      point_coords: gatherRows(gridAll.point_coords, [...Array(k).keys()]),
      point_labels: gatherRows(gridAll.point_labels, [...Array(k).keys()]),
    });
    /** MACs at B = 1, 2, 3 → [shared per call, per prompt]; checks they are linear in B. */
    const linear = async (count: (b: number) => Promise<number>): Promise<[number, number]> => {
      const [m1, m2, m3] = [await count(1), await count(2), await count(3)];
      const per = m2 - m1;
      expect(m3).toBe(m1 + 2 * per);
      return [m1 - per, per];
    };
    const imageMacs = await countMacs(graphs.image, { image_embeddings: embeddings });
    const stage1 = async (g: GraphBuilder) => linear(async (b) => countMacs(g, { ...imageSide, ...first(b) }));
    const [s1Shared, s1] = await stage1(graphs.prompt);
    const [, s1Direct] = await stage1(direct);
    const s1out = await prompt.run({ ...imageSide, ...first(3) });
    const [s2Shared, s2] = await linear(async (b) =>
      countMacs(graphs.masks, {
        transformer_src: gatherRows(s1out.transformer_src, [...Array(b).keys()]),
        hyper_in: gatherRows(s1out.hyper_in, [...Array(b).keys()]),
      }),
    );
    const [bShared, bPer] = await linear(async (b) =>
      countMacs(batched, {
        image_embeddings: embeddings,
        ...first(b),
        mask_input: new ort.Tensor('float32', new Float32Array(b * LOW), [b, 1, 256, 256]),
        has_mask_input: new ort.Tensor('float32', new Float32Array(b), [b]),
      }),
    );
    expect(s1Shared).toBe(0);
    expect(s2Shared).toBe(0);
    const mega = (x: number): string => `${(x / 1e6).toFixed(1)} M`;
    // per prompt in B=16 calls; the image side once per 32×32 grid (1024 prompts)
    const today = bPer + bShared / 16;
    const split = (pass: number): number => imageMacs / 1024 + s1 + pass * s2;
    console.log(
      [
        'multiply-adds (vit_t, N = 2 points per prompt, T = 7 tokens):',
        `  batched decoder today: ${mega(bShared)} per call (shared layer-0 image side) + ${mega(bPer)} per prompt → ${mega(today)} per prompt at B=16`,
        `  image side: ${mega(imageMacs)} per image`,
        `  stage 1: ${mega(s1)} per prompt (direct projections: ${mega(s1Direct)})`,
        `  stage 2: ${mega(s2)} per prompt`,
        `  split, all prompts: ${mega(split(1))} per prompt (${(100 * (1 - split(1) / today)).toFixed(1)}% saved)`,
        `  split, stage 2 for 30% of prompts: ${mega(split(0.3))} per prompt (${(100 * (1 - split(0.3) / today)).toFixed(1)}% saved)`,
      ].join('\n'),
    );
    // the split runs at most what today's graph does (direct), and the factorization saves more
    expect(s1Direct + s2).toBeLessThanOrEqual(bPer);
    expect(split(1)).toBeLessThan(0.7 * today);
    expect(split(0.3)).toBeLessThan(0.5 * today);
  });
});
