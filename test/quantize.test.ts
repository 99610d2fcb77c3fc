/**
 * src/convert/quantize.ts: the int8 rewrite of constant-weight Linears, run through onnxruntime
 * against the float graph.
 */
import * as ort from 'onnxruntime-node';
import { describe, expect, it } from 'vitest';
import { GraphBuilder, serializeModel } from '../src/convert/onnx-builder.js';
import { quantizeLinearsInt8, quantizeWeightsInt8 } from '../src/convert/quantize.js';

describe('int8 quantization of Linears', () => {
  it('quantizes per output channel with 7-bit symmetric weights, in the [K, N] layout', () => {
    // W [N=2, K=3] (Gemm transB layout): channel 0 max 2, channel 1 max 0.5.
    const w = Float32Array.from([2, -1, 0.5, 0.25, -0.5, 0]);
    const { q, scale } = quantizeWeightsInt8(w, 2, 3, true);
    expect(Array.from(scale)).toEqual([2 / 64, 0.5 / 64].map(Math.fround));
    // Wq[k, n]: k-major.
    expect(Array.from(q)).toEqual([64, 32, -32, -64, 16, 0]);
    // The same weights as a MatMul's [K, N] give the same result.
    const wKN = Float32Array.from([2, 0.25, -1, -0.5, 0.5, 0]);
    expect(quantizeWeightsInt8(wKN, 2, 3, false)).toEqual({ q, scale });
    // An all-zero channel gets scale 1 (no division by zero).
    expect(Array.from(quantizeWeightsInt8(new Float32Array(3), 1, 3, true).scale)).toEqual([1]);
  });

  it('rewrites Gemm and constant-weight MatMul to DynamicQuantizeMatMul and stays close to the float graph', async () => {
    const M = 16;
    const K = 64;
    const N = 32;
    // Uncorrelated pseudo-random values in [-0.1, 0.1) (a sine of i would make outputs cancel).
    const wave = (len: number, seed: number): Float32Array => {
      let s = seed;
      return Float32Array.from({ length: len }, () => {
        s = (s * 1103515245 + 12345) % 2 ** 31;
        return (s / 2 ** 31 - 0.5) * 0.2;
      });
    };
    const g = new GraphBuilder('linears');
    const x = g.input('x', 'float32', [M, K]);
    const h = g.op('Gemm', [x, g.initializer('w1', wave(N * K, 1), [N, K]), g.initializer('b1', wave(N, 2), [N])], { transB: 1 });
    const y = g.op('MatMul', [h, g.initializer('w2', wave(N * K, 3), [N, K])]); // [M, K]
    // An activation × activation MatMul stays float.
    const z = g.op('MatMul', [y, g.op('Transpose', [x], { perm: [1, 0] })]); // [M, M]
    g.output(z, 'z', 'float32', [M, M]);
    const float = g.toModel();
    const { model, report } = quantizeLinearsInt8(float);
    expect(report.linears).toBe(2);
    expect(report.floatBytes).toBe(2 * N * K * 4);
    expect(report.quantizedBytes).toBe(2 * N * K + (N + K) * 4);
    expect(model.graph?.node?.map((n) => n.opType)).toEqual(['DynamicQuantizeMatMul', 'DynamicQuantizeMatMul', 'Transpose', 'MatMul', 'Identity']);
    expect(model.graph?.initializer?.map((t) => t.name).sort()).toEqual(['b1', 'w1.int8', 'w1.int8_scale', 'w2.int8', 'w2.int8_scale']);
    expect(model.opsetImport).toContainEqual({ domain: 'com.microsoft', version: 1 });
    // The input is not modified.
    expect(float.graph?.node?.[0].opType).toBe('Gemm');

    const feeds = { x: new ort.Tensor('float32', wave(M * K, 4).map((v) => v * 10), [M, K]) };
    const run = async (bytes: Uint8Array): Promise<Float32Array> => {
      const s = await ort.InferenceSession.create(bytes);
      const out = (await s.run(feeds)).z.data as Float32Array;
      await s.release();
      return out;
    };
    const [a, b] = [await run(serializeModel(float)), await run(serializeModel(model))];
    let err = 0;
    let ref = 0;
    for (let i = 0; i < a.length; i++) {
      err = Math.max(err, Math.abs(a[i] - b[i]));
      ref = Math.max(ref, Math.abs(a[i]));
    }
    expect(err).toBeGreaterThan(0);
    expect(err / ref).toBeLessThan(0.03);
  });
});
