/**
 * SAM 2's multimask decoder split in three graphs (src/convert/sam2-decoder.ts
 * buildSam2DecoderSplit), for automatic mask generation's point prompts without mask input:
 *
 *   image side   image_embed [1,256,64,64], high_res_feats_0 [1,32,256,256], high_res_feats_1 [1,64,128,128]
 *                → feats1_rows [1,16384,64], feats0_rows [1,65536,32], src and the other
 *                  prompt-independent tensors the prompt side takes (once per crop)
 *   prompt side  those + point_coords [B,N,2] + point_labels [B,N] (no padding point)
 *                → iou_predictions [B,3], transformer_src [B,4096,256], hyper_in [B,3,32]
 *   mask side    transformer_src, hyper_in (rows that pass the IoU filter) + feats1_rows, feats0_rows
 *                → masks [B,3,256,256] (clamped to ±32)
 *
 * Together they give the plain multimask graph's masks and IoUs (max difference 1e-6 on the golden
 * cases), with output upscaling (~0.4 of ~1.5 GMAC a prompt) only for the prompts the generator keeps.
 */
import * as ort from 'onnxruntime-node';
import { LOW_RES_LENGTH } from '../core/constants.js';
import { modelError } from '../util/errors.js';
import { gatherRows } from './split-decoder.js';

/** manifest.json "sam2SplitDecoder": the three files, relative to the model folder. */
export interface Sam2SplitDecoderFiles {
  image: string;
  /** The multimask prompt side (tokens 1..3). */
  prompt: string;
  masks: string;
  /** The single-mask prompt side (token 0), for box-to-mask; absent in folders of older converters. */
  promptSingle?: string;
}

/** The graphs' input / output names (sam2-decoder.ts SAM2_SPLIT_DECODER_IO). */
const IO = {
  image: { inputs: ['image_embed', 'high_res_feats_0', 'high_res_feats_1'], outputs: ['feats1_rows', 'feats0_rows', 'src'] },
  prompt: { inputs: ['src', 'point_coords', 'point_labels'], outputs: ['iou_predictions', 'transformer_src', 'hyper_in'] },
  masks: { inputs: ['transformer_src', 'hyper_in', 'feats1_rows', 'feats0_rows'], outputs: ['masks'] },
} as const;

/** The image side's outputs: feats1_rows and feats0_rows for the mask side, the others (src, …) for the prompt side. */
export type Sam2SplitImageSide = Readonly<Record<string, ort.Tensor>>;

export interface Sam2SplitStage1 {
  /** [B, M] */
  iouPredictions: Float32Array;
  numMasks: number;
  batch: number;
  transformerSrc: ort.Tensor;
  hyperIn: ort.Tensor;
}

const fix = "convert the checkpoint again with 'sam models convert', or remove \"sam2SplitDecoder\" from manifest.json";

export class Sam2SplitDecoderSession {
  private constructor(
    readonly files: Sam2SplitDecoderFiles,
    private readonly image: ort.InferenceSession,
    private readonly prompt: ort.InferenceSession,
    private readonly masks: ort.InferenceSession,
    private readonly promptSingle: ort.InferenceSession | undefined,
  ) {}

  /** Check the sessions' names against the contract. */
  static create(
    files: Sam2SplitDecoderFiles,
    image: ort.InferenceSession,
    prompt: ort.InferenceSession,
    masks: ort.InferenceSession,
    promptSingle?: ort.InferenceSession,
  ): Sam2SplitDecoderSession {
    const sides: [string, keyof typeof IO, ort.InferenceSession][] = [[files.image, 'image', image], [files.prompt, 'prompt', prompt], [files.masks, 'masks', masks]];
    if (promptSingle) sides.push([files.promptSingle ?? 'promptSingle', 'prompt', promptSingle]);
    for (const [file, side, s] of sides) {
      for (const [kind, want, have] of [['input', IO[side].inputs, s.inputNames], ['output', IO[side].outputs, s.outputNames]] as const) {
        const missing = want.filter((n) => !have.includes(n));
        if (missing.length > 0) throw modelError(`${file}: SAM 2 split decoder ${kind}s ${missing.join(', ')} missing (has ${have.join(', ') || 'none'}); ${fix}`);
      }
    }
    return new Sam2SplitDecoderSession(files, image, prompt, masks, promptSingle);
  }

  /** Whether the single-mask prompt side is there (promptSide(…, false)). */
  get hasSingleMask(): boolean {
    return this.promptSingle !== undefined;
  }

  /** Once per crop, from the encoder's three features. */
  async imageSide(features: Readonly<Record<'image_embed' | 'high_res_feats_0' | 'high_res_feats_1', ort.Tensor>>): Promise<Sam2SplitImageSide> {
    return this.image.run({ ...features });
  }

  /**
   * IoUs of B prompts of N points (1024 frame, no padding point) and what the mask side needs:
   * M = 3 (tokens 1..3) or, with `multimask` false, M = 1 (token 0).
   */
  async promptSide(image: Sam2SplitImageSide, pointCoords: Float32Array, pointLabels: Float32Array, batch: number, numPoints: number, multimask = true): Promise<Sam2SplitStage1> {
    const session = multimask ? this.prompt : this.promptSingle;
    if (!session) throw modelError(`${this.files.prompt}: this SAM 2 split decoder has no single-mask prompt side; ${fix}`);
    const imageInputs: Record<string, ort.Tensor> = {};
    for (const n of session.inputNames) if (n !== 'point_coords' && n !== 'point_labels') imageInputs[n] = image[n];
    const out = await session.run({
      ...imageInputs,
      point_coords: new ort.Tensor('float32', pointCoords, [batch, numPoints, 2]),
      point_labels: new ort.Tensor('float32', pointLabels, [batch, numPoints]),
    });
    const iou = out.iou_predictions;
    if (iou.dims.length !== 2 || iou.dims[0] !== batch) throw modelError(`${this.files.prompt}: iou_predictions should be [${batch},M] but is [${iou.dims.join(',')}]; ${fix}`);
    return { iouPredictions: iou.data as Float32Array, numMasks: iou.dims[1], batch, transformerSrc: out.transformer_src, hyperIn: out.hyper_in };
  }

  /**
   * Low-res logits [picks, 1, 256, 256] of one mask per prompt: prompt rows[i]'s mask cols[i]
   * (hyper_in has a dynamic mask count, so only the chosen masks are upscaled).
   */
  async chosenMasks(image: Sam2SplitImageSide, stage1: Sam2SplitStage1, rows: Int32Array, cols: Int32Array): Promise<Float32Array> {
    if (rows.length === 0) return new Float32Array(0);
    const m = stage1.numMasks;
    const hyperAll = stage1.hyperIn.data as Float32Array;
    const ch = stage1.hyperIn.dims[2];
    const hyper = new Float32Array(rows.length * ch);
    for (let i = 0; i < rows.length; i++) hyper.set(hyperAll.subarray((rows[i] * m + cols[i]) * ch, (rows[i] * m + cols[i] + 1) * ch), i * ch);
    const out = await this.masks.run({
      transformer_src: rows.length === stage1.batch && rows.every((r, i) => r === i) ? stage1.transformerSrc : gatherRows(stage1.transformerSrc, rows),
      hyper_in: new ort.Tensor('float32', hyper, [rows.length, 1, ch]),
      feats1_rows: image.feats1_rows,
      feats0_rows: image.feats0_rows,
    });
    const masks = out.masks;
    if (masks.size !== rows.length * LOW_RES_LENGTH) throw modelError(`${this.files.masks}: masks should be [${rows.length},1,256,256] but is [${masks.dims.join(',')}]; ${fix}`);
    return masks.data as Float32Array;
  }

  /** Low-res logits [rows.length, M, 256, 256] of prompts `rows` of a prompt-side result. */
  async maskSide(image: Sam2SplitImageSide, stage1: Sam2SplitStage1, rows: Int32Array): Promise<Float32Array> {
    if (rows.length === 0) return new Float32Array(0);
    const all = rows.length === stage1.batch;
    const out = await this.masks.run({
      transformer_src: all ? stage1.transformerSrc : gatherRows(stage1.transformerSrc, rows),
      hyper_in: all ? stage1.hyperIn : gatherRows(stage1.hyperIn, rows),
      feats1_rows: image.feats1_rows,
      feats0_rows: image.feats0_rows,
    });
    const m = out.masks;
    if (m.dims.length !== 4 || m.dims[0] !== rows.length || m.size !== rows.length * stage1.numMasks * LOW_RES_LENGTH) {
      throw modelError(`${this.files.masks}: masks should be [${rows.length},${stage1.numMasks},256,256] but is [${m.dims.join(',')}]; ${fix}`);
    }
    return m.data as Float32Array;
  }
}
