/**
 * onnxruntime figures for the bench: the machine's MatMul peak, and one decoder call's time,
 * multiply-adds and per-operator-type profile. Multiply-adds are counted from ORT's own profile
 * (each MatMul/Gemm/Conv/ConvTranspose/MultiHeadAttention node's input and output shapes, fused variants included),
 * so they are the graph's as ORT runs it, not an estimate.
 */
import { readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import { GraphBuilder } from '../src/convert/onnx-builder.js';
import { ortSessionOptions } from '../src/engine/model.js';

export interface CallProfile {
  /** Median wall ms of one call (unprofiled runs). */
  ms: number;
  /** Multiply-adds of one call. */
  macs: number;
  /** Operator type → share of kernel time (0..1), largest first. */
  byOp: [string, number][];
}

/**
 * The engine's session options (src/engine/model.ts), with or without ORT's profiler; `encoder`:
 * those of the encoder session (no memory arena, spinning threads).
 */
function sessionOptions(profile: boolean, encoder = false): ort.InferenceSession.SessionOptions {
  const base = encoder ? ortSessionOptions({}, false, true) : ortSessionOptions();
  return { ...base, enableProfiling: profile, profileFilePrefix: path.join(tmpdir(), `sam-bench-profile-${process.pid}`) };
}

const median = (v: number[]): number => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)];

interface ProfileEvent {
  cat: string;
  name: string;
  dur: number;
  args?: { op_name?: string; input_type_shape?: Record<string, number[]>[]; output_type_shape?: Record<string, number[]>[] };
}

const prod = (d: readonly number[]): number => d.reduce((a, b) => a * b, 1);
const shapeOf = (s: Record<string, number[]> | undefined): number[] => (s ? (Object.values(s)[0] ?? []) : []);

/** Multiply-adds of one profiled node (0 for operators without a contraction). */
function nodeMacs(op: string, inputs: number[][], outputs: number[][]): number {
  const out = outputs[0] ?? [];
  if (op === 'MatMul' || op === 'FusedMatMul' || op === 'MatMulInteger' || op === 'DynamicQuantizeMatMul' || op === 'MatMulIntegerToFloat') {
    const a = inputs[0] ?? [];
    return prod(out) * (a[a.length - 1] ?? 0);
  }
  if (op === 'Gemm' || op === 'FusedGemm') {
    const a = inputs[0] ?? [];
    return prod(out) * (a[1] ?? 0); // transA is not used by our graphs
  }
  if (op === 'Conv' || op === 'FusedConv' || op === 'NhwcFusedConv') {
    const w = inputs[1] ?? [];
    return prod(out) * prod(w.slice(1));
  }
  if (op === 'MultiHeadAttention') {
    // query [B, S, Dqk], key [B, L, Dqk] or [B, N, L, H], output [B, S, Dv]: q·kᵀ and p·v.
    const q = inputs[0] ?? [];
    const k = inputs[1] ?? [];
    const L = k.length === 4 ? k[2] : (k[1] ?? 0);
    return (q[0] ?? 0) * (q[1] ?? 0) * L * ((q[2] ?? 0) + (out[2] ?? 0));
  }
  if (op === 'ConvTranspose') {
    const x = inputs[0] ?? [];
    const w = inputs[1] ?? [];
    return prod(x) * prod(w.slice(1));
  }
  return 0;
}

/** One profiled call (no warm-up, for models too slow to call more often): its kernel time and multiply-adds. */
export async function profileOnce(file: string, feeds: Record<string, ort.Tensor>, encoder = false): Promise<CallProfile> {
  const profiled = await ort.InferenceSession.create(file, sessionOptions(true, encoder));
  const t0 = performance.now();
  await profiled.run(feeds);
  const ms = performance.now() - t0;
  const { macs, byOp } = await readProfile(profiled);
  return { ms, macs, byOp };
}

/** Time `runs` calls of `session` on `feeds`, then profile one and count its multiply-adds. */
export async function profileCall(file: string, feeds: Record<string, ort.Tensor>, runs = 5, encoder = false): Promise<CallProfile> {
  const session = await ort.InferenceSession.create(file, sessionOptions(false, encoder));
  const times: number[] = [];
  await session.run(feeds);
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    await session.run(feeds);
    times.push(performance.now() - t0);
  }
  await session.release();
  const profiled = await ort.InferenceSession.create(file, sessionOptions(true, encoder));
  await profiled.run(feeds);
  const { macs, byOp } = await readProfile(profiled);
  return { ms: median(times), macs, byOp };
}

/** Ends a profiled session (one call) and reads its profile: multiply-adds and time by operator type. */
async function readProfile(profiled: ort.InferenceSession): Promise<{ macs: number; byOp: [string, number][] }> {
  // onnxruntime-node writes the profile at endProfiling and does not return its name: find it.
  await profiled.endProfiling();
  await profiled.release();
  const dir = tmpdir();
  const files = (await readdir(dir)).filter((f) => f.startsWith(`sam-bench-profile-${process.pid}`)).sort();
  const last = files[files.length - 1];
  if (!last) throw new Error('onnxruntime wrote no profile');
  const events = JSON.parse(await readFile(path.join(dir, last), 'utf8')) as ProfileEvent[];
  for (const f of files) await rm(path.join(dir, f), { force: true });
  const kernel = new Map<string, number>();
  let total = 0;
  let macs = 0;
  // The profile holds the one call of the profiled session.
  for (const e of events) {
    if (e.cat !== 'Node' || !e.name.endsWith('_kernel_time') || !e.args?.op_name) continue;
    const op = e.args.op_name;
    kernel.set(op, (kernel.get(op) ?? 0) + e.dur);
    total += e.dur;
    macs += nodeMacs(op, (e.args.input_type_shape ?? []).map(shapeOf), (e.args.output_type_shape ?? []).map(shapeOf));
  }
  const byOp = [...kernel.entries()].map(([op, us]): [string, number] => [op, us / total]).sort((a, b) => b[1] - a[1]);
  return { macs, byOp };
}

/** GFLOP/s (2 flops per multiply-add) of one ORT MatMul [m,k]x[k,n] on all cores. */
export async function matmulGflops(m: number, k: number, n: number): Promise<number> {
  const g = new GraphBuilder('matmul_peak');
  const a = g.input('a', 'float32', [m, k]);
  const b = g.input('b', 'float32', [k, n]);
  g.output(g.op('MatMul', [a, b]), 'c', 'float32', [m, n]);
  const session = await ort.InferenceSession.create(g.serialize(), sessionOptions(false));
  const fill = (len: number): Float32Array => Float32Array.from({ length: len }, (_, i) => Math.sin(i) * 0.5);
  const feeds = { a: new ort.Tensor('float32', fill(m * k), [m, k]), b: new ort.Tensor('float32', fill(k * n), [k, n]) };
  await session.run(feeds);
  const times: number[] = [];
  for (let i = 0; i < 5; i++) {
    const t0 = performance.now();
    await session.run(feeds);
    times.push(performance.now() - t0);
  }
  await session.release();
  return (2 * m * k * n) / (median(times) / 1000) / 1e9;
}
