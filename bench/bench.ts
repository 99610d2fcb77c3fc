/**
 * `npm run bench [-- --quick] [-- --model DIR]`: figures for `sam auto`'s decoder paths, printed,
 * never asserted (a benchmark is not a test). `npm run bench -- --encoder [--skip-vit-h]`: the
 * image encoders instead (encoder-bench.ts); `-- --queue`: the queue against one process
 * (queue-bench.ts); `-- --prompts`: box-to-mask, batched vs one decoder call per box
 * (prompts-bench.ts); `-- --sam2 [--quick]`: SAM 2.1 tiny beside MobileSAM (sam2-bench.ts). In
 * one run, on the same images:
 *
 * 1. the machine: cores and onnxruntime's MatMul GFLOP/s (a 2048³ product, and the shapes the
 *    decoders multiply), the compute limit the decoder is measured against;
 * 2. one call of each decoder graph of the converted vit_t (MobileSAM's cost, random weights):
 *    ms per prompt, multiply-adds per prompt (from ORT's profile), achieved GFLOP/s and the
 *    fraction of the MatMul peak, and the per-operator-type profile;
 * 3. whole `sam auto` runs, one process each (wall, stage times, peak RSS): a 2250x1500 photo
 *    (SA-1B's average size, made from ../shared/images/dog.jpg) at 32x32 with the official
 *    single-prompt decoder, the batched decoder and the split decoder (two-stage, with and
 *    without the engine worker), and their ratios; the worst case (thresholds 0: every noise mask
 *    of the random weights is post-processed); the realistic case (the colour oracle on the demo
 *    scenes, meaningful masks);
 * 4. hierarchical prompts: prompts run and masks found vs the grid.
 *
 * Random-weight masks are noise (~1e5 runs each): the worst case for post-processing, not a
 * typical one; the oracle rows are the typical one. --quick: 16x16 instead of 32x32 on the photo.
 */
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { availableParallelism, cpus } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import * as ort from 'onnxruntime-node';
import sharp from 'sharp';
import { generateFixtures } from '../fixtures/generate.js';
import { convertCheckpoint } from '../src/convert/convert.js';
import { table } from '../src/util/format.js';
import { runAuto, type CliRun } from './cli-runs.js';
import { queueBench } from './queue-bench.js';
import { promptsBench } from './prompts-bench.js';
import { encoderBench } from './encoder-bench.js';
import { sam2Bench } from './sam2-bench.js';
import { matmulGflops, profileCall, type CallProfile } from './ort-profile.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const SHARED = path.join(REPO, '..', 'shared');
const CACHE = path.join(REPO, '.cache', 'bench');
const FIXTURES = path.join(REPO, '.cache', 'test-fixtures');
const SAM = path.join(REPO, 'dist', 'bin', 'sam.js');

const out = (s = ''): void => void process.stdout.write(`${s}\n`);
const numTable = (rows: string[][]): string => table(rows, { right: rows[0].map((_, i) => i).filter((i) => i > 0) });
const f1 = (v: number): string => v.toFixed(1);
const f2 = (v: number): string => v.toFixed(2);

/** The converted vit_t (with its split decoder), converted once into .cache/bench. */
async function vitT(modelArg: string | undefined): Promise<string> {
  if (modelArg) return modelArg;
  const dir = path.join(CACHE, 'vit_t');
  const manifest = path.join(dir, 'manifest.json');
  if (!existsSync(manifest) || !('splitDecoder' in (JSON.parse(readFileSync(manifest, 'utf8')) as object))) {
    out(`converting ${path.join(SHARED, 'golden', 'convert', 'vit_t-random.pth')} into ${dir} ...`);
    await convertCheckpoint(path.join(SHARED, 'golden', 'convert', 'vit_t-random.pth'), 'vit_t', dir, { force: true });
  }
  return dir;
}

/** dog.jpg at 2250x1500 (PNG, so decoding is cheap and exact). */
async function photo2250(): Promise<string> {
  const file = path.join(CACHE, 'dog-2250x1500.png');
  if (!existsSync(file)) {
    await mkdir(CACHE, { recursive: true });
    await sharp(path.join(SHARED, 'images', 'dog.jpg')).resize(2250, 1500, { fit: 'fill' }).png().toFile(file);
  }
  return file;
}

async function fixtures(): Promise<{ models: string; images: string[] }> {
  if (!existsSync(path.join(FIXTURES, 'models', 'oracle', 'decoder_prompt.onnx'))) await generateFixtures(FIXTURES);
  const dir = path.join(FIXTURES, 'images');
  // The demo's images: its glob '*[0-9].png'.
  const images = readdirSync(dir).filter((f) => /[0-9]\.png$/.test(f)).sort().map((f) => path.join(dir, f));
  return { models: path.join(FIXTURES, 'models'), images };
}

const tensor = (data: Float32Array, dims: number[]): ort.Tensor => new ort.Tensor('float32', data, dims);

/** Point prompts as AMG sends them: a point and the (0,0)/−1 padding point, B rows. */
function points(b: number): { point_coords: ort.Tensor; point_labels: ort.Tensor } {
  const coords = new Float32Array(b * 4);
  const labels = new Float32Array(b * 2);
  for (let i = 0; i < b; i++) {
    coords[i * 4] = 100 + 97 * i;
    coords[i * 4 + 1] = 80 + 61 * i;
    labels[i * 2] = 1;
    labels[i * 2 + 1] = -1;
  }
  return { point_coords: tensor(coords, [b, 2, 2]), point_labels: tensor(labels, [b, 2]) };
}

interface DecoderRow {
  name: string;
  prompts: number;
  p: CallProfile;
}

async function decoderCalls(model: string): Promise<DecoderRow[]> {
  const emb = tensor(Float32Array.from({ length: 256 * 64 * 64 }, (_, i) => Math.sin(i * 0.37) * 0.5), [1, 256, 64, 64]);
  const noMask = (b: number) => ({ mask_input: tensor(new Float32Array(b * 256 * 256), [b, 1, 256, 256]), has_mask_input: tensor(new Float32Array(b), [b]) });
  const B = 4; // DECODER_CHUNK and SPLIT_CHUNK (src/engine/amg-predictor.ts)
  const file = (f: string): string => path.join(model, f);
  const rows: DecoderRow[] = [];
  rows.push({
    name: 'official single-prompt decoder',
    prompts: 1,
    p: await profileCall(file('decoder.onnx'), { image_embeddings: emb, ...points(1), ...noMask(1), orig_im_size: tensor(Float32Array.from([1, 1]), [2]) }),
  });
  rows.push({ name: `batched decoder (B=${B})`, prompts: B, p: await profileCall(file('decoder_batched.onnx'), { image_embeddings: emb, ...points(B), ...noMask(B) }) });
  const imageSide = await ort.InferenceSession.create(file('decoder_image.onnx'));
  const side = await imageSide.run({ image_embeddings: emb });
  rows.push({ name: 'split: image side (once per crop)', prompts: 0, p: await profileCall(file('decoder_image.onnx'), { image_embeddings: emb }) });
  const promptSide = await ort.InferenceSession.create(file('decoder_prompt.onnx'));
  const stage1Feeds = { ...side, ...points(B) };
  rows.push({ name: `split: stage 1, IoU (B=${B})`, prompts: B, p: await profileCall(file('decoder_prompt.onnx'), stage1Feeds) });
  const stage1 = await promptSide.run(stage1Feeds);
  const maskSide = await ort.InferenceSession.create(file('decoder_masks.onnx'));
  const stage2Feeds = Object.fromEntries(maskSide.inputNames.map((n) => [n, stage1[n]]));
  rows.push({ name: `split: stage 2, masks (B=${B})`, prompts: B, p: await profileCall(file('decoder_masks.onnx'), stage2Feeds) });
  return rows;
}

function printDecoderCalls(rows: DecoderRow[], peak: number): void {
  const t = [['graph (one call)', 'ms', 'ms/prompt', 'M mult-adds/prompt', 'GFLOP/s', '% of MatMul peak']];
  for (const r of rows) {
    const per = r.prompts || 1;
    const gflops = (2 * r.p.macs) / (r.p.ms / 1000) / 1e9;
    t.push([r.name, f1(r.p.ms), r.prompts ? f1(r.p.ms / per) : '-', f1(r.p.macs / per / 1e6), f1(gflops), f1((100 * gflops) / peak)]);
  }
  out(numTable(t));
  out();
  for (const r of rows.filter((x) => x.prompts > 0)) {
    out(`per-operator profile, ${r.name}: ${r.p.byOp.slice(0, 9).map(([op, share]) => `${op} ${(100 * share).toFixed(1)}%`).join(', ')}`);
  }
}

function printRuns(title: string, runs: CliRun[], gridPrompts: number, base?: CliRun): void {
  out(`\n${title}`);
  const t = [['run', 'wall s', 'decoder s', 'ms/prompt', 'postproc+rle s', 'masks', 'prompts', 'peak RSS MB', base ? `x vs ${base.label}` : '']];
  for (const r of runs) {
    const prompts = r.prompts?.run ?? gridPrompts;
    const dec = r.stages.decoder ?? 0;
    t.push([
      r.label,
      f1(r.wallS),
      f1(dec),
      f1((1000 * dec) / prompts),
      f1((r.stages.postprocess ?? 0) + (r.stages.rle ?? 0)),
      String(r.masks),
      r.prompts ? `${r.prompts.run} of ${r.prompts.grid}` : String(prompts),
      r.peakRssMb === undefined ? 'n/a' : r.peakRssMb.toFixed(0),
      base ? f2(base.wallS / r.wallS) : '',
    ]);
  }
  out(numTable(t));
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { model: { type: 'string' }, quick: { type: 'boolean' }, encoder: { type: 'boolean' }, 'skip-vit-h': { type: 'boolean' }, queue: { type: 'boolean' }, prompts: { type: 'boolean' }, sam2: { type: 'boolean' } } });
  if (values.sam2) return sam2Bench({ repo: REPO, shared: SHARED, cache: CACHE, sam: SAM, quick: values.quick ?? false, mobileSam: () => vitT(values.model), photo2250, mobileDecoderCalls: decoderCalls });
  if (values.encoder) {
    out(`machine: ${availableParallelism()} cores, ${cpus()[0]?.model ?? 'unknown CPU'}`);
    await encoderBench({ repo: REPO, shared: SHARED, cache: path.join(CACHE, 'encoders'), sam: SAM }, { skipVitH: values['skip-vit-h'] ?? false });
    return;
  }
  if (values.queue) {
    out(`machine: ${availableParallelism()} cores, ${cpus()[0]?.model ?? 'unknown CPU'}`);
    const fx = await fixtures();
    await queueBench({ sam: SAM, model: await vitT(values.model), oracle: path.join(fx.models, 'oracle'), shared: SHARED, smallImage: path.join(FIXTURES, 'images', 'small-96x64.png') });
    return;
  }
  if (values.prompts) {
    out(`machine: ${availableParallelism()} cores, ${cpus()[0]?.model ?? 'unknown CPU'}`);
    const fx = await fixtures();
    await promptsBench({ sam: SAM, model: await vitT(values.model), oracle: path.join(fx.models, 'oracle'), photo: await photo2250(), scene: path.join(FIXTURES, 'images', 'wide-640x360.png') });
    return;
  }
  const model = await vitT(values.model);
  const photo = await photo2250();
  const fx = await fixtures();
  const pps = values.quick ? 16 : 32;

  out(`machine: ${availableParallelism()} cores, ${cpus()[0]?.model ?? 'unknown CPU'}; onnxruntime-node ${ort.env.versions.node ?? ''}`);
  const peak = await matmulGflops(2048, 2048, 2048);
  const batchedShape = await matmulGflops(4 * 4096, 256, 128);
  const splitShape = await matmulGflops(4 * 4096, 256, 56);
  out(numTable([
    ['ORT MatMul (all cores)', 'GFLOP/s'],
    ['2048x2048 x 2048x2048 (the peak used below)', f1(peak)],
    ['16384x256 x 256x128 (image-token projection, B=4)', f1(batchedShape)],
    ['16384x256 x 256x56 (factorized attention, B=4)', f1(splitShape)],
  ]));

  out(`\ndecoder graphs of ${model}`);
  printDecoderCalls(await decoderCalls(model), peak);

  const grid = pps * pps;
  const photoRuns: CliRun[] = [];
  const common = ['--model', model, '--points-per-side', String(pps)];
  photoRuns.push(await runAuto(SAM, 'single', [photo], [...common, '--decoder', 'single', '--no-pipeline']));
  photoRuns.push(await runAuto(SAM, 'batched', [photo], [...common, '--decoder', 'batched', '--no-pipeline']));
  photoRuns.push(await runAuto(SAM, 'split, no worker', [photo], [...common, '--decoder', 'split', '--no-pipeline']));
  photoRuns.push(await runAuto(SAM, 'split + worker (default)', [photo], [...common]));
  printRuns(`sam auto, vit_t, 2250x1500 photo, ${pps}x${pps}, default thresholds (random weights: no mask passes pred_iou_thresh)`, photoRuns, grid, photoRuns[0]);

  const worst = ['--model', model, '--points-per-side', '16', '--pred-iou-thresh', '0', '--stability-score-thresh', '0'];
  const worstRuns = [
    await runAuto(SAM, 'batched', [photo], [...worst, '--decoder', 'batched', '--no-pipeline']),
    await runAuto(SAM, 'split + worker (default)', [photo], worst),
  ];
  printRuns('worst case: vit_t, 2250x1500, 16x16, --pred-iou-thresh 0 --stability-score-thresh 0 (768 noise masks)', worstRuns, 256, worstRuns[0]);

  const oracle = (name: string): string => path.join(fx.models, name);
  const realistic = ['--points-per-side', '16'];
  const oracleRuns = [
    await runAuto(SAM, 'single', fx.images, ['--model', oracle('oracle'), ...realistic, '--decoder', 'single', '--no-pipeline']),
    await runAuto(SAM, 'batched', fx.images, ['--model', oracle('oracle-batched'), ...realistic, '--no-pipeline']),
    await runAuto(SAM, 'split, no worker', fx.images, ['--model', oracle('oracle'), ...realistic, '--no-pipeline']),
    await runAuto(SAM, 'split + worker (default)', fx.images, ['--model', oracle('oracle'), ...realistic]),
  ];
  printRuns(`realistic masks: colour oracle, ${fx.images.length} demo scenes, 16x16, default thresholds`, oracleRuns, 256 * fx.images.length, oracleRuns[0]);

  const hier = [
    { ...oracleRuns[3], label: 'oracle scenes, grid' },
    await runAuto(SAM, 'oracle scenes, hierarchical', fx.images, ['--model', oracle('oracle'), ...realistic, '--prompt-strategy', 'hierarchical']),
    await runAuto(SAM, `photo vit_t ${pps}x${pps}, hierarchical`, [photo], [...common, '--prompt-strategy', 'hierarchical']),
  ];
  // Real photos with the colour oracle: masks that follow colour regions, i.e. a scene that is
  // not flat shapes, where round 1 covers what it covers.
  const photos = [path.join(SHARED, 'images', 'dog.jpg'), path.join(SHARED, 'images', 'groceries.jpg')];
  const photoOracle = ['--model', oracle('oracle'), '--points-per-side', String(pps)];
  hier.push({ ...(await runAuto(SAM, `photos (oracle) ${pps}x${pps}, grid`, photos, photoOracle)), prompts: { run: 2 * grid, grid: 2 * grid } });
  hier.push(await runAuto(SAM, `photos (oracle) ${pps}x${pps}, hierarchical`, photos, [...photoOracle, '--prompt-strategy', 'hierarchical']));
  printRuns('hierarchical prompts (prompts run of the grid; the random-weight photo finds no masks, so round 2 runs the whole grid)', hier, 256 * fx.images.length);
}

main().catch((err: unknown) => {
  process.stderr.write(`bench: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exitCode = 1;
});
