/**
 * `npm run bench -- --encoder [--skip-vit-h]`: the image encoders, printed, never asserted.
 * In one run, per model type (vit_t from ../shared, vit_b and vit_h from random weights of the
 * real shapes, bench/random-checkpoint.ts):
 *
 * 1. the machine's ORT MatMul GFLOP/s (2048³), the compute limit;
 * 2. three conversions of the same weights: 'reference' (the encoder graph before this change:
 *    MatMul/Add/Softmax attention, weights inline), 'current' (MultiHeadAttention, external
 *    weights) and 'int8' (--quantize int8); for each, whole `sam embed` runs of dog.jpg (wall and
 *    peak RSS, one process each, variants interleaved), the encoder call's time, multiply-adds
 *    counted from ORT's profile, achieved GFLOP/s and the top operator types;
 * 3. int8 against float: embedding error, `sam segment` mask IoU and `sam auto` record IoU on
 *    the shared photos;
 * 4. ORT session options (graph optimization level × memory arena) on vit_b, one process each.
 */
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import sharp from 'sharp';
import { convertCheckpoint } from '../src/convert/convert.js';
import { decodeRle } from '../src/core/rle.js';
import type { CocoRle, MaskRecord } from '../src/core/types.js';
import { readEmbeddingFile } from '../src/io/embedding-file.js';
import { table } from '../src/util/format.js';
import { timedProcess } from './cli-runs.js';
import { matmulGflops, profileCall, profileOnce, type CallProfile } from './ort-profile.js';
import { writeRandomCheckpoint } from './random-checkpoint.js';

const VARIANTS = ['reference', 'current', 'int8'] as const;
type Variant = (typeof VARIANTS)[number];
type Type = 'vit_t' | 'vit_b' | 'vit_h';

const out = (s = ''): void => void process.stdout.write(`${s}\n`);
const numTable = (rows: string[][]): string => table(rows, { right: rows[0].map((_, i) => i).filter((i) => i > 0) });
const median = (v: number[]): number => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)];

interface Paths {
  repo: string;
  shared: string;
  cache: string;
  sam: string;
}

async function sam(p: Paths, args: readonly string[]): Promise<{ wallS: number; rssMb: number }> {
  const r = await timedProcess([process.execPath, p.sam, ...args]);
  if (r.code !== 0) throw new Error(`sam ${args.join(' ')} exited ${r.code}:\n${r.stderr.split('\n').slice(-5).join('\n')}`);
  return r;
}

async function checkpoint(p: Paths, type: Type): Promise<string> {
  if (type === 'vit_t') return path.join(p.shared, 'golden', 'convert', 'vit_t-random.pth');
  const file = path.join(p.cache, `${type}-random.safetensors`);
  if (!existsSync(file)) {
    out(`writing ${file} (random weights, the shapes of ${type}) ...`);
    await writeRandomCheckpoint(type, path.join(p.shared, 'golden', 'convert', 'vit_t-random.pth'), file);
  }
  return file;
}

/** The three conversions of `type`, converted afresh (the graphs are what is measured). */
async function convertVariants(p: Paths, type: Type): Promise<Record<Variant, string>> {
  const ckpt = await checkpoint(p, type);
  const dirs = {} as Record<Variant, string>;
  for (const v of VARIANTS) {
    const dir = path.join(p.cache, `${type}-${v}`);
    const res = await convertCheckpoint(ckpt, type, dir, {
      force: true,
      encoderGraph: v === 'reference' ? 'reference' : 'current',
      quantize: v === 'int8' ? 'int8' : undefined,
    });
    out(`converted ${type} ${v} in ${res.seconds.toFixed(1)} s`);
    dirs[v] = dir;
  }
  return dirs;
}

const IMAGE = (): ort.Tensor => {
  const img = new Float32Array(3 * 1024 * 1024);
  for (let i = 0; i < img.length; i++) img[i] = Math.sin(i * 0.001) * 1.5;
  return new ort.Tensor('float32', img, [1, 3, 1024, 1024]);
};

interface Row {
  variant: Variant;
  embedWall: number[];
  embedRss: number[];
  profile?: CallProfile;
  encoderBytes: number;
}

const dirBytes = (dir: string, prefix: string): number =>
  readdirSync(dir).filter((f) => f.startsWith(prefix)).reduce((a, f) => a + statSync(path.join(dir, f)).size, 0);

async function measureType(p: Paths, type: Type, peak: number, embedRuns: number, tmp: string): Promise<Record<Variant, string>> {
  const dirs = await convertVariants(p, type);
  const photo = path.join(p.shared, 'images', 'dog.jpg');
  const rows: Row[] = VARIANTS.map((variant) => ({ variant, embedWall: [], embedRss: [], encoderBytes: dirBytes(dirs[variant], 'encoder.onnx') }));
  // Interleaved (reference, current, int8, reference, ...) so drift of the machine's speed hits all alike.
  for (let r = 0; r < embedRuns; r++) {
    for (const row of rows) {
      const res = await sam(p, ['embed', photo, '--model', dirs[row.variant], '--out', path.join(tmp, `${type}-${row.variant}`), '--force', '-q']);
      row.embedWall.push(res.wallS);
      row.embedRss.push(res.rssMb);
    }
  }
  for (const row of rows) {
    const file = path.join(dirs[row.variant], 'encoder.onnx');
    // vit_h: one profiled call (a timed call more would add minutes).
    row.profile = type === 'vit_h' ? (row.variant === 'reference' ? undefined : await profileOnce(file, { image: IMAGE() }, true)) : await profileCall(file, { image: IMAGE() }, 1, true);
  }
  const ref = rows[0];
  out(`\n${type}: sam embed of dog.jpg (median of ${embedRuns} run(s), one process each) and one encoder call`);
  const t: string[][] = [['graph', 'embed wall s', 'vs reference', 'peak RSS MB', 'encoder files MB', 'encoder call s', 'GMAC', 'GFLOP/s', 'of peak']];
  for (const row of rows) {
    const w = median(row.embedWall);
    const pr = row.profile;
    t.push([
      row.variant,
      w.toFixed(2),
      `${(median(ref.embedWall) / w).toFixed(2)}x`,
      Math.max(...row.embedRss).toFixed(0),
      (row.encoderBytes / 1e6).toFixed(0),
      pr ? (pr.ms / 1000).toFixed(2) : '—',
      pr ? (pr.macs / 1e9).toFixed(0) : '—',
      pr ? ((2 * pr.macs) / (pr.ms / 1000) / 1e9).toFixed(1) : '—',
      pr ? `${((100 * (2 * pr.macs)) / (pr.ms / 1000) / 1e9 / peak).toFixed(0)}%` : '—',
    ]);
  }
  out(numTable(t));
  for (const row of rows) {
    if (row.profile) out(`  ${row.variant} by operator: ${row.profile.byOp.slice(0, 7).map(([op, s]) => `${op} ${(100 * s).toFixed(1)}%`).join(', ')}`);
  }
  return dirs;
}

function iou(a: Uint8Array, b: Uint8Array): number {
  let inter = 0;
  let union = 0;
  for (let i = 0; i < a.length; i++) {
    inter += a[i] & b[i];
    union += a[i] | b[i];
  }
  return union === 0 ? 1 : inter / union;
}

const pct = (v: number[], q: number): number => [...v].sort((a, b) => a - b)[Math.min(v.length - 1, Math.floor(q * v.length))];

/** int8 against float on the shared photos: embeddings, segment masks, auto records. */
async function agreement(p: Paths, type: Type, dirs: Record<Variant, string>, tmp: string): Promise<string[]> {
  const photos = readdirSync(path.join(p.shared, 'images')).filter((f) => /\.(jpe?g|png)$/i.test(f)).sort();
  const embErr: string[] = [];
  const segIou: number[] = [];
  const autoIou: number[] = [];
  for (const photo of photos) {
    const file = path.join(p.shared, 'images', photo);
    const stem = photo.replace(/\.[^.]+$/, '');
    const emb: Float32Array[] = [];
    for (const v of ['current', 'int8'] as const) {
      const d = path.join(tmp, `agree-${type}-${v}`);
      await sam(p, ['embed', file, '--model', dirs[v], '--out', d, '-q', '--force']);
      emb.push((await readEmbeddingFile(path.join(d, `${stem}.safetensors`))).embeddings);
    }
    let max = 0;
    let sum = 0;
    let ref = 0;
    for (let i = 0; i < emb[0].length; i++) {
      const dlt = Math.abs(emb[0][i] - emb[1][i]);
      max = Math.max(max, dlt);
      sum += dlt;
      ref += Math.abs(emb[0][i]);
    }
    embErr.push(`${stem} max ${max.toExponential(1)} mean ${(sum / emb[0].length).toExponential(1)} (${((100 * sum) / ref).toFixed(1)}% of mean |x|)`);
    // segment: a centre point and a box, 3 masks each.
    const meta = await sharp(file).metadata();
    const w = meta.width ?? 0;
    const h = meta.height ?? 0;
    for (const prompt of [['--points', `${Math.round(w / 2)},${Math.round(h / 2)}`], ['--box', `${Math.round(w / 4)},${Math.round(h / 4)},${Math.round((3 * w) / 4)},${Math.round((3 * h) / 4)}`]]) {
      const masks: CocoRle[][] = [];
      for (const v of ['current', 'int8'] as const) {
        const o = path.join(tmp, `seg-${type}-${v}.json`);
        await sam(p, ['segment', file, '--model', dirs[v], ...prompt, '--out', o]);
        masks.push((JSON.parse(readFileSync(o, 'utf8')) as { masks: { segmentation: CocoRle }[] }).masks.map((m) => m.segmentation));
      }
      masks[0].forEach((m, i) => segIou.push(iou(decodeRle(m).data, decodeRle(masks[1][i]).data)));
    }
    // auto at thresholds 0 and no NMS: record i is prompt i's mask i in both runs.
    const recs: MaskRecord<CocoRle>[][] = [];
    for (const v of ['current', 'int8'] as const) {
      const o = path.join(tmp, `auto-${type}-${v}`);
      await sam(p, ['auto', file, '--model', dirs[v], '--out', o, '--points-per-side', '8', '--pred-iou-thresh', '0', '--stability-score-thresh', '0', '--box-nms-thresh', '1', '-q']);
      recs.push(JSON.parse(readFileSync(path.join(o, `${stem}.json`), 'utf8')) as MaskRecord<CocoRle>[]);
    }
    recs[0].forEach((r, i) => autoIou.push(iou(decodeRle(r.segmentation).data, decodeRle(recs[1][i].segmentation).data)));
  }
  const fmt = (v: number[]): string => `median ${pct(v, 0.5).toFixed(3)}, p10 ${pct(v, 0.1).toFixed(3)}, min ${pct(v, 0).toFixed(3)} (${v.length} masks)`;
  return [`${type} int8 vs float embeddings: ${embErr.join('; ')}`, `${type} sam segment mask IoU: ${fmt(segIou)}`, `${type} sam auto record IoU (8x8, thresholds 0): ${fmt(autoIou)}`];
}

/** One encoder session per process: create time, call times, peak RSS. */
async function sessionSweep(p: Paths, encoder: string): Promise<void> {
  out('\nORT session options on the vit_b encoder (current graph), one process each: create + 2 calls');
  const t = [['graph optimization', 'memory arena', 'create s', 'call s (median of 2)', 'peak RSS MB']];
  for (const level of ['basic', 'extended', 'all']) {
    for (const arena of ['on', 'off']) {
      const r = await timedProcess([process.execPath, path.join(p.repo, 'dist', 'bench', 'encoder-session.js'), encoder, level, arena]);
      if (r.code !== 0) throw new Error(`encoder-session ${level} ${arena}: ${r.stderr}`);
      const m = /SESSION create ([\d.]+) calls ([\d.,]+)/.exec(r.stderr);
      const calls = (m?.[2] ?? '').split(',').map(Number);
      t.push([level, arena, m ? Number(m[1]).toFixed(2) : '?', median(calls).toFixed(2), r.rssMb.toFixed(0)]);
    }
  }
  out(numTable(t));
}

export async function encoderBench(p: Paths, opts: { skipVitH: boolean }): Promise<void> {
  await mkdir(p.cache, { recursive: true });
  const tmp = await mkdtemp(path.join(tmpdir(), 'sam-encoder-bench-'));
  try {
    const types: Type[] = opts.skipVitH ? ['vit_t', 'vit_b'] : ['vit_t', 'vit_b', 'vit_h'];
    for (const type of types) {
      // The VM's speed drifts (up to 2x between minutes): the best of three, read before each type.
      const peak = Math.max(...[await matmulGflops(2048, 2048, 2048), await matmulGflops(2048, 2048, 2048), await matmulGflops(2048, 2048, 2048)]);
      out(`\nORT MatMul 2048x2048 x 2048x2048 on all cores: ${peak.toFixed(1)} GFLOP/s (the peak for ${type}; int8 rows count int8 multiply-adds as flops)`);
      const dirs = await measureType(p, type, peak, type === 'vit_h' ? 1 : 3, tmp);
      if (type !== 'vit_h') {
        out(`\nint8 against float, ${type} (random weights: masks are noise, the worst case for agreement)`);
        for (const line of await agreement(p, type, dirs, tmp)) out(`  ${line}`);
      }
      if (type === 'vit_b') await sessionSweep(p, path.join(dirs.current, 'encoder.onnx'));
      // vit_h's three folders are 5 GB: keep only what the next run needs to rebuild.
      if (type === 'vit_h') for (const v of VARIANTS) await rm(dirs[v], { recursive: true, force: true });
    }
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}
