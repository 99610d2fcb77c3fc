/**
 * Child process of the encoder bench (encoder-bench.ts `sessionSweep`):
 * `node dist/bench/encoder-session.js ENCODER.onnx LEVEL on|off` creates one encoder session
 * with the engine's options but this graph optimization level and memory arena, calls it twice,
 * and prints `SESSION create S calls S1,S2` on stderr (its parent reads peak RSS from GNU time).
 */
import * as ort from 'onnxruntime-node';
import { ortSessionOptions } from '../src/engine/model.js';

const [file, level, arena] = process.argv.slice(2);
const levels = ['disabled', 'basic', 'extended', 'all'] as const;
const graphOptimizationLevel = levels.find((l) => l === level);
if (!file || !graphOptimizationLevel || (arena !== 'on' && arena !== 'off')) {
  process.stderr.write('usage: encoder-session.js ENCODER.onnx disabled|basic|extended|all on|off\n');
  process.exit(2);
}
const t0 = performance.now();
const session = await ort.InferenceSession.create(file, { ...ortSessionOptions({}, arena === 'on', true), graphOptimizationLevel });
const create = (performance.now() - t0) / 1000;
const image = new Float32Array(3 * 1024 * 1024);
for (let i = 0; i < image.length; i++) image[i] = Math.sin(i * 0.001) * 1.5;
const calls: number[] = [];
for (let i = 0; i < 2; i++) {
  const t = performance.now();
  await session.run({ image: new ort.Tensor('float32', image, [1, 3, 1024, 1024]) });
  calls.push((performance.now() - t) / 1000);
}
process.stderr.write(`SESSION create ${create.toFixed(3)} calls ${calls.map((c) => c.toFixed(3)).join(',')}\n`);
