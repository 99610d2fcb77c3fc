/**
 * SamAutomaticMaskGenerator (segment_anything/automatic_mask_generator.py, SAM v1) on typed
 * arrays. The model is reached only through AmgPredictor, so this file has no I/O.
 *
 * Differences of mechanism, not of result, from the reference:
 * - low-res logits are upscaled only for masks that pass the predicted-IoU filter;
 * - stability score, binarization, area and box come from one pass over each mask's logits;
 * - masks become RLE straight from the crop-sized mask (no full-image mask is built), so memory
 *   holds one batch's logits plus RLEs, not a tensor per mask.
 */
import { buildAllLayerPointGrids, generateCropBoxes } from './grid.js';
import { LOW_RES_LENGTH } from '../core/constants.js';
import { boxXyxyToXywh, isBoxNearCropEdge, maskLogitStats, maskToBox, removeSmallRegions, uncropBoxesXyxy, uncropPoints } from '../core/masks.js';
import { batchedNms } from '../core/nms.js';
import { createUpscaler } from '../core/upscale.js';
import { decodeRle, maskToRleUncompressed, maskToRleUncompressedInCrop, rleArea } from '../core/rle.js';
import { StageTimes } from '../core/timings.js';
import type { BoxXyxy, MaskRecord, Size, UncompressedRle } from '../core/types.js';
import type { AmgPredictor } from './predictor.js';

export interface AmgOptions {
  /** Points per side of the grid; null when pointGrids is given. */
  pointsPerSide: number | null;
  pointsPerBatch: number;
  predIouThresh: number;
  stabilityScoreThresh: number;
  stabilityScoreOffset: number;
  boxNmsThresh: number;
  cropNLayers: number;
  cropNmsThresh: number;
  cropOverlapRatio: number;
  cropNPointsDownscaleFactor: number;
  /** Explicit normalized grids, one Float64Array [n, 2] per crop layer (overrides pointsPerSide). */
  pointGrids: Float64Array[] | null;
  minMaskRegionArea: number;
}

/** The reference's defaults (and scripts/amg.py's). */
export const AMG_DEFAULTS: Readonly<AmgOptions> = {
  pointsPerSide: 32,
  pointsPerBatch: 64,
  predIouThresh: 0.88,
  stabilityScoreThresh: 0.95,
  stabilityScoreOffset: 1.0,
  boxNmsThresh: 0.7,
  cropNLayers: 0,
  cropNmsThresh: 0.7,
  cropOverlapRatio: 512 / 1500,
  cropNPointsDownscaleFactor: 1,
  pointGrids: null,
  minMaskRegionArea: 0,
};

/** SAM's mask_threshold: logits > 0 are mask. */
const MASK_THRESHOLD = 0.0;

/** MaskData of the reference, one entry per mask, in struct-of-arrays form. */
interface MaskSet {
  rles: UncompressedRle[];
  /** XYXY, inclusive max. */
  boxes: BoxXyxy[];
  iouPreds: number[];
  points: [number, number][];
  stabilityScores: number[];
  cropBoxes: BoxXyxy[];
}

const emptySet = (): MaskSet => ({ rles: [], boxes: [], iouPreds: [], points: [], stabilityScores: [], cropBoxes: [] });

function pick(set: MaskSet, keep: readonly number[]): MaskSet {
  return {
    rles: keep.map((i) => set.rles[i]),
    boxes: keep.map((i) => set.boxes[i]),
    iouPreds: keep.map((i) => set.iouPreds[i]),
    points: keep.map((i) => set.points[i]),
    stabilityScores: keep.map((i) => set.stabilityScores[i]),
    cropBoxes: keep.map((i) => set.cropBoxes[i]),
  };
}

function cat(into: MaskSet, from: MaskSet): void {
  into.rles.push(...from.rles);
  into.boxes.push(...from.boxes);
  into.iouPreds.push(...from.iouPreds);
  into.points.push(...from.points);
  into.stabilityScores.push(...from.stabilityScores);
  into.cropBoxes.push(...from.cropBoxes);
}

/** torchvision batched_nms with one category, on XYXY boxes. */
function nmsKeep(boxes: readonly BoxXyxy[], scores: ArrayLike<number>, iouThreshold: number): number[] {
  const flat = new Float32Array(boxes.length * 4);
  boxes.forEach((b, i) => flat.set(b, i * 4));
  return batchedNms(flat, scores, new Int32Array(boxes.length), iouThreshold);
}

const boxArea = (b: BoxXyxy): number => (b[2] - b[0]) * (b[3] - b[1]);

export function resolveAmgOptions(options: Partial<AmgOptions>): AmgOptions {
  const o: AmgOptions = { ...AMG_DEFAULTS, ...options };
  if ((o.pointsPerSide === null) === (o.pointGrids === null)) {
    throw new Error('Exactly one of pointsPerSide or pointGrids must be provided.');
  }
  if (o.pointGrids && o.pointGrids.length !== o.cropNLayers + 1) {
    throw new Error(`pointGrids has ${o.pointGrids.length} grid(s) but cropNLayers ${o.cropNLayers} needs ${o.cropNLayers + 1}`);
  }
  return o;
}

export class SamAutomaticMaskGenerator {
  readonly options: AmgOptions;
  private readonly pointGrids: Float64Array[];

  constructor(
    private readonly predictor: AmgPredictor,
    options: Partial<AmgOptions> = {},
  ) {
    this.options = resolveAmgOptions(options);
    this.pointGrids =
      this.options.pointGrids ??
      buildAllLayerPointGrids(this.options.pointsPerSide!, this.options.cropNLayers, this.options.cropNPointsDownscaleFactor);
  }

  /** All masks of the image the predictor holds, as mask records with uncompressed RLE. */
  async generate(origSize: Size, timings = new StageTimes()): Promise<MaskRecord<UncompressedRle>[]> {
    let data = await this.generateMasks(origSize, timings);
    if (this.options.minMaskRegionArea > 0) {
      data = timings.timeSync('postprocess', () =>
        postprocessSmallRegions(data, this.options.minMaskRegionArea, Math.max(this.options.boxNmsThresh, this.options.cropNmsThresh)),
      );
    }
    return data.rles.map((rle, i) => ({
      segmentation: rle,
      area: rleArea(rle),
      bbox: boxXyxyToXywh(data.boxes[i]),
      predicted_iou: data.iouPreds[i],
      point_coords: [data.points[i]],
      stability_score: data.stabilityScores[i],
      crop_box: boxXyxyToXywh(data.cropBoxes[i]),
    }));
  }

  private async generateMasks(origSize: Size, timings: StageTimes): Promise<MaskSet> {
    const { cropBoxes, layerIdxs } = generateCropBoxes(origSize, this.options.cropNLayers, this.options.cropOverlapRatio);
    const data = emptySet();
    for (let i = 0; i < cropBoxes.length; i++) {
      cat(data, await this.processCrop(cropBoxes[i], layerIdxs[i], origSize, timings));
    }
    if (cropBoxes.length > 1) {
      // Remove duplicates between crops: smaller crops win (score 1 / crop area).
      const scores = new Float32Array(data.cropBoxes.map((b) => 1 / boxArea(b)));
      const keep = timings.timeSync('nms', () => nmsKeep(data.boxes, scores, this.options.cropNmsThresh));
      return pick(data, keep);
    }
    return data;
  }

  private async processCrop(cropBox: BoxXyxy, layerIdx: number, origSize: Size, timings: StageTimes): Promise<MaskSet> {
    const { cropSize, inputSize } = await this.predictor.setCrop(cropBox);
    const [cropH, cropW] = cropSize;
    // points_for_image = grid * [w, h], in crop pixels.
    const grid = this.pointGrids[layerIdx];
    const pointsForImage = new Float64Array(grid.length);
    for (let i = 0; i < grid.length; i += 2) {
      pointsForImage[i] = grid[i] * cropW;
      pointsForImage[i + 1] = grid[i + 1] * cropH;
    }
    const upscale = createUpscaler(inputSize, cropSize);
    const ctx: BatchContext = {
      cropBox,
      cropSize,
      origSize,
      upscale,
      logits: new Float32Array(cropH * cropW),
      mask: new Uint8Array(cropH * cropW),
    };
    const data = emptySet();
    const perBatch = this.options.pointsPerBatch * 2;
    for (let start = 0; start < pointsForImage.length; start += perBatch) {
      const points = pointsForImage.subarray(start, Math.min(start + perBatch, pointsForImage.length));
      cat(data, await this.processBatch(points, ctx, timings));
    }
    // Remove duplicates within this crop (boxes still in crop coordinates, as the reference).
    const keep = timings.timeSync('nms', () => nmsKeep(data.boxes, data.iouPreds, this.options.boxNmsThresh));
    const kept = pick(data, keep);
    kept.boxes = kept.boxes.map((b) => uncropBoxesXyxy(b, cropBox));
    kept.points = kept.points.map((p) => uncropPoints(p, cropBox));
    return kept;
  }

  private async processBatch(points: Float64Array, ctx: BatchContext, timings: StageTimes): Promise<MaskSet> {
    const { cropBox, cropSize, origSize } = ctx;
    const [cropH, cropW] = cropSize;
    const nPoints = points.length / 2;
    // The predictor maps crop pixels to the 1024 frame itself; hand it float32 crop pixels.
    const { lowResLogits, iouPredictions, masksPerPoint } = await this.predictor.predictPoints(Float32Array.from(points));
    const data = emptySet();
    const lowLen = LOW_RES_LENGTH;
    const o = this.options;
    // torch compares a float32 tensor with a Python float in float32: round the thresholds too.
    const iouThresh = Math.fround(o.predIouThresh);
    const stabilityThresh = Math.fround(o.stabilityScoreThresh);
    const origBox: BoxXyxy = [0, 0, origSize[1], origSize[0]];
    for (let p = 0; p < nPoints; p++) {
      for (let k = 0; k < masksPerPoint; k++) {
        const m = p * masksPerPoint + k;
        const iou = iouPredictions[m];
        if (o.predIouThresh > 0 && !(iou > iouThresh)) continue;
        const t0 = performance.now();
        ctx.upscale(lowResLogits.subarray(m * lowLen, (m + 1) * lowLen), ctx.logits);
        const stats = maskLogitStats(ctx.logits, 0, cropH, cropW, MASK_THRESHOLD, o.stabilityScoreOffset, ctx.mask);
        const keep =
          (o.stabilityScoreThresh <= 0 || stats.stabilityScore >= stabilityThresh) &&
          !isBoxNearCropEdge(stats.box, cropBox, origBox);
        timings.add('postprocess', performance.now() - t0);
        if (!keep) continue;
        const rle = timings.timeSync('rle', () => maskToRleUncompressedInCrop({ data: ctx.mask, h: cropH, w: cropW }, cropBox, origSize));
        data.rles.push(rle);
        data.boxes.push(stats.box);
        data.iouPreds.push(iou);
        data.points.push([points[2 * p], points[2 * p + 1]]);
        data.stabilityScores.push(stats.stabilityScore);
        data.cropBoxes.push(cropBox);
      }
    }
    return data;
  }
}

interface BatchContext {
  cropBox: BoxXyxy;
  cropSize: Size;
  origSize: Size;
  upscale: ReturnType<typeof createUpscaler>;
  /** [cropH, cropW] scratch for one mask's logits. */
  logits: Float32Array;
  /** [cropH, cropW] scratch for one binary mask. */
  mask: Uint8Array;
}

/**
 * The reference's postprocess_small_regions: fill small holes, remove small islands; a changed
 * mask scores 0, an unchanged one 1; NMS; kept changed masks take their new RLE and box.
 * Masks are decoded one at a time; only changed ones are re-encoded.
 */
export function postprocessSmallRegions(data: MaskSet, minArea: number, nmsThresh: number): MaskSet {
  if (data.rles.length === 0) return data;
  const scores = new Float32Array(data.rles.length);
  const newBoxes: BoxXyxy[] = [];
  const newRles = new Map<number, UncompressedRle>();
  data.rles.forEach((rle, i) => {
    const mask = decodeRle(rle);
    const holes = removeSmallRegions(mask, minArea, 'holes');
    const islands = removeSmallRegions(holes.mask, minArea, 'islands');
    const unchanged = !holes.changed && !islands.changed;
    scores[i] = unchanged ? 1 : 0;
    newBoxes.push(maskToBox(islands.mask));
    if (!unchanged) newRles.set(i, maskToRleUncompressed(islands.mask));
  });
  const keep = nmsKeep(newBoxes, scores, nmsThresh);
  const out = pick(data, keep);
  keep.forEach((i, j) => {
    const rle = newRles.get(i);
    if (rle) {
      out.rles[j] = rle;
      out.boxes[j] = newBoxes[i];
    }
  });
  return out;
}

