/**
 * Dynamic int8 quantization of a graph's Linears, as onnxruntime's `quantize_dynamic` does it for
 * MatMul: weights are quantized once here (int8, symmetric, one scale per output channel),
 * activations at run time (uint8, one scale and zero point per tensor, computed by the kernel).
 *
 *   Gemm(x [M,K], W [N,K], b [N], transB=1)
 *     → com.microsoft.DynamicQuantizeMatMul(x, Wq [K,N] int8, scale [N], —, b)
 *   MatMul(x [..,K], W [K,N])  (TinyViT's Linears: MatMul + Add)
 *     → com.microsoft.DynamicQuantizeMatMul(x, Wq [K,N] int8, scale [N])
 *
 * Weights use 7 bits ([-64, 64], ORT's `reduce_range`): on AVX2 and AVX-512 without VNNI,
 * onnxruntime's u8×s8 kernels add pairs of products in int16 (VPMADDUBSW), and 255·127·2
 * overflows it; 255·64·2 = 32640 does not. Measured on a [4096,768]×[768,3072] product here
 * (AVX2): max error 0.135 with 8-bit weights, 0.023 with 7-bit, and 7-bit was also faster.
 *
 * Only Gemms (alpha = beta = 1, transA = 0, transB = 1) and MatMuls whose weight is a 2-D float
 * initializer are rewritten; everything else (attention, convolutions, LayerNorm) stays float.
 */
import { endianness } from 'node:os';
import { dataTypeCode, makeTensor, type ModelProto, type NodeProto, type TensorProto } from './onnx-builder.js';


/** Largest weight magnitude after quantization (ORT reduce_range for int8). */
const QMAX = 64;

export interface QuantizeReport {
  /** Gemm and MatMul nodes rewritten to DynamicQuantizeMatMul. */
  linears: number;
  /** Bytes of the float weights replaced, and of the int8 weights + scales replacing them. */
  floatBytes: number;
  quantizedBytes: number;
}

const FLOAT = dataTypeCode('float32');

function attrInt(node: NodeProto, name: string, fallback: number): number {
  const a = node.attribute?.find((x) => x.name === name);
  return a?.i === undefined || a.i === null ? fallback : Number(a.i);
}

function attrFloat(node: NodeProto, name: string, fallback: number): number {
  const a = node.attribute?.find((x) => x.name === name);
  return a?.f === undefined || a.f === null ? fallback : a.f;
}

/** Float values of an initializer with raw little-endian data (what GraphBuilder writes). */
function floatsOf(t: TensorProto): Float32Array | undefined {
  const raw = t.rawData;
  if (t.dataType !== FLOAT || !raw || raw.length % 4 !== 0) return undefined;
  if (endianness() === 'LE') return new Float32Array(new Uint8Array(raw).buffer);
  const out = new Float32Array(raw.length / 4);
  const view = new DataView(raw.buffer, raw.byteOffset, raw.length);
  for (let i = 0; i < out.length; i++) out[i] = view.getFloat32(i * 4, true);
  return out;
}

/**
 * Per-output-channel symmetric quantization into Wq [K, N] (the layout DynamicQuantizeMatMul
 * multiplies) and scale [N], W ≈ scale[n]·Wq[k, n]. `w` is [N, K] (a Gemm's transB weight,
 * `transposed`) or [K, N] (a MatMul's).
 */
export function quantizeWeightsInt8(w: Float32Array, n: number, k: number, transposed: boolean): { q: Int8Array; scale: Float32Array } {
  const q = new Int8Array(k * n);
  const scale = new Float32Array(n);
  const at = transposed ? (o: number, i: number): number => w[o * k + i] : (o: number, i: number): number => w[i * n + o];
  for (let o = 0; o < n; o++) {
    let max = 0;
    for (let i = 0; i < k; i++) max = Math.max(max, Math.abs(at(o, i)));
    const s = max > 0 ? max / QMAX : 1;
    scale[o] = s;
    for (let i = 0; i < k; i++) q[i * n + o] = Math.max(-QMAX, Math.min(QMAX, Math.round(at(o, i) / s)));
  }
  return { q, scale };
}

/**
 * A copy of `model` with every eligible Gemm as DynamicQuantizeMatMul (see the module comment);
 * float weights no other node reads are dropped. Throws nothing for a graph without Gemms: the
 * report then says 0 linears.
 */
export function quantizeLinearsInt8(model: ModelProto): { model: ModelProto; report: QuantizeReport } {
  const graph = model.graph ?? {};
  const inits = new Map<string, TensorProto>();
  for (const t of graph.initializer ?? []) if (t.name) inits.set(t.name, t);
  const added: TensorProto[] = [];
  const report: QuantizeReport = { linears: 0, floatBytes: 0, quantizedBytes: 0 };
  const quantized = new Map<string, { q: string; scale: string }>();

  const nodes = (graph.node ?? []).map((node): NodeProto => {
    const [x, wName, bias] = node.input ?? [];
    const w = wName ? inits.get(wName) : undefined;
    const plain = (node.domain ?? '') === '' && w !== undefined && w.dims?.length === 2;
    const gemm =
      plain &&
      node.opType === 'Gemm' &&
      attrInt(node, 'transA', 0) === 0 &&
      attrInt(node, 'transB', 0) === 1 &&
      attrFloat(node, 'alpha', 1) === 1 &&
      attrFloat(node, 'beta', 1) === 1 &&
      (bias === undefined || bias === '' || inits.get(bias)?.dims?.length === 1);
    const matmul = plain && node.opType === 'MatMul';
    if (!(gemm || matmul) || !x || !wName) return node;
    let names = quantized.get(wName);
    if (!names) {
      const data = floatsOf(w);
      if (!data) return node;
      const [d0, d1] = (w.dims ?? []).map(Number);
      const [n, k] = gemm ? [d0, d1] : [d1, d0];
      const { q, scale } = quantizeWeightsInt8(data, n, k, gemm);
      names = { q: `${wName}.int8`, scale: `${wName}.int8_scale` };
      added.push(makeTensor(names.q, q, [k, n]), makeTensor(names.scale, scale, [n]));
      quantized.set(wName, names);
      report.floatBytes += data.length * 4;
      report.quantizedBytes += q.length + scale.length * 4;
    }
    report.linears++;
    return {
      name: node.name,
      opType: 'DynamicQuantizeMatMul',
      domain: 'com.microsoft',
      // inputs: A, B, b_scale, b_zero_point (absent: symmetric), bias
      input: [x, names.q, names.scale, ...(gemm && bias ? ['', bias] : [])],
      output: [...(node.output ?? [])],
      attribute: [],
    };
  });

  const stillRead = new Set(nodes.flatMap((n) => n.input ?? []));
  const initializer = [...(graph.initializer ?? []).filter((t) => !t.name || stillRead.has(t.name) || !quantized.has(t.name)), ...added];
  const domains = new Set((model.opsetImport ?? []).map((o) => o.domain ?? ''));
  const opsetImport = [...(model.opsetImport ?? [])];
  if (report.linears > 0 && !domains.has('com.microsoft')) opsetImport.push({ domain: 'com.microsoft', version: 1 });
  return { model: { ...model, opsetImport, graph: { ...graph, node: nodes, initializer } }, report };
}
