import { EMBEDDING_DIMS, IMAGE_SIZE, INT8_MODEL_ID_SUFFIX, LOW_RES_LENGTH } from '../core/constants.js';
import { createUpscaler } from '../core/upscale.js';
import { StageTimes } from '../core/timings.js';
import * as ort from 'onnxruntime-node';
import { applyCoords } from '../core/transforms.js';
import type { BoxXyxy, PromptPoint, Size } from '../core/types.js';
import { inputError } from '../util/errors.js';
import type { EmbeddingRecord } from '../io/embedding-file.js';
import { preprocess, preprocessSam2, type RgbImage } from '../io/image.js';
import type { DecoderSession, EncoderSession, SamModel } from './model.js';

/** Point label values of the official decoder. */
export const LABEL = { background: 0, foreground: 1, boxTopLeft: 2, boxBottomRight: 3, padding: -1 } as const;


export interface Prompt {
  /** In original image pixels. */
  points?: PromptPoint[];
  /** XYXY in original image pixels. */
  box?: BoxXyxy;
  /** [256, 256] low-res logits of an earlier prediction (its `lowResMasks` entry). */
  maskInput?: Float32Array;
}

export interface Prediction {
  /** [K, h, w] logits at the original size; threshold 0.0 for the binary mask. */
  masks: Float32Array;
  /** [K] */
  iouPredictions: Float32Array;
  /** [K, 256, 256] logits, reusable as the next prompt's maskInput. */
  lowResMasks: Float32Array;
  /** Number of masks K: 3 for multimask output of the default export, else 1. */
  count: number;
  size: Size;
}

/** What the decoder needs of an image: its embedding and the two sizes that place prompts. */
export interface ImageState {
  /** [1, 256, 64, 64] (SAM 2: image_embed) */
  embeddings: Float32Array;
  originalSize: Size;
  /** The image's size in the 1024 frame before padding; SAM 2 resizes to [1024, 1024]. */
  inputSize: Size;
  /** SAM 2 only: high_res_feats_0 [1,32,256,256], high_res_feats_1 [1,64,128,128]. */
  highResFeats?: readonly [Float32Array, Float32Array];
}

/** Run the encoder on an image (or a crop of one): preprocess → image_embeddings (SAM 2: its three features). */
export async function embedImage(model: SamModel, image: RgbImage): Promise<ImageState> {
  return encodeImage(await model.encoder(), image);
}

/** embedImage with a loaded encoder, its preprocessing (by the encoder's family) and encoder call timed in `timings`. */
export async function encodeImage(encoder: EncoderSession, image: RgbImage, timings = new StageTimes()): Promise<ImageState> {
  const originalSize: Size = [image.height, image.width];
  if (encoder.family === 'sam2') {
    const input = timings.timeSync('preprocess', () => preprocessSam2(image));
    const { embeddings, highResFeats } = await timings.time('encoder', () => encoder.runSam2(input));
    return { embeddings, highResFeats, originalSize, inputSize: [IMAGE_SIZE, IMAGE_SIZE] };
  }
  const { tensor, inputSize } = await timings.time('preprocess', () => preprocess(image));
  const embeddings = await timings.time('encoder', () => encoder.run(tensor));
  return { embeddings, originalSize, inputSize };
}

/** Check that an embedding file belongs to this model and image before using it. */
export async function imageStateFromEmbedding(model: SamModel, rec: EmbeddingRecord, file: string, imageSize: Size): Promise<ImageState> {
  const id = await model.id();
  const recFamily = rec.family ?? 'sam';
  if (recFamily !== model.family) {
    const name = (f: string): string => (f === 'sam2' ? 'SAM 2' : 'SAM (v1 / MobileSAM)');
    throw inputError(
      `${file}: embedding was made by a ${name(recFamily)} model ('${rec.modelId}') and this --model is a ${name(model.family)} model ('${id}'); their embeddings differ in kind: rerun 'sam embed' with this --model, or pass the --model it was made with`,
    );
  }
  if (rec.modelId !== id) {
    // The int8 and float conversions of one checkpoint differ only by the id's suffix.
    const int8 = (m: string): boolean => m.endsWith(INT8_MODEL_ID_SUFFIX);
    const float = (m: string): string => (int8(m) ? m.slice(0, -INT8_MODEL_ID_SUFFIX.length) : m);
    if (int8(rec.modelId) !== int8(id) && float(rec.modelId) === float(id)) {
      const [made, given] = int8(rec.modelId) ? ['the int8-quantized', 'float'] : ['the float', 'int8-quantized'];
      throw inputError(
        `${file}: embedding was made by ${made} model '${rec.modelId}' and this --model is its ${given} conversion '${id}'; pass the --model it was made with, or rerun 'sam embed' with this one`,
      );
    }
    throw inputError(`${file}: embedding was made by model '${rec.modelId}', not '${id}'; rerun 'sam embed' with this --model or drop --embedding`);
  }
  if (rec.originalSize[0] !== imageSize[0] || rec.originalSize[1] !== imageSize[1]) {
    throw inputError(
      `${file}: embedding is for a ${rec.originalSize[1]}x${rec.originalSize[0]} image, this image is ${imageSize[1]}x${imageSize[0]}; rerun 'sam embed' on this image or drop --embedding`,
    );
  }
  return { embeddings: rec.embeddings, originalSize: rec.originalSize, inputSize: rec.inputSize, ...(rec.highResFeats ? { highResFeats: rec.highResFeats } : {}) };
}

/** Why a prompt cannot be decoded on an image of this size (outside it, an empty box, nothing), or undefined. */
export function promptProblem(prompt: Prompt, [h, w]: Size): string | undefined {
  const inside = (x: number, y: number) => Number.isFinite(x) && Number.isFinite(y) && x >= 0 && y >= 0 && x <= w && y <= h;
  for (const p of prompt.points ?? []) {
    if (!inside(p.x, p.y)) return `point ${p.x},${p.y} is outside the ${w}x${h} image; give x in 0..${w} and y in 0..${h}`;
  }
  if (prompt.box) {
    const [x0, y0, x1, y1] = prompt.box;
    if (!inside(x0, y0) || !inside(x1, y1)) return `box ${prompt.box.join(',')} is outside the ${w}x${h} image; clip it to 0,0,${w},${h}`;
    if (!(x1 > x0 && y1 > y0)) return `box ${prompt.box.join(',')} is empty; give x0,y0,x1,y1 with x1 > x0 and y1 > y0`;
  }
  if ((prompt.points ?? []).length === 0 && !prompt.box && !prompt.maskInput) return 'no prompt; give --points, --box or --mask-input';
  return undefined;
}

/**
 * The decoder's point_coords [N, 2] (in the 1024 frame) and point_labels [N] of one prompt, as
 * SamPredictor.predict builds them: points, then the box corners (labels 2, 3); without a box one
 * padding point (0, 0) with label −1, left untransformed.
 */
export function promptArrays(prompt: Pick<Prompt, 'points' | 'box'>, originalSize: Size): { coords: Float32Array; labels: Float32Array } {
  const points = prompt.points ?? [];
  const n = points.length + (prompt.box ? 2 : 1);
  const coords = new Float32Array(n * 2);
  const labels = new Float32Array(n);
  points.forEach((p, i) => {
    coords[2 * i] = p.x;
    coords[2 * i + 1] = p.y;
    labels[i] = p.label;
  });
  const k = points.length;
  if (prompt.box) {
    coords.set(prompt.box, 2 * k);
    labels[k] = LABEL.boxTopLeft;
    labels[k + 1] = LABEL.boxBottomRight;
  } else {
    labels[k] = LABEL.padding;
  }
  const real = prompt.box ? n : n - 1;
  coords.set(applyCoords(coords.subarray(0, 2 * real), originalSize), 0);
  return { coords, labels };
}

/**
 * Prompted prediction, as SamPredictor.predict with the ONNX decoder: points then box corners
 * (labels 2, 3); without a box one padding point (0, 0) with label −1 is appended.
 */
export class SamPredictor {
  private readonly embeddings: ort.Tensor;
  constructor(
    private readonly decoder: DecoderSession,
    readonly state: ImageState,
  ) {
    this.embeddings = new ort.Tensor('float32', state.embeddings, [...EMBEDDING_DIMS]);
  }

  async predict(prompt: Prompt, multimask: boolean): Promise<Prediction> {
    const [h, w] = this.state.originalSize;
    const bad = promptProblem(prompt, this.state.originalSize);
    if (bad) throw inputError(bad);

    const { coords, labels } = promptArrays(prompt, this.state.originalSize);
    const n = labels.length;

    // The official export crops its 1024² upscale to round(side * 1024 / long side), which is 0 for
    // a side under 1/2048 of the other (e.g. 20000x3); ORT's Resize then fails. Such images get
    // input size 1 on that side (core/transforms.ts), and the upscale runs here instead.
    const longSide = Math.max(h, w);
    const inGraph = Math.floor((h * IMAGE_SIZE) / longSide + 0.5) > 0 && Math.floor((w * IMAGE_SIZE) / longSide + 0.5) > 0;
    const res = await this.decoder.run(
      { embeddings: this.embeddings, pointCoords: coords, pointLabels: labels, batch: 1, numPoints: n, maskInput: prompt.maskInput, origSize: inGraph ? [h, w] : [1, 1] },
      inGraph ? ['masks', 'low_res_masks'] : ['low_res_masks'],
    );
    // Default export: mask 0 is the single-mask output, 1..3 the multimask outputs.
    const m = res.numMasks;
    const [first, count] = m === 1 ? [0, 1] : multimask ? [1, m - 1] : [0, 1];
    const plane = h * w;
    const low = LOW_RES_LENGTH;
    let masks: Float32Array;
    if (inGraph) {
      masks = res.masks!.slice(first * plane, (first + count) * plane);
    } else {
      const upscale = createUpscaler(this.state.inputSize, [h, w]);
      masks = new Float32Array(count * plane);
      for (let i = 0; i < count; i++) upscale(res.lowResMasks!.subarray((first + i) * low, (first + i + 1) * low), masks.subarray(i * plane, (i + 1) * plane));
    }
    return {
      masks,
      iouPredictions: res.iouPredictions.slice(first, first + count),
      lowResMasks: res.lowResMasks!.slice(first * low, (first + count) * low),
      count,
      size: [h, w],
    };
  }
}
