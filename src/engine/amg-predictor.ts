import { EMBEDDING_DIMS, LOW_RES_LENGTH } from '../core/constants.js';
import * as ort from 'onnxruntime-node';
import { StageTimes } from '../core/timings.js';
import { applyCoords } from '../core/transforms.js';
import type { AmgPredictor } from '../amg/predictor.js';
import type { BoxXyxy, Size } from '../core/types.js';
import { cropImage, preprocess, type RgbImage } from '../io/image.js';
import { LABEL, type ImageState } from './predictor.js';
import type { DecoderSession, EncoderSession } from './model.js';

const LOW_LEN = LOW_RES_LENGTH;
/**
 * Prompts per batched-decoder call. onnxruntime's CPU arena keeps the decoder's intermediates of
 * the largest call for the rest of the run, ~55 MB a prompt (the same for every SAM size: the
 * mask decoder does not change), so this sets a fixed part of peak memory: measured with the
 * converted vit_t on 2 cores, calls of 16 held ~940 MB, calls of 4 ~260 MB, calls of 2 ~140 MB. Time:
 * 256 prompts took 7.9 s one by one, 11.4 s in calls of 64, 5.4 s in calls of 16 and 5.8 s in
 * calls of 4. Results do not depend on it (each prompt row is computed on its own; checked
 * byte for byte). points_per_batch keeps its meaning (how many prompts the generator hands over
 * at once); this only splits the ORT calls.
 */
const DECODER_CHUNK = 4;

/**
 * The generator's view of an ONNX model: embeds crops of one image and answers batches of single
 * foreground points with the multimask outputs. A batched decoder gets the whole batch in one call;
 * the official single-prompt decoder gets one call per point.
 */
export class OnnxAmgPredictor implements AmgPredictor {
  private embeddings?: ort.Tensor;
  private cropSize: Size = [0, 0];

  constructor(
    private readonly encoder: EncoderSession | undefined,
    private readonly decoder: DecoderSession,
    private readonly image: RgbImage,
    private readonly timings: StageTimes = new StageTimes(),
    /** A stored embedding of the whole image (sam embed), used for crop 0 instead of the encoder. */
    private readonly fullImage?: ImageState,
  ) {}

  async setCrop(cropBox: BoxXyxy): Promise<{ cropSize: Size; inputSize: Size }> {
    const [x0, y0, x1, y1] = cropBox;
    const isFull = x0 === 0 && y0 === 0 && x1 === this.image.width && y1 === this.image.height;
    let state: ImageState;
    if (isFull && this.fullImage) {
      state = this.fullImage;
    } else {
      if (!this.encoder) throw new Error('internal: no encoder for crop embedding');
      const encoder = this.encoder;
      const crop = cropImage(this.image, cropBox);
      const { tensor, inputSize } = await this.timings.time('preprocess', () => preprocess(crop));
      const embeddings = await this.timings.time('encoder', () => encoder.run(tensor));
      state = { embeddings, originalSize: [crop.height, crop.width], inputSize };
    }
    this.embeddings = new ort.Tensor('float32', state.embeddings, [...EMBEDDING_DIMS]);
    this.cropSize = state.originalSize;
    return { cropSize: state.originalSize, inputSize: state.inputSize };
  }

  async predictPoints(points: Float32Array): Promise<{ lowResLogits: Float32Array; iouPredictions: Float32Array; masksPerPoint: number }> {
    if (!this.embeddings) throw new Error('internal: predictPoints before setCrop');
    const embeddings = this.embeddings;
    const b = points.length / 2;
    const coords1024 = applyCoords(points, this.cropSize);
    // Each prompt: the point (label 1) and the padding point (0, 0) with label −1.
    const prompt = (i: number, coords: Float32Array, labels: Float32Array, row: number) => {
      coords[row * 4] = coords1024[2 * i];
      coords[row * 4 + 1] = coords1024[2 * i + 1];
      labels[row * 2] = LABEL.foreground;
      labels[row * 2 + 1] = LABEL.padding;
    };
    const t0 = performance.now();
    // orig_im_size only shapes the `masks` output, which is not fetched here; ORT still computes
    // it ([B, M, h, w] floats per call), so ask for a 1x1 one: low_res_masks are the same.
    const run = (coords: Float32Array, labels: Float32Array, batch: number) =>
      this.decoder.run({ embeddings, pointCoords: coords, pointLabels: labels, batch, numPoints: 2, origSize: [1, 1] }, ['low_res_masks']);
    // Copy prompt rows of a [batch, m, ...] result into [b, k, ...], dropping mask 0 (the
    // single-mask output) when the decoder has multimask outputs.
    let outLow = new Float32Array(0);
    let outIou = new Float32Array(0);
    let k = 0;
    const take = (r: Awaited<ReturnType<typeof run>>, firstRow: number, rows: number) => {
      const m = r.numMasks;
      const first = m === 1 ? 0 : 1;
      if (k === 0) {
        k = m - first;
        outLow = new Float32Array(b * k * LOW_LEN);
        outIou = new Float32Array(b * k);
      }
      for (let i = 0; i < rows; i++) {
        const row = firstRow + i;
        outLow.set(r.lowResMasks!.subarray((i * m + first) * LOW_LEN, (i + 1) * m * LOW_LEN), row * k * LOW_LEN);
        outIou.set(r.iouPredictions.subarray(i * m + first, (i + 1) * m), row * k);
      }
    };
    if (this.decoder.batched) {
      for (let start = 0; start < b; start += DECODER_CHUNK) {
        const rows = Math.min(DECODER_CHUNK, b - start);
        const coords = new Float32Array(rows * 4);
        const labels = new Float32Array(rows * 2);
        for (let i = 0; i < rows; i++) prompt(start + i, coords, labels, i);
        take(await run(coords, labels, rows), start, rows);
      }
    } else {
      for (let i = 0; i < b; i++) {
        const coords = new Float32Array(4);
        const labels = new Float32Array(2);
        prompt(i, coords, labels, 0);
        take(await run(coords, labels, 1), i, 1);
      }
    }
    this.timings.add('decoder', performance.now() - t0);
    return { lowResLogits: outLow, iouPredictions: outIou, masksPerPoint: k };
  }
}
