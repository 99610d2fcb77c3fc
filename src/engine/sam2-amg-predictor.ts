/**
 * The generator's view of a SAM 2 model (SAM2AutomaticMaskGenerator's use of SAM2ImagePredictor):
 * each crop is preprocessed as SAM 2 does (square resize) and encoded into image_embed and the
 * two high-res features; batches of single foreground points (label 1, no padding point: the
 * decoder graph appends it) go to the 1024 frame as x/w·1024, y/h·1024 in float32.
 *
 * With use_m2m every candidate mask (K per point) is predicted once more with its own point and
 * its own clamped low-res logits as mask_input, by the single-mask decoder; the refined logits and
 * IoU replace the candidate's, so the generator filters and scores the refined masks as SAM 2 does.
 */
import * as ort from 'onnxruntime-node';
import { EMBEDDING_DIMS, IMAGE_SIZE, LOW_RES_LENGTH } from '../core/constants.js';
import { StageTimes } from '../core/timings.js';
import type { AmgPredictor, MaskFilter, PointPrediction } from '../amg/predictor.js';
import type { BoxXyxy, Size } from '../core/types.js';
import { SAM2_HIGH_RES_DIMS } from '../io/embedding-file.js';
import { cropImage, type RgbImage } from '../io/image.js';
import { modelError } from '../util/errors.js';
import type { EncoderSession, SamModel, Sam2DecoderSession } from './model.js';
import { Sam2SplitDecoderSession, type Sam2SplitImageSide } from './sam2-split-decoder.js';
import { encodeImage, type ImageState } from './predictor.js';

/**
 * Prompts per decoder call (rows are computed independently, so results do not depend on it); it
 * bounds the decoder's intermediates that onnxruntime's arena keeps, as DECODER_CHUNK does for SAM.
 */
export const SAM2_DECODER_CHUNK = 4;

/** SAM2Transforms.transform_coords(normalize=True) of crop-pixel points [n, 2], in float32. */
export function sam2PointCoords(points: ArrayLike<number>, [h, w]: Size): Float32Array {
  const f = Math.fround;
  const out = new Float32Array(points.length);
  for (let i = 0; i < points.length; i += 2) {
    out[i] = f(f(f(points[i]) / w) * IMAGE_SIZE);
    out[i + 1] = f(f(f(points[i + 1]) / h) * IMAGE_SIZE);
  }
  return out;
}

export class Sam2AmgPredictor implements AmgPredictor {
  private feeds?: Record<'image_embed' | 'high_res_feats_0' | 'high_res_feats_1', ort.Tensor>;
  private imageSide?: Sam2SplitImageSide;
  private cropSize: Size = [0, 0];

  constructor(
    private readonly encoder: EncoderSession | undefined,
    /** The multimask decoder (multimask_output), plain or split, or the single-mask one. */
    private readonly decoder: Sam2DecoderSession | Sam2SplitDecoderSession,
    /** The single-mask decoder for use_m2m's refinement; undefined: no refinement. */
    private readonly refiner: Sam2DecoderSession | undefined,
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
    const { embeddings, highResFeats, originalSize: size } = state;
    if (!highResFeats) throw modelError('internal: a SAM 2 image state without its high-res features');
    this.feeds = {
      image_embed: new ort.Tensor('float32', embeddings, [...EMBEDDING_DIMS]),
      high_res_feats_0: new ort.Tensor('float32', highResFeats[0], [...SAM2_HIGH_RES_DIMS[0]]),
      high_res_feats_1: new ort.Tensor('float32', highResFeats[1], [...SAM2_HIGH_RES_DIMS[1]]),
    };
    this.imageSide = undefined;
    const decoder = this.decoder;
    if (decoder instanceof Sam2SplitDecoderSession) {
      const feeds = this.feeds;
      this.imageSide = await this.timings.time('decoder', () => decoder.imageSide(feeds));
    }
    this.cropSize = size;
    return { cropSize: size, inputSize: [IMAGE_SIZE, IMAGE_SIZE] };
  }

  /**
   * The plain graph returns every prompt's logits (it computes them all anyway); the split graphs
   * only those of the prompts `masks` asks for (maskRows), unless use_m2m refines every candidate
   * (its IoU filter then applies to the refined IoUs).
   */
  async predictPoints(points: Float32Array, masks?: MaskFilter): Promise<PointPrediction> {
    const feeds = this.feeds;
    if (!feeds) throw new Error('internal: predictPoints before setCrop');
    const b = points.length / 2;
    const coords = sam2PointCoords(points, this.cropSize);
    const labels = new Float32Array(b).fill(1);
    const t0 = performance.now();
    if (this.decoder instanceof Sam2SplitDecoderSession) {
      const r = await this.predictSplit(this.decoder, coords, labels, b, this.refiner ? undefined : masks);
      if (this.refiner && b > 0) await this.refine(this.refiner, feeds, coords, b, r.k, r.iou, r.logits);
      this.timings.add('decoder', performance.now() - t0);
      return { iouPredictions: r.iou, masksPerPoint: r.k, lowResLogits: r.logits, ...(r.rows ? { maskRows: r.rows } : {}) };
    }
    const decoder = this.decoder;
    let k = 0;
    let iou = new Float32Array(0);
    let logits = new Float32Array(0);
    for (let start = 0; start < b; start += SAM2_DECODER_CHUNK) {
      const rows = Math.min(SAM2_DECODER_CHUNK, b - start);
      const r = await decoder.run(feeds, coords.subarray(start * 2, (start + rows) * 2), labels.subarray(start, start + rows), rows, 1);
      if (k === 0) {
        k = r.numMasks;
        iou = new Float32Array(b * k);
        logits = new Float32Array(b * k * LOW_RES_LENGTH);
      }
      iou.set(r.iouPredictions.subarray(0, rows * k), start * k);
      logits.set(r.lowResMasks.subarray(0, rows * k * LOW_RES_LENGTH), start * k * LOW_RES_LENGTH);
    }
    if (this.refiner && b > 0) await this.refine(this.refiner, feeds, coords, b, k, iou, logits);
    this.timings.add('decoder', performance.now() - t0);
    return { iouPredictions: iou, masksPerPoint: k, lowResLogits: logits };
  }

  /**
   * Prompt side for every prompt, mask side for those with an IoU above `filter` (all without):
   * IoUs [b, K], logits [kept, K, 256, 256] and, with a filter, the kept prompts (ascending).
   */
  private async predictSplit(
    decoder: Sam2SplitDecoderSession,
    coords: Float32Array,
    labels: Float32Array,
    b: number,
    filter: MaskFilter | undefined,
  ): Promise<{ iou: Float32Array; k: number; logits: Float32Array; rows?: Int32Array }> {
    const image = this.imageSide;
    if (!image) throw new Error('internal: SAM 2 split decoder without its image side');
    let k = 0;
    let iou = new Float32Array(0);
    let logits = new Float32Array(0);
    const kept: number[] = [];
    for (let start = 0; start < b; start += SAM2_DECODER_CHUNK) {
      const rows = Math.min(SAM2_DECODER_CHUNK, b - start);
      const stage1 = await decoder.promptSide(image, coords.subarray(start * 2, (start + rows) * 2), labels.subarray(start, start + rows), rows, 1);
      if (k === 0) {
        k = stage1.numMasks;
        iou = new Float32Array(b * k);
        logits = new Float32Array(b * k * LOW_RES_LENGTH);
      }
      iou.set(stage1.iouPredictions.subarray(0, rows * k), start * k);
      const want: number[] = [];
      for (let i = 0; i < rows; i++) {
        if (!filter || stage1.iouPredictions.subarray(i * k, (i + 1) * k).some((v) => v > filter.iouAbove)) want.push(i);
      }
      if (want.length === 0) continue;
      const low = await decoder.maskSide(image, stage1, Int32Array.from(want));
      logits.set(low, kept.length * k * LOW_RES_LENGTH);
      for (const i of want) kept.push(start + i);
    }
    return { iou, k, logits: logits.subarray(0, kept.length * k * LOW_RES_LENGTH), ...(filter ? { rows: Int32Array.from(kept) } : {}) };
  }

  /** use_m2m: candidate j (point j / k) again, with its logits as mask_input; results replace it in place. */
  private async refine(
    refiner: Sam2DecoderSession,
    feeds: Record<string, ort.Tensor>,
    coords: Float32Array,
    b: number,
    k: number,
    iou: Float32Array,
    logits: Float32Array,
  ): Promise<void> {
    const n = b * k;
    for (let start = 0; start < n; start += SAM2_DECODER_CHUNK) {
      const rows = Math.min(SAM2_DECODER_CHUNK, n - start);
      const c = new Float32Array(rows * 2);
      for (let i = 0; i < rows; i++) {
        const p = Math.floor((start + i) / k);
        c[2 * i] = coords[2 * p];
        c[2 * i + 1] = coords[2 * p + 1];
      }
      const maskInput = logits.slice(start * LOW_RES_LENGTH, (start + rows) * LOW_RES_LENGTH);
      const r = await refiner.run(feeds, c, new Float32Array(rows).fill(1), rows, 1, maskInput);
      if (r.numMasks !== 1) throw modelError(`${refiner.file}: the single-mask SAM 2 decoder returned ${r.numMasks} masks per prompt`);
      iou.set(r.iouPredictions.subarray(0, rows), start);
      logits.set(r.lowResMasks.subarray(0, rows * LOW_RES_LENGTH), start * LOW_RES_LENGTH);
    }
  }
}

/**
 * The decoder SAM 2's generator runs its grid through: the split multimask graphs when the folder
 * has them (same masks, mask side only for prompts that pass the IoU filter), else the plain
 * multimask graph; the single-mask graph for multimask_output=False.
 */
export async function sam2AmgDecoder(model: SamModel, multimask: boolean): Promise<Sam2DecoderSession | Sam2SplitDecoderSession> {
  return (multimask ? await model.sam2SplitDecoder() : undefined) ?? model.sam2Decoder(multimask);
}
