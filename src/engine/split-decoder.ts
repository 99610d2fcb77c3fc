/**
 * The split decoder of `sam models convert` (src/convert/sam-decoder-split.ts): three ONNX graphs
 * that together give the batched decoder's iou_predictions and low_res_masks for prompts without
 * a mask input, doing the prompt-independent work once per crop and the mask work only for the
 * prompts that need it.
 *
 *   image side   image_embeddings [1,256,64,64] → image-side tensors (any names)
 *   prompt side  image-side tensors + point_coords [B,N,2] + point_labels [B,N]
 *                → iou_predictions [B,M] + the mask side's inputs, each [B, …]
 *   mask side    rows of those → low_res_masks [B,M,256,256]
 *
 * The engine wires the graphs together by tensor name, so the contract is only those names and
 * the leading batch dimension (the fixture oracle implements it with its own intermediates).
 */
import * as ort from 'onnxruntime-node';
import { LOW_RES_LENGTH } from '../core/constants.js';
import { modelError } from '../util/errors.js';

/** manifest.json "splitDecoder": the three files, relative to the model folder. */
export interface SplitDecoderFiles {
  image: string;
  prompt: string;
  masks: string;
}

export type SplitImageSide = Readonly<Record<string, ort.Tensor>>;

export interface SplitStage1 {
  /** [B, M] */
  iouPredictions: Float32Array;
  numMasks: number;
  batch: number;
  /** The mask side's inputs, each [B, …]. */
  carry: Readonly<Record<string, ort.Tensor>>;
}

const fix = 'convert the model again with `sam models convert`, or remove "splitDecoder" from manifest.json';

/** Rows `rows` of a [B, …] tensor as a new [rows.length, …] tensor. */
export function gatherRows(t: ort.Tensor, rows: Int32Array): ort.Tensor {
  const per = t.dims.slice(1).reduce((a, d) => a * d, 1);
  const src = t.data as Float32Array;
  const out = new Float32Array(rows.length * per);
  for (let i = 0; i < rows.length; i++) out.set(src.subarray(rows[i] * per, (rows[i] + 1) * per), i * per);
  return new ort.Tensor('float32', out, [rows.length, ...t.dims.slice(1)]);
}

export class SplitDecoderSession {
  private constructor(
    readonly files: SplitDecoderFiles,
    private readonly image: ort.InferenceSession,
    private readonly prompt: ort.InferenceSession,
    private readonly masks: ort.InferenceSession,
  ) {}

  /** Check that the three sessions fit together (names only; shapes are checked on use). */
  static create(files: SplitDecoderFiles, image: ort.InferenceSession, prompt: ort.InferenceSession, masks: ort.InferenceSession): SplitDecoderSession {
    const need = (file: string, have: readonly string[], want: readonly string[], kind: string): void => {
      const missing = want.filter((n) => !have.includes(n));
      if (missing.length > 0) throw modelError(`${file}: split decoder ${kind} ${missing.join(', ')} missing (has ${have.join(', ') || 'none'}); ${fix}`);
    };
    need(files.image, image.inputNames, ['image_embeddings'], 'input');
    const promptImageInputs = prompt.inputNames.filter((n) => n !== 'point_coords' && n !== 'point_labels');
    need(files.prompt, prompt.inputNames, ['point_coords', 'point_labels'], 'input');
    need(files.image, image.outputNames, promptImageInputs, 'output (an input of the prompt side)');
    need(files.prompt, prompt.outputNames, ['iou_predictions', ...masks.inputNames], 'output');
    need(files.masks, masks.outputNames, ['low_res_masks'], 'output');
    return new SplitDecoderSession(files, image, prompt, masks);
  }

  /** Once per crop embedding [1,256,64,64]. */
  async imageSide(embeddings: ort.Tensor): Promise<SplitImageSide> {
    const wanted = this.prompt.inputNames.filter((n) => n !== 'point_coords' && n !== 'point_labels');
    return this.image.run({ image_embeddings: embeddings }, wanted);
  }

  /** Stage 1 for B prompts of N points: IoU predictions and what stage 2 needs. */
  async promptSide(image: SplitImageSide, pointCoords: Float32Array, pointLabels: Float32Array, batch: number, numPoints: number): Promise<SplitStage1> {
    const out = await this.prompt.run({
      ...image,
      point_coords: new ort.Tensor('float32', pointCoords, [batch, numPoints, 2]),
      point_labels: new ort.Tensor('float32', pointLabels, [batch, numPoints]),
    });
    const iou = out.iou_predictions;
    if (iou.dims.length !== 2 || iou.dims[0] !== batch) {
      throw modelError(`${this.files.prompt}: iou_predictions should be [${batch},M] but is [${iou.dims.join(',')}]; ${fix}`);
    }
    const carry: Record<string, ort.Tensor> = {};
    for (const n of this.masks.inputNames) carry[n] = out[n];
    return { iouPredictions: iou.data as Float32Array, numMasks: iou.dims[1], batch, carry };
  }

  /** Stage 2 for prompts `rows` of a stage-1 result: low_res_masks [rows.length, M, 256, 256]. */
  async maskSide(stage1: SplitStage1, rows: Int32Array): Promise<Float32Array> {
    if (rows.length === 0) return new Float32Array(0);
    const all = rows.length === stage1.batch;
    const feeds: Record<string, ort.Tensor> = {};
    for (const [n, t] of Object.entries(stage1.carry)) feeds[n] = all ? t : gatherRows(t, rows);
    const low = (await this.masks.run(feeds, ['low_res_masks'])).low_res_masks;
    if (low.dims.length !== 4 || low.dims[0] !== rows.length || low.dims[1] !== stage1.numMasks || low.size !== rows.length * stage1.numMasks * LOW_RES_LENGTH) {
      throw modelError(`${this.files.masks}: low_res_masks should be [${rows.length},${stage1.numMasks},256,256] but is [${low.dims.join(',')}]; ${fix}`);
    }
    return low.data as Float32Array;
  }
}
