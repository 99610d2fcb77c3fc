import { EMBEDDING_DIMS, LOW_RES_LENGTH } from '../core/constants.js';
import * as ort from 'onnxruntime-node';
import { StageTimes } from '../core/timings.js';
import { applyCoords } from '../core/transforms.js';
import type { AmgPredictor, MaskFilter, PointPrediction } from '../amg/predictor.js';
import type { BoxXyxy, Size } from '../core/types.js';
import { cropImage, type RgbImage } from '../io/image.js';
import { LABEL, encodeImage, type ImageState } from './predictor.js';
import { DecoderSession, type EncoderSession } from './model.js';
import type { SplitDecoderSession, SplitImageSide } from './split-decoder.js';

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
export const DECODER_CHUNK = 4;
/**
 * Prompts per split-decoder stage-1 call (stage 2 takes the rows of one stage-1 call that pass the
 * filter). Stage 1 keeps transformer_src, 4 MiB a prompt, until stage 2 has read it; see README
 * "Design notes" for the measurements behind the value.
 */
const SPLIT_CHUNK = 4;

/** Each prompt: the point (label 1) and the padding point (0, 0) with label −1, as the official AMG. */
function pointPrompts(coords1024: Float64Array, first: number, rows: number): { coords: Float32Array; labels: Float32Array } {
  const coords = new Float32Array(rows * 4);
  const labels = new Float32Array(rows * 2);
  for (let i = 0; i < rows; i++) {
    coords[i * 4] = coords1024[2 * (first + i)];
    coords[i * 4 + 1] = coords1024[2 * (first + i) + 1];
    labels[i * 2] = LABEL.foreground;
    labels[i * 2 + 1] = LABEL.padding;
  }
  return { coords, labels };
}

/**
 * Collects [B, K] IoUs and the logits of the wanted prompts, dropping decoder mask 0 when M > 1.
 * The logits go straight into one [B, K, 256, 256] buffer (rows in prompt order), returned as a
 * view of its first rows: no second copy.
 */
class PredictionBuilder {
  private k = 0;
  private first = 0;
  private iou = new Float32Array(0);
  private logits = new Float32Array(0);
  private readonly rows: number[] = [];

  constructor(
    private readonly b: number,
    private readonly filter?: MaskFilter,
  ) {}

  /** IoUs [rows, M] of prompts start.. ; returns the (chunk-relative) rows whose logits are wanted. */
  addIou(start: number, iou: Float32Array, m: number, rows: number): Int32Array {
    if (this.k === 0) {
      this.first = m === 1 ? 0 : 1;
      this.k = m - this.first;
      this.iou = new Float32Array(this.b * this.k);
    }
    const want: number[] = [];
    const above = this.filter?.iouAbove;
    for (let i = 0; i < rows; i++) {
      const row = iou.subarray(i * m + this.first, (i + 1) * m);
      this.iou.set(row, (start + i) * this.k);
      if (above === undefined || row.some((v) => v > above)) want.push(i);
    }
    return Int32Array.from(want);
  }

  /**
   * The logits of chunk rows `want` (chunk starting at prompt `start`): prompt want[j] is row
   * lowRows[j] of `low` [rows, M, 256, 256].
   */
  addLogits(start: number, want: Int32Array, low: Float32Array, lowRows: Int32Array, m: number): void {
    const per = this.k * LOW_LEN;
    // Sized for every prompt on first use (K is known only from the first result).
    if (this.logits.length === 0) this.logits = new Float32Array(this.b * per);
    for (let j = 0; j < want.length; j++) {
      const r = lowRows[j];
      this.logits.set(low.subarray((r * m + this.first) * LOW_LEN, (r + 1) * m * LOW_LEN), this.rows.length * per);
      this.rows.push(start + want[j]);
    }
  }

  build(): PointPrediction {
    const lowResLogits = this.logits.subarray(0, this.rows.length * this.k * LOW_LEN);
    return { iouPredictions: this.iou, masksPerPoint: this.k, maskRows: Int32Array.from(this.rows), lowResLogits };
  }
}

/**
 * The generator's view of an ONNX model: embeds crops of one image and answers batches of single
 * foreground points with the multimask outputs. The split decoder runs its image side once per
 * crop, stage 1 (IoU) for every prompt and stage 2 (masks) for the prompts the generator wants; a
 * batched decoder gets the prompts in calls of DECODER_CHUNK; the official single-prompt decoder
 * one call per point.
 */
export class OnnxAmgPredictor implements AmgPredictor {
  private embeddings?: ort.Tensor;
  private imageSide?: SplitImageSide;
  private cropSize: Size = [0, 0];

  constructor(
    private readonly encoder: EncoderSession | undefined,
    private readonly decoder: DecoderSession | SplitDecoderSession,
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
      state = await encodeImage(this.encoder, cropImage(this.image, cropBox), this.timings);
    }
    this.embeddings = new ort.Tensor('float32', state.embeddings, [...EMBEDDING_DIMS]);
    this.imageSide = undefined;
    const decoder = this.decoder;
    if (!(decoder instanceof DecoderSession)) {
      const embeddings = this.embeddings;
      this.imageSide = await this.timings.time('decoder', () => decoder.imageSide(embeddings));
    }
    this.cropSize = state.originalSize;
    return { cropSize: state.originalSize, inputSize: state.inputSize };
  }

  async predictPoints(points: Float32Array, masks?: MaskFilter): Promise<PointPrediction> {
    if (!this.embeddings) throw new Error('internal: predictPoints before setCrop');
    const b = points.length / 2;
    const coords1024 = applyCoords(points, this.cropSize);
    const out = new PredictionBuilder(b, masks);
    const t0 = performance.now();
    if (this.decoder instanceof DecoderSession) await this.predictWhole(this.decoder, coords1024, b, out);
    else await this.predictSplit(this.decoder, coords1024, b, out);
    this.timings.add('decoder', performance.now() - t0);
    return out.build();
  }

  private async predictSplit(decoder: SplitDecoderSession, coords1024: Float64Array, b: number, out: PredictionBuilder): Promise<void> {
    const image = this.imageSide;
    if (!image) throw new Error('internal: split decoder without its image side');
    for (let start = 0; start < b; start += SPLIT_CHUNK) {
      const rows = Math.min(SPLIT_CHUNK, b - start);
      const { coords, labels } = pointPrompts(coords1024, start, rows);
      const stage1 = await decoder.promptSide(image, coords, labels, rows, 2);
      const want = out.addIou(start, stage1.iouPredictions, stage1.numMasks, rows);
      // Stage 2 answers the wanted prompts only, in order: row j is want[j].
      if (want.length > 0) out.addLogits(start, want, await decoder.maskSide(stage1, want), Int32Array.from(want.keys()), stage1.numMasks);
    }
  }

  private async predictWhole(decoder: DecoderSession, coords1024: Float64Array, b: number, out: PredictionBuilder): Promise<void> {
    const embeddings = this.embeddings!;
    const chunk = decoder.batched ? DECODER_CHUNK : 1;
    for (let start = 0; start < b; start += chunk) {
      const rows = Math.min(chunk, b - start);
      const { coords, labels } = pointPrompts(coords1024, start, rows);
      // orig_im_size only shapes the `masks` output, which is not fetched here; ORT still computes
      // it ([B, M, h, w] floats per call), so ask for a 1x1 one: low_res_masks are the same.
      const r = await decoder.run({ embeddings, pointCoords: coords, pointLabels: labels, batch: rows, numPoints: 2, origSize: [1, 1] }, ['low_res_masks']);
      const want = out.addIou(start, r.iouPredictions, r.numMasks, rows);
      // Whole-decoder rows are all computed anyway: keep only the wanted ones' logits.
      if (want.length > 0) out.addLogits(start, want, r.lowResMasks!, want, r.numMasks);
    }
  }
}
