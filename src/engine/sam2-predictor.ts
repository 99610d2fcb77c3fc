/**
 * Prompted prediction with a SAM 2 model, as SAM2ImagePredictor.predict: prompts go to the 1024
 * frame with separate x and y scales (the image was resized to a square), box corners come before
 * the clicks and no padding point is passed (the decoder graph appends it, as SAM 2's prompt
 * encoder always does); low-res masks are upscaled straight to the image size and thresholded at 0.
 */
import * as ort from 'onnxruntime-node';
import { EMBEDDING_DIMS, IMAGE_SIZE, LOW_RES_LENGTH, LOW_RES_SIDE } from '../core/constants.js';
import { fillHolesAndSprinkles } from '../core/masks.js';
import type { Size } from '../core/types.js';
import { createSam2Upscaler } from '../core/upscale.js';
import { SAM2_HIGH_RES_DIMS } from '../io/embedding-file.js';
import { inputError, modelError } from '../util/errors.js';
import { LABEL, promptProblem, type ImageState, type Prediction, type Prompt } from './predictor.js';
import type { SamModel, Sam2DecoderSession } from './model.js';

/** point_coords [N, 2] in the 1024 frame and point_labels [N]: box corners (labels 2, 3), then the points. */
export function sam2PromptArrays(prompt: Pick<Prompt, 'points' | 'box'>, [h, w]: Size): { coords: Float32Array; labels: Float32Array } {
  const f = Math.fround;
  const points = prompt.points ?? [];
  const n = points.length + (prompt.box ? 2 : 0);
  const coords = new Float32Array(n * 2);
  const labels = new Float32Array(n);
  let k = 0;
  const put = (x: number, y: number, label: number): void => {
    // SAM2Transforms.transform_coords: x / w then * resolution, in float32.
    coords[2 * k] = f(f(f(x) / w) * IMAGE_SIZE);
    coords[2 * k + 1] = f(f(f(y) / h) * IMAGE_SIZE);
    labels[k++] = label;
  };
  if (prompt.box) {
    const [x0, y0, x1, y1] = prompt.box;
    put(x0, y0, LABEL.boxTopLeft);
    put(x1, y1, LABEL.boxBottomRight);
  }
  for (const p of points) put(p.x, p.y, p.label);
  return { coords, labels };
}

/** SAM2ImagePredictor's max_hole_area / max_sprinkle_area (pixels of the 256x256 logits; 0: off). */
export interface Sam2MaskFill {
  maxHoleArea: number;
  maxSprinkleArea: number;
}

/** postprocess_masks' hole filling and sprinkle removal on one mask's low-res logits (mask threshold 0). */
export function fillSam2Mask(low: Float32Array, fill: Sam2MaskFill): Float32Array {
  return fillHolesAndSprinkles(low, LOW_RES_SIDE, LOW_RES_SIDE, fill.maxHoleArea, fill.maxSprinkleArea, 0);
}

export class Sam2Predictor {
  private readonly feeds: Record<string, ort.Tensor>;
  constructor(
    private readonly decoder: Sam2DecoderSession,
    readonly state: ImageState,
  ) {
    if (!state.highResFeats) throw modelError('internal: a SAM 2 prediction needs the high-res features of the image');
    this.feeds = {
      image_embed: new ort.Tensor('float32', state.embeddings, [...EMBEDDING_DIMS]),
      high_res_feats_0: new ort.Tensor('float32', state.highResFeats[0], [...SAM2_HIGH_RES_DIMS[0]]),
      high_res_feats_1: new ort.Tensor('float32', state.highResFeats[1], [...SAM2_HIGH_RES_DIMS[1]]),
    };
  }

  /**
   * The masks of the decoder this predictor was given: 3 from the multimask graph, 1 from the
   * single-mask graph. `fill`: SAM2ImagePredictor's max_hole_area / max_sprinkle_area, applied to
   * the low-res logits before upscaling (the returned lowResMasks stay unfilled, as there).
   */
  async predict(prompt: Prompt, fill?: Sam2MaskFill): Promise<Prediction> {
    const size = this.state.originalSize;
    const bad = promptProblem(prompt, size);
    if (bad) throw inputError(bad);
    const { coords, labels } = sam2PromptArrays(prompt, size);
    const res = await this.decoder.run(this.feeds, coords, labels, 1, labels.length, prompt.maskInput);
    const [h, w] = size;
    const count = res.numMasks;
    const upscale = createSam2Upscaler(size);
    const masks = new Float32Array(count * h * w);
    for (let i = 0; i < count; i++) {
      const low = res.lowResMasks.subarray(i * LOW_RES_LENGTH, (i + 1) * LOW_RES_LENGTH);
      upscale(fill ? fillSam2Mask(low, fill) : low, masks.subarray(i * h * w, (i + 1) * h * w));
    }
    return { masks, iouPredictions: res.iouPredictions, lowResMasks: res.lowResMasks, count, size: [h, w] };
  }
}

/**
 * The mask with the highest predicted IoU of a multimask prediction, alone: what a folder without
 * SAM 2's single-mask decoder (samexporter's export) answers for a single-mask request, as
 * samexporter's own inference does. SAM2ImagePredictor would return mask token 0 instead.
 */
export function bestMaskOf(p: Prediction): Prediction {
  let best = 0;
  for (let i = 1; i < p.count; i++) if (p.iouPredictions[i] > p.iouPredictions[best]) best = i;
  const [h, w] = p.size;
  return {
    masks: p.masks.slice(best * h * w, (best + 1) * h * w),
    iouPredictions: p.iouPredictions.slice(best, best + 1),
    lowResMasks: p.lowResMasks.slice(best * LOW_RES_LENGTH, (best + 1) * LOW_RES_LENGTH),
    count: 1,
    size: p.size,
  };
}

/**
 * One SAM 2 prediction through the graph of the output kind asked for. A folder without the
 * single-mask graph (samexporter's) answers a single-mask request with bestMaskOf the multimask
 * graph's masks (`bestOfMultimask`: the caller says so).
 */
export async function predictSam2(
  model: SamModel,
  state: ImageState,
  prompt: Prompt,
  multimask: boolean,
  fill?: Sam2MaskFill,
): Promise<{ prediction: Prediction; bestOfMultimask: boolean }> {
  if (multimask || model.hasSam2SingleMaskDecoder) return { prediction: await new Sam2Predictor(await model.sam2Decoder(multimask), state).predict(prompt, fill), bestOfMultimask: false };
  return { prediction: bestMaskOf(await new Sam2Predictor(await model.sam2Decoder(true), state).predict(prompt, fill)), bestOfMultimask: true };
}
