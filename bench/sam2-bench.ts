/**
 * `npm run bench -- --sam2 [--quick]`: SAM 2.1 tiny's automatic mask generation beside
 * MobileSAM's (the converted vit_t) on the same photo, printed, never asserted. Both models
 * are random weights of the real shapes (../shared/golden), so the graphs' cost is the real
 * models' cost; what the masks look like is not. In one run:
 *
 * 1. the machine: cores, CPU model, onnxruntime's MatMul GFLOP/s (2048³, best of 3), the
 *    compute limit every row is measured against;
 * 2. SAM 2.1 tiny converted from sam2.1_hiera_tiny-random-fp16.pt (again when the converter or
 *    its graphs changed): conversion time and the folder's file sizes;
 * 3. one encoder call of each model on dog.jpg preprocessed as each model preprocesses it
 *    (SAM 2: resized to 1024x1024; SAM: longest side 1024, padded), the engine's encoder
 *    session options: ms (median of 3 after a warm-up), multiply-adds counted from ORT's
 *    profile, GFLOP/s, % of the MatMul peak, top operator types;
 * 4. one call of each decoder graph at automatic mask generation's batch (4 point prompts):
 *    SAM 2's multimask and single-mask graphs, its split decoder when the manifest names one
 *    (any manifest entry of .onnx files, e.g. "sam2SplitDecoder" {image, prompt, masks}),
 *    and MobileSAM's graphs (bench.ts decoderCalls): ms and multiply-adds per prompt;
 * 5. whole `sam auto` runs, one process each (wall, stage times, peak RSS), both models on the
 *    same images (dog.jpg 800x534 and its 2250x1500 resize): the default grid (32x32) with the
 *    default thresholds — with random weights almost no mask passes pred_iou_thresh, so this is
 *    the models' cost, encoder + decoder — and the worst case, thresholds 0 at 16x16, where
 *    every noise mask (~1e5 runs of RLE each) is post-processed. Each model runs as `sam auto`
 *    runs it by default (MobileSAM: split decoder + engine worker; SAM 2: its own defaults).
 *
 * --quick: 16x16 for the default rows and 8x8 for the worst case.
 */
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { availableParallelism, cpus } from 'node:os';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import sharp from 'sharp';
import { convertCheckpoint, GRAPH_VERSION } from '../src/convert/convert.js';
import { SAM2_DECODER_CHUNK } from '../src/engine/sam2-amg-predictor.js';
import { loadImage, preprocess, preprocessSam2 } from '../src/io/image.js';
import { table } from '../src/util/format.js';
import { runAuto, type CliRun } from './cli-runs.js';
import { matmulGflops, profileCall, type CallProfile } from './ort-profile.js';

const out = (s = ''): void => void process.stdout.write(`${s}\n`);
const numTable = (rows: string[][]): string => table(rows, { right: rows[0].map((_, i) => i).filter((i) => i > 0) });
const f1 = (v: number): string => v.toFixed(1);
const f2 = (v: number): string => v.toFixed(2);
const gflops = (p: CallProfile): number => (2 * p.macs) / (p.ms / 1000) / 1e9;
const byOp = (p: CallProfile, n: number): string => p.byOp.slice(0, n).map(([op, s]) => `${op} ${(100 * s).toFixed(1)}%`).join(', ');

/** A decoder graph's one call, as bench.ts decoderCalls returns them (prompts 0: once per image). */
export interface DecoderRow {
  name: string;
  prompts: number;
  p: CallProfile;
}

export interface Sam2BenchEnv {
  repo: string;
  shared: string;
  /** .cache/bench */
  cache: string;
  /** dist/bin/sam.js */
  sam: string;
  quick: boolean;
  /** bench.ts vitT(): the converted random vit_t folder. */
  mobileSam: () => Promise<string>;
  /** bench.ts photo2250(): dog.jpg at 2250x1500. */
  photo2250: () => Promise<string>;
  /** bench.ts decoderCalls(): one call of each of the vit_t folder's decoder graphs. */
  mobileDecoderCalls: (model: string) => Promise<DecoderRow[]>;
}

const CHECKPOINT = (env: Sam2BenchEnv): string => path.join(env.shared, 'golden', 'sam2', 'sam2.1_hiera_tiny-random-fp16.pt');

interface Manifest {
  encoder: string;
  decoder: string;
  files?: Record<string, unknown>;
  converter?: { graphVersion?: number };
  [key: string]: unknown;
}

const readManifest = (dir: string): Manifest => JSON.parse(readFileSync(path.join(dir, 'manifest.json'), 'utf8')) as Manifest;

/** Why the cached SAM 2 folder must be converted again, or undefined when it is current. */
function staleReason(env: Sam2BenchEnv, dir: string): string | undefined {
  const file = path.join(dir, 'manifest.json');
  if (!existsSync(file)) return 'no manifest';
  const m = readManifest(dir);
  if ((m.converter?.graphVersion ?? 0) < GRAPH_VERSION) return `graph version ${m.converter?.graphVersion ?? 0} < ${GRAPH_VERSION}`;
  const listed = Object.keys(m.files ?? {}).sort().join(',');
  const onDisk = readdirSync(dir).filter((f) => f.endsWith('.onnx') || f.endsWith('.onnx.data')).sort().join(',');
  if (listed !== onDisk) return `manifest files (${listed}) differ from the folder's (${onDisk})`;
  // dist/ is rewritten by every `npm run build`: compare with the converter's sources instead.
  const made = statSync(file).mtimeMs;
  const srcDir = path.join(env.repo, 'src', 'convert');
  const newer = readdirSync(srcDir).filter((f) => f.endsWith('.ts') && statSync(path.join(srcDir, f)).mtimeMs > made);
  if (newer.length > 0) return `src/convert/${newer.join(', ')} changed since`;
  if (statSync(CHECKPOINT(env)).mtimeMs > made) return 'checkpoint changed since';
  return undefined;
}

/** SAM 2.1 tiny (random weights) converted into .cache/bench/sam2.1_hiera_tiny; prints time and sizes. */
async function sam2Tiny(env: Sam2BenchEnv): Promise<string> {
  const dir = path.join(env.cache, 'sam2.1_hiera_tiny');
  const why = staleReason(env, dir);
  if (why) {
    out(`converting ${CHECKPOINT(env)} into ${dir} (${why}) ...`);
    await mkdir(env.cache, { recursive: true });
    const t0 = performance.now();
    const res = await convertCheckpoint(CHECKPOINT(env), undefined, dir, { force: true });
    const s = (performance.now() - t0) / 1000;
    const phases = res.phases.filter((p) => p.seconds >= 0.5).map((p) => `${p.phase} ${f1(p.seconds)} s`).join(', ');
    out(`converted ${res.type} in ${f1(s)} s${phases ? ` (${phases})` : ''}`);
  } else {
    out(`SAM 2 folder ${dir} is current (conversion not timed this run; delete the folder to time it)`);
  }
  const m = readManifest(dir);
  const files = readdirSync(dir).sort().map((f) => [f, statSync(path.join(dir, f)).size] as const);
  const total = files.reduce((a, [, b]) => a + b, 0);
  const t = [['file (SAM 2.1 tiny)', 'MB'], ...files.map(([f, b]) => [f, f1(b / 1e6)]), ['total', f1(total / 1e6)]];
  out(numTable(t));
  out(`manifest keys: ${Object.keys(m).join(', ')}`);
  return dir;
}

const dirMb = (dir: string): number => readdirSync(dir).reduce((a, f) => a + statSync(path.join(dir, f)).size, 0) / 1e6;

/** One encoder call of each model on dog.jpg, preprocessed as that model preprocesses it. */
async function encoders(env: Sam2BenchEnv, mobile: string, sam2: string, peak: number): Promise<void> {
  const img = await loadImage(path.join(env.shared, 'images', 'dog.jpg'));
  const rows: [string, string, CallProfile][] = [];
  const sam2Enc = path.join(sam2, readManifest(sam2).encoder);
  const sam2Input = new ort.Tensor('float32', preprocessSam2(img), [1, 3, 1024, 1024]);
  rows.push(['SAM 2.1 tiny (Hiera-T)', sam2Enc, await profileCall(sam2Enc, { image: sam2Input }, 3, true)]);
  const mobileEnc = path.join(mobile, readManifest(mobile).encoder);
  const mobileInput = new ort.Tensor('float32', (await preprocess(img)).tensor, [1, 3, 1024, 1024]);
  rows.push(['MobileSAM (TinyViT-5M)', mobileEnc, await profileCall(mobileEnc, { image: mobileInput }, 3, true)]);
  out('\nencoder, one call on dog.jpg preprocessed to 1024x1024 (engine encoder session options; median of 3 after 1 warm-up)');
  const t = [['encoder', 'ms', 'GMAC', 'GFLOP/s', '% of MatMul peak', 'files MB']];
  for (const [name, file, p] of rows) {
    const prefix = path.basename(file);
    const mb = readdirSync(path.dirname(file)).filter((f) => f.startsWith(prefix)).reduce((a, f) => a + statSync(path.join(path.dirname(file), f)).size, 0) / 1e6;
    t.push([name, f1(p.ms), f2(p.macs / 1e9), f1(gflops(p)), f1((100 * gflops(p)) / peak), f1(mb)]);
  }
  out(numTable(t));
  for (const [name, , p] of rows) out(`  ${name} by operator: ${byOp(p, 8)}`);
  const [s2, ms] = [rows[0][2], rows[1][2]];
  out(`  SAM 2 / MobileSAM encoder: ${f2(s2.ms / ms.ms)}x the time, ${f2(s2.macs / ms.macs)}x the multiply-adds`);
}

const tensor = (data: Float32Array, dims: number[]): ort.Tensor => new ort.Tensor('float32', data, dims);
const wave = (n: number, k: number): Float32Array => Float32Array.from({ length: n }, (_, i) => Math.sin(i * k) * 0.5);

/** The SAM 2 decoder's inputs at batch b: image features (batch 1) and b single-point prompts (no padding point). */
function sam2Pool(b: number): Record<string, ort.Tensor> {
  const coords = new Float32Array(b * 2);
  const labels = new Float32Array(b).fill(1);
  for (let i = 0; i < b; i++) {
    coords[i * 2] = 100 + 97 * i;
    coords[i * 2 + 1] = 80 + 61 * i;
  }
  return {
    image_embed: tensor(wave(256 * 64 * 64, 0.37), [1, 256, 64, 64]),
    high_res_feats_0: tensor(wave(32 * 256 * 256, 0.11), [1, 32, 256, 256]),
    high_res_feats_1: tensor(wave(64 * 128 * 128, 0.23), [1, 64, 128, 128]),
    point_coords: tensor(coords, [b, 1, 2]),
    point_labels: tensor(labels, [b, 1]),
    mask_input: tensor(new Float32Array(b * 256 * 256), [b, 1, 256, 256]),
    has_mask_input: tensor(new Float32Array(b), [b]),
  };
}

/** Manifest entries naming several .onnx graphs (split decoders): key → [role, file][] (image, prompt, masks first). */
function multiGraphEntries(m: Manifest): [string, [string, string][]][] {
  const order = ['image', 'prompt', 'masks'];
  const entries: [string, [string, string][]][] = [];
  for (const [key, v] of Object.entries(m)) {
    if (key === 'files' || v === null || typeof v !== 'object' || Array.isArray(v)) continue;
    const graphs = Object.entries(v as Record<string, unknown>).filter((e): e is [string, string] => typeof e[1] === 'string' && e[1].endsWith('.onnx'));
    if (graphs.length === 0 || graphs.length !== Object.keys(v).length) continue;
    graphs.sort((a, b) => (order.indexOf(a[0]) + 1 || 99) - (order.indexOf(b[0]) + 1 || 99));
    entries.push([key, graphs]);
  }
  return entries;
}

/**
 * One call of each stage of a split decoder: each stage is fed by name from the decoder's
 * inputs and the earlier stages' outputs; a stage fed a tensor of batch B is per prompt.
 */
async function splitRows(dir: string, key: string, graphs: [string, string][], b: number): Promise<{ rows: DecoderRow[]; notes: string[] }> {
  const pool: Record<string, ort.Tensor> = sam2Pool(b);
  const rows: DecoderRow[] = [];
  const notes: string[] = [];
  for (const [role, file] of graphs) {
    const full = path.join(dir, file);
    try {
      const session = await ort.InferenceSession.create(full);
      const missing = session.inputNames.filter((n) => !(n in pool));
      if (missing.length > 0) {
        notes.push(`${key}.${role} (${file}): not profiled, inputs ${missing.join(', ')} are not known to this bench`);
        await session.release();
        break;
      }
      const feeds = Object.fromEntries(session.inputNames.map((n) => [n, pool[n]]));
      const perPrompt = Object.values(feeds).some((t) => t.dims[0] === b && b > 1);
      Object.assign(pool, await session.run(feeds));
      await session.release();
      rows.push({ name: `${key}: ${role} side${perPrompt ? ` (B=${b})` : ' (once per crop)'}`, prompts: perPrompt ? b : 0, p: await profileCall(full, feeds) });
    } catch (err) {
      notes.push(`${key}.${role} (${file}): failed: ${err instanceof Error ? err.message.split('\n')[0] : String(err)}`);
      break;
    }
  }
  return { rows, notes };
}

function decoderTable(title: string, rows: DecoderRow[], peak: number): void {
  out(`\n${title}`);
  const t = [['graph (one call)', 'ms', 'ms/prompt', 'M mult-adds/prompt', 'GFLOP/s', '% of MatMul peak']];
  for (const r of rows) {
    const per = r.prompts || 1;
    t.push([r.name, f1(r.p.ms), r.prompts ? f1(r.p.ms / per) : '-', f1(r.p.macs / per / 1e6), f1(gflops(r.p)), f1((100 * gflops(r.p)) / peak)]);
  }
  out(numTable(t));
  for (const r of rows.filter((x) => x.prompts > 0)) out(`  ${r.name} by operator: ${byOp(r.p, 7)}`);
}

/** Per-prompt cost of a split decoder: stage 1 alone (masks filtered away) and stages 1 + 2 (every mask kept). */
function splitSummary(label: string, rows: DecoderRow[], gridPrompts: number): string | undefined {
  const image = rows.find((r) => r.prompts === 0);
  const per = rows.filter((r) => r.prompts > 0);
  if (!image || per.length < 2) return undefined;
  const [s1, s2] = per;
  const imageMs = image.p.ms / gridPrompts;
  const ms1 = s1.p.ms / s1.prompts + imageMs;
  const ms12 = ms1 + s2.p.ms / s2.prompts;
  const mac1 = s1.p.macs / s1.prompts + image.p.macs / gridPrompts;
  const mac12 = mac1 + s2.p.macs / s2.prompts;
  return `  ${label} split, per prompt with the image side over ${gridPrompts} prompts: ${f1(ms1)} ms / ${f1(mac1 / 1e6)} M mult-adds when no mask passes the IoU filter, ${f1(ms12)} ms / ${f1(mac12 / 1e6)} M when every mask is kept`;
}

async function decoders(env: Sam2BenchEnv, mobile: string, sam2: string, peak: number, grid: number): Promise<void> {
  const b = SAM2_DECODER_CHUNK;
  const m = readManifest(sam2);
  const pool = sam2Pool(b);
  const rows: DecoderRow[] = [{ name: `multimask decoder (B=${b})`, prompts: b, p: await profileCall(path.join(sam2, m.decoder), pool) }];
  if (typeof m.singleMaskDecoder === 'string') rows.push({ name: `single-mask decoder (B=${b}, --use-m2m)`, prompts: b, p: await profileCall(path.join(sam2, m.singleMaskDecoder), pool) });
  const notes: string[] = [];
  const summaries: string[] = [];
  const multi = multiGraphEntries(m);
  for (const [key, graphs] of multi) {
    const r = await splitRows(sam2, key, graphs, b);
    rows.push(...r.rows);
    notes.push(...r.notes);
    const s = splitSummary(`SAM 2 ${key}`, r.rows, grid);
    if (s) summaries.push(s);
  }
  if (multi.length === 0) notes.push(`the SAM 2 manifest names no split decoder (keys: ${Object.keys(m).join(', ')})`);
  decoderTable(`SAM 2.1 tiny decoder graphs (${sam2}), point prompts without padding point`, rows, peak);
  for (const n of notes) out(`  note: ${n}`);
  const mobileRows = await env.mobileDecoderCalls(mobile);
  decoderTable(`MobileSAM decoder graphs (${mobile}), point + padding point`, mobileRows, peak);
  const ms = splitSummary('MobileSAM', mobileRows.filter((r) => r.name.startsWith('split')), grid);
  if (ms) summaries.push(ms);
  if (summaries.length) {
    out();
    for (const s of summaries) out(s);
  }
  const sam2Multi = rows[0];
  const mobileBatched = mobileRows.find((r) => r.name.startsWith('batched')) ?? mobileRows.find((r) => r.prompts > 0);
  if (mobileBatched) {
    out(`  SAM 2 multimask / MobileSAM ${mobileBatched.name}, per prompt: ${f2(sam2Multi.p.ms / sam2Multi.prompts / (mobileBatched.p.ms / mobileBatched.prompts))}x the time, ${f2(sam2Multi.p.macs / sam2Multi.prompts / (mobileBatched.p.macs / mobileBatched.prompts))}x the multiply-adds`);
  }
}

interface Pair {
  label: string;
  prompts: number;
  mobile: CliRun;
  sam2: CliRun;
}

function printPairs(title: string, pairs: Pair[]): void {
  out(`\n${title}`);
  const t = [['run', 'model', 'wall s', 'encoder s', 'decoder s', 'ms/prompt', 'postproc+rle s', 'masks', 'peak RSS MB', 'SAM 2 / MobileSAM wall']];
  for (const p of pairs) {
    for (const [model, r] of [['MobileSAM', p.mobile], ['SAM 2.1 tiny', p.sam2]] as const) {
      const dec = r.stages.decoder ?? 0;
      t.push([
        model === 'MobileSAM' ? p.label : '',
        model,
        f1(r.wallS),
        f2(r.stages.encoder ?? 0),
        f2(dec),
        f2((1000 * dec) / p.prompts),
        f2((r.stages.postprocess ?? 0) + (r.stages.rle ?? 0)),
        String(r.masks),
        r.peakRssMb === undefined ? 'n/a' : r.peakRssMb.toFixed(0),
        model === 'MobileSAM' ? '' : `${f2(p.sam2.wallS / p.mobile.wallS)}x`,
      ]);
    }
  }
  out(numTable(t));
}

async function autoRuns(env: Sam2BenchEnv, mobile: string, sam2: string): Promise<void> {
  const dog = path.join(env.shared, 'images', 'dog.jpg');
  const images: [string, string][] = [];
  for (const file of [dog, await env.photo2250()]) {
    const meta = await sharp(file).metadata();
    images.push([`${meta.width}x${meta.height}`, file]);
  }
  const pps = env.quick ? 16 : 32;
  const worstPps = env.quick ? 8 : 16;
  const configs = [
    { label: `${pps}x${pps}, defaults`, pps, args: [] as string[] },
    { label: `${worstPps}x${worstPps}, thresholds 0`, pps: worstPps, args: ['--pred-iou-thresh', '0', '--stability-score-thresh', '0'] },
  ];
  const pairs: Pair[] = [];
  for (const c of configs) {
    for (const [size, file] of images) {
      const args = ['--points-per-side', String(c.pps), ...c.args];
      const label = `${size}, ${c.label}`;
      const m = await runAuto(env.sam, `MobileSAM ${label}`, [file], ['--model', mobile, ...args]);
      const s = await runAuto(env.sam, `SAM 2 ${label}`, [file], ['--model', sam2, ...args]);
      pairs.push({ label, prompts: c.pps * c.pps, mobile: m, sam2: s });
    }
  }
  printPairs(
    'sam auto, one process each, same image for both models (MobileSAM: split decoder + engine worker, its defaults; SAM 2: its defaults, pred_iou_thresh 0.8). ' +
      'Defaults with random weights: almost no mask passes, the models\' cost; thresholds 0: every noise mask post-processed, the worst case',
    pairs,
  );
  out(
    '  masks: after box NMS (0.7); the noise masks of random weights all box nearly the whole image, so NMS keeps about one. ' +
      "MobileSAM's stage times are its engine worker's (decoder and post-processing overlap there), SAM 2's the main thread's.",
  );
  out('\nfor reference, Ultralytics\' published figures (their numbers, another machine and other code): SAM2-t 26.0 s and MobileSAM 25.4 s per image on an Apple M4 Pro CPU');
}

export async function sam2Bench(env: Sam2BenchEnv): Promise<void> {
  out(`machine: ${availableParallelism()} cores, ${cpus()[0]?.model ?? 'unknown CPU'}; onnxruntime-node ${ort.env.versions.node ?? ''}`);
  // The VM's speed drifts: the best of three.
  const peak = Math.max(await matmulGflops(2048, 2048, 2048), await matmulGflops(2048, 2048, 2048), await matmulGflops(2048, 2048, 2048));
  out(`ORT MatMul 2048x2048 x 2048x2048 on all cores: ${f1(peak)} GFLOP/s (best of 3; the peak below)\n`);
  const mobile = await env.mobileSam();
  const sam2 = await sam2Tiny(env);
  out(`MobileSAM folder ${mobile}: ${f1(dirMb(mobile))} MB`);
  await encoders(env, mobile, sam2, peak);
  await decoders(env, mobile, sam2, peak, (env.quick ? 16 : 32) ** 2);
  await autoRuns(env, mobile, sam2);
}
