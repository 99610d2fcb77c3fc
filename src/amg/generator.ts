/**
 * SamAutomaticMaskGenerator (segment_anything/automatic_mask_generator.py, SAM v1) on typed
 * arrays. The model is reached only through AmgPredictor, so this file has no I/O.
 *
 * Differences of mechanism, not of result, from the reference:
 * - low-res logits are upscaled only for masks that pass the predicted-IoU filter, and only the
 *   rows that may hold a logit above the lowest threshold (−1 by default; Upscaler `floor`);
 * - stability score, binarization, area and box come from one pass over each mask's logits;
 * - masks become RLE straight from the crop-sized mask (no full-image mask is built), so memory
 *   holds one batch's logits plus compact RLEs, not a tensor per mask;
 * - memory per mask is bounded whatever the mask looks like: a mask that passes the filters is
 *   kept as its compact RLE (pycocotools' compressed counts as bytes, ~1-2 bytes a run) or, when
 *   that would be larger than its 256x256 low-res logits (noise-like masks of up to millions of
 *   runs), as a copy of those logits, upscaled and encoded again only if it survives the crop's
 *   NMS (the upscaler is deterministic, so the RLE is the same). Boxes, scores and points are
 *   typed-array columns: NMS needs nothing else.
 *
 * promptStrategy 'hierarchical' (opt-in, not in the reference) follows TinySAM's hierarchical
 * segment everything (arXiv 2312.13789) per crop, see hierarchicalRounds; 'grid' is the reference.
 */
import { buildAllLayerPointGrids, generateCropBoxes, sparseGridIndices, squareGridSide } from './grid.js';
import { LOW_RES_LENGTH, LOW_RES_SIDE } from '../core/constants.js';
import { boxXyxyToXywh, fillHolesAndSprinkles, isBoxNearCropEdge, maskLogitStats, removeSmallRegions, maskToBox } from '../core/masks.js';
import { batchedNms } from '../core/nms.js';
import { createSam2Upscaler, createUpscaler } from '../core/upscale.js';
import { RleEncoder, decodeRle } from '../core/rle.js';
import { StageTimes } from '../core/timings.js';
import type { BoxXyxy, CompactRle, MaskRecord, Size } from '../core/types.js';
import type { AmgPredictor, MaskFilter, PointPrediction } from './predictor.js';

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
  /**
   * 'grid': every point of the crop's grid is a prompt (SamAutomaticMaskGenerator).
   * 'hierarchical': TinySAM's hierarchical strategy, per crop: a sparse subset of the grid first,
   * then only the grid points outside the confident regions of the masks it found.
   */
  promptStrategy: PromptStrategy;
  /** Hierarchical only: a kept round-1 mask's pixels with logits above this count as covered. */
  highScoreThresh: number;
  /** Hierarchical only: round 1 runs every sparseStride-th row and column of the grid (integer >= 2). */
  sparseStride: number;
  /**
   * 'sam2': SAM2AutomaticMaskGenerator (sam2/automatic_mask_generator.py) instead: grid points
   * cast to float32, low-res logits upscaled straight to the crop size, boxes written as floats.
   * Absent: SAM (v1). The SAM 2 fields below are set only for SAM 2 (so stored queue settings of
   * v1 runs keep their shape).
   */
  family?: 'sam2';
  /** SAM 2's mask_threshold (v1: 0). */
  maskThreshold?: number;
  /** SAM 2's use_m2m: the predictor refines each candidate once with its own low-res logits. */
  useM2m?: boolean;
  /** SAM 2's multimask_output: 3 masks per point (false: the single-mask output). */
  multimaskOutput?: boolean;
}

export const PROMPT_STRATEGIES = ['grid', 'hierarchical'] as const;
export type PromptStrategy = (typeof PROMPT_STRATEGIES)[number];

/** Decoder prompts of one image: how many ran, and how many the full grids would have run (sums over crops). */
export interface PromptCounts {
  run: number;
  grid: number;
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
  promptStrategy: 'grid',
  // TinySAM's high_score_thresh.
  highScoreThresh: 8.5,
  sparseStride: 4,
};

/** SAM 2's defaults where they differ from AMG_DEFAULTS (SAM2AutomaticMaskGenerator). */
export const SAM2_AMG_DEFAULTS: Readonly<Partial<AmgOptions>> = {
  family: 'sam2',
  predIouThresh: 0.8,
  maskThreshold: 0.0,
  useM2m: false,
  multimaskOutput: true,
};

/** SAM's mask_threshold: logits > 0 are mask (SAM 2: AmgOptions.maskThreshold). */
const MASK_THRESHOLD = 0.0;

const maskThresholdOf = (o: AmgOptions): number => o.maskThreshold ?? MASK_THRESHOLD;

/**
 * A mask that passed the filters is kept as low-res logits instead of its compact RLE when the
 * RLE would take more bytes than the logits do.
 */
const LOW_RES_BYTES = LOW_RES_LENGTH * 4;

/**
 * MaskData of the reference, one entry per mask, in struct-of-arrays form: typed columns for
 * what NMS and the records need, and per mask either its compact RLE or (until the crop's NMS)
 * its low-res logits.
 */
export class MaskSet {
  n = 0;
  /** Compact RLE of mask i; null while the mask is held as low-res logits. */
  rles: (CompactRle | null)[] = [];
  /** Low-res logits [256, 256] of mask i when its RLE is not held (only inside processCrop). */
  lowRes: (Float32Array | null)[] = [];
  /** Area of mask i (valid once its RLE is held). */
  areas = new Float64Array(8);
  /** XYXY, inclusive max, 4 per mask. */
  boxes = new Int32Array(32);
  iouPreds = new Float32Array(8);
  /** Prompt point (x, y), 2 per mask. */
  points = new Float64Array(16);
  stabilityScores = new Float32Array(8);
  /** XYXY, exclusive max, 4 per mask. */
  cropBoxes = new Int32Array(32);

  private reserve(n: number): void {
    if (n <= this.iouPreds.length) return;
    const cap = Math.max(n, this.iouPreds.length * 2);
    const grow = <T extends Float64Array | Float32Array | Int32Array>(a: T, per: number): T => {
      const b = new (a.constructor as new (len: number) => T)(cap * per);
      b.set(a.subarray(0, this.n * per));
      return b;
    };
    this.areas = grow(this.areas, 1);
    this.boxes = grow(this.boxes, 4);
    this.iouPreds = grow(this.iouPreds, 1);
    this.points = grow(this.points, 2);
    this.stabilityScores = grow(this.stabilityScores, 1);
    this.cropBoxes = grow(this.cropBoxes, 4);
  }

  push(
    rle: CompactRle | null,
    lowRes: Float32Array | null,
    area: number,
    box: ArrayLike<number>,
    iouPred: number,
    x: number,
    y: number,
    stabilityScore: number,
    cropBox: ArrayLike<number>,
  ): void {
    const i = this.n;
    this.reserve(i + 1);
    this.rles.push(rle);
    this.lowRes.push(lowRes);
    this.areas[i] = area;
    for (let k = 0; k < 4; k++) {
      this.boxes[i * 4 + k] = box[k];
      this.cropBoxes[i * 4 + k] = cropBox[k];
    }
    this.iouPreds[i] = iouPred;
    this.points[i * 2] = x;
    this.points[i * 2 + 1] = y;
    this.stabilityScores[i] = stabilityScore;
    this.n = i + 1;
  }

  /** Append mask i of `from`. */
  pushFrom(from: MaskSet, i: number): void {
    this.push(
      from.rles[i],
      from.lowRes[i],
      from.areas[i],
      from.boxes.subarray(i * 4, i * 4 + 4),
      from.iouPreds[i],
      from.points[i * 2],
      from.points[i * 2 + 1],
      from.stabilityScores[i],
      from.cropBoxes.subarray(i * 4, i * 4 + 4),
    );
  }

  /** Box of mask i (a view). */
  box(i: number): Int32Array {
    return this.boxes.subarray(i * 4, i * 4 + 4);
  }

  cropBox(i: number): Int32Array {
    return this.cropBoxes.subarray(i * 4, i * 4 + 4);
  }

  /** Drop the masks' RLEs and logits (after `pick` took the kept ones), so they can be collected. */
  releasePayloads(): void {
    this.rles = [];
    this.lowRes = [];
  }

  /** Boxes as NMS takes them: Float32Array [n, 4]. */
  nmsBoxes(): Float32Array {
    return Float32Array.from(this.boxes.subarray(0, this.n * 4));
  }
}

function pick(set: MaskSet, keep: readonly number[]): MaskSet {
  const out = new MaskSet();
  for (const i of keep) out.pushFrom(set, i);
  return out;
}

function cat(into: MaskSet, from: MaskSet): void {
  for (let i = 0; i < from.n; i++) into.pushFrom(from, i);
}

/** torchvision batched_nms with one category, on XYXY boxes [n, 4]. */
function nmsKeep(boxes: Float32Array, scores: ArrayLike<number>, iouThreshold: number): number[] {
  return batchedNms(boxes, scores, new Int32Array(scores.length), iouThreshold);
}

export function resolveAmgOptions(options: Partial<AmgOptions>): AmgOptions {
  const o: AmgOptions = { ...AMG_DEFAULTS, ...options };
  if ((o.pointsPerSide === null) === (o.pointGrids === null)) {
    throw new Error('Exactly one of pointsPerSide or pointGrids must be provided.');
  }
  if (o.pointGrids && o.pointGrids.length !== o.cropNLayers + 1) {
    throw new Error(`pointGrids has ${o.pointGrids.length} grid(s) but cropNLayers ${o.cropNLayers} needs ${o.cropNLayers + 1}`);
  }
  if (!(PROMPT_STRATEGIES as readonly string[]).includes(o.promptStrategy)) {
    throw new Error(`promptStrategy ${String(o.promptStrategy)}: expected one of ${PROMPT_STRATEGIES.join(', ')}`);
  }
  if (!Number.isInteger(o.sparseStride) || o.sparseStride < 2) throw new Error(`sparseStride ${o.sparseStride}: expected an integer >= 2`);
  if (Number.isNaN(o.highScoreThresh)) throw new Error('highScoreThresh must be a number');
  if (o.family !== 'sam2' && (o.maskThreshold !== undefined || o.useM2m !== undefined || o.multimaskOutput !== undefined)) {
    throw new Error('maskThreshold, useM2m and multimaskOutput are SAM 2 options (family sam2)');
  }
  if (o.maskThreshold !== undefined && !Number.isFinite(o.maskThreshold)) throw new Error('maskThreshold must be a finite number');
  if (o.promptStrategy === 'hierarchical' && o.pointGrids) {
    throw new Error("promptStrategy 'hierarchical' needs the square grids of pointsPerSide, not explicit pointGrids");
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

  /**
   * All masks of the image the predictor holds, as mask records with compact RLE. `prompts`, when
   * given, is set to the decoder prompts that ran and those the full grids would have run.
   */
  async generate(origSize: Size, timings = new StageTimes(), prompts?: PromptCounts): Promise<MaskRecord<CompactRle>[]> {
    const counts: PromptCounts = prompts ?? { run: 0, grid: 0 };
    counts.run = 0;
    counts.grid = 0;
    let data = await this.generateMasks(origSize, timings, counts);
    // SAM 2's generate() never post-processes small regions: min_mask_region_area only reaches its
    // predictor's hole and sprinkle filling of the low-res logits (processBatch).
    if (this.options.minMaskRegionArea > 0 && this.options.family !== 'sam2') {
      data = timings.timeSync('postprocess', () =>
        postprocessSmallRegions(data, this.options.minMaskRegionArea, Math.max(this.options.boxNmsThresh, this.options.cropNmsThresh)),
      );
    }
    const records: MaskRecord<CompactRle>[] = [];
    const sam2 = this.options.family === 'sam2';
    for (let i = 0; i < data.n; i++) {
      const rle = data.rles[i];
      if (!rle) throw new Error('internal: a mask left its crop without its RLE');
      records.push({
        // SAM 2's MaskData.to_numpy makes every column float32: boxes are written as floats.
        ...(sam2 ? { floatBoxes: true } : {}),
        segmentation: rle,
        area: data.areas[i],
        bbox: boxXyxyToXywh(data.box(i)),
        predicted_iou: data.iouPreds[i],
        point_coords: [[data.points[i * 2], data.points[i * 2 + 1]]],
        stability_score: data.stabilityScores[i],
        crop_box: boxXyxyToXywh(data.cropBox(i)),
      });
    }
    return records;
  }

  private async generateMasks(origSize: Size, timings: StageTimes, counts: PromptCounts): Promise<MaskSet> {
    const { cropBoxes, layerIdxs } = generateCropBoxes(origSize, this.options.cropNLayers, this.options.cropOverlapRatio);
    const data = new MaskSet();
    for (let i = 0; i < cropBoxes.length; i++) {
      cat(data, await this.processCrop(cropBoxes[i], layerIdxs[i], origSize, timings, counts));
    }
    if (cropBoxes.length > 1) {
      // Remove duplicates between crops: smaller crops win (score 1 / crop area).
      const scores = new Float32Array(data.n);
      for (let i = 0; i < data.n; i++) {
        const [x0, y0, x1, y1] = data.cropBox(i);
        scores[i] = 1 / ((x1 - x0) * (y1 - y0));
      }
      const keep = timings.timeSync('nms', () => nmsKeep(data.nmsBoxes(), scores, this.options.cropNmsThresh));
      return pick(data, keep);
    }
    return data;
  }

  private async processCrop(cropBox: BoxXyxy, layerIdx: number, origSize: Size, timings: StageTimes, counts: PromptCounts): Promise<MaskSet> {
    const { cropSize, inputSize } = await this.predictor.setCrop(cropBox);
    const [cropH, cropW] = cropSize;
    // points_for_image = grid * [w, h], in crop pixels.
    const grid = this.pointGrids[layerIdx];
    const sam2 = this.options.family === 'sam2';
    // SAM 2 casts the points (grid times crop size, in float64) to float32.
    const f = sam2 ? Math.fround : (v: number): number => v;
    const pointsForImage = new Float64Array(grid.length);
    for (let i = 0; i < grid.length; i += 2) {
      pointsForImage[i] = f(grid[i] * cropW);
      pointsForImage[i + 1] = f(grid[i + 1] * cropH);
    }
    // SAM 2 upscales the low-res logits straight to the crop size (no padding to remove).
    const upscale = sam2 ? createSam2Upscaler(cropSize) : createUpscaler(inputSize, cropSize);
    const ctx: BatchContext = {
      cropBox,
      cropSize,
      origSize,
      upscale,
      logits: EMPTY_LOGITS,
      mask: EMPTY_MASK,
      encoder: new RleEncoder(),
      covered: null,
      floor: logitFloor(this.options),
    };
    const data = new MaskSet();
    counts.grid += pointsForImage.length / 2;
    if (this.options.promptStrategy === 'hierarchical') {
      counts.run += await this.hierarchicalRounds(pointsForImage, ctx, data, timings);
    } else {
      await this.processPoints(pointsForImage, ctx, data, timings);
      counts.run += pointsForImage.length / 2;
    }
    // Remove duplicates within this crop (boxes still in crop coordinates, as the reference).
    const keep = timings.timeSync('nms', () => nmsKeep(data.nmsBoxes(), data.iouPreds.subarray(0, data.n), this.options.boxNmsThresh));
    const kept = pick(data, keep);
    data.releasePayloads();
    // Masks kept as low-res logits: upscale and encode them again, now that they are final.
    for (let i = 0; i < kept.n; i++) {
      const lowRes = kept.lowRes[i];
      if (!lowRes) continue;
      const t0 = performance.now();
      ctx.upscale(lowRes, ctx.logits, ctx.floor);
      const stats = maskLogitStats(ctx.logits, 0, cropH, cropW, maskThresholdOf(this.options), this.options.stabilityScoreOffset, ctx.mask, ctx.upscale);
      timings.add('postprocess', performance.now() - t0);
      const b = kept.box(i);
      if (stats.box.some((v, k) => v !== b[k])) throw new Error('internal: a mask upscaled again differs from the first time');
      timings.timeSync('rle', () => {
        ctx.encoder.scanInCrop({ data: ctx.mask, h: cropH, w: cropW }, cropBox, origSize, stats.box);
        kept.rles[i] = ctx.encoder.compact();
        kept.areas[i] = ctx.encoder.area();
      });
      kept.lowRes[i] = null;
    }
    const [x0, y0] = cropBox;
    for (let i = 0; i < kept.n; i++) {
      // uncrop_boxes_xyxy and uncrop_points.
      kept.boxes[i * 4] += x0;
      kept.boxes[i * 4 + 1] += y0;
      kept.boxes[i * 4 + 2] += x0;
      kept.boxes[i * 4 + 3] += y0;
      kept.points[i * 2] = f(kept.points[i * 2] + x0);
      kept.points[i * 2 + 1] = f(kept.points[i * 2 + 1] + y0);
    }
    return kept;
  }

  /**
   * Prompts `pointsForImage` (crop pixels, [n, 2]) in batches of pointsPerBatch, into `data`.
   * The next batch is asked for before this one is post-processed, so a predictor that computes
   * elsewhere (a worker thread) decodes while this thread upscales, filters and encodes.
   */
  private async processPoints(pointsForImage: Float64Array, ctx: BatchContext, data: MaskSet, timings: StageTimes): Promise<void> {
    const perBatch = this.options.pointsPerBatch * 2;
    const o = this.options;
    // Only prompts with a mask above pred_iou_thresh need logits (two-stage decoding).
    const filter: MaskFilter | undefined = o.predIouThresh > 0 ? { iouAbove: Math.fround(o.predIouThresh) } : undefined;
    const batchAt = (start: number): Float64Array => pointsForImage.subarray(start, Math.min(start + perBatch, pointsForImage.length));
    // The predictor maps crop pixels to the 1024 frame itself; hand it float32 crop pixels.
    const predict = (start: number): Promise<PointPrediction> => this.predictor.predictPoints(Float32Array.from(batchAt(start)), filter);
    let next: Promise<PointPrediction> | undefined = pointsForImage.length > 0 ? predict(0) : undefined;
    try {
      for (let start = 0; start < pointsForImage.length; start += perBatch) {
        const prediction = await next!;
        next = start + perBatch < pointsForImage.length ? predict(start + perBatch) : undefined;
        this.processBatch(batchAt(start), prediction, ctx, data, timings);
      }
    } finally {
      // A failed batch leaves the prefetched one unawaited: keep its rejection handled.
      next?.catch(() => undefined);
    }
  }

  /**
   * TinySAM's hierarchical segment-everything on one crop's n×n grid `pointsForImage` (crop
   * pixels): round 1 prompts the points on every sparseStride-th row and column; the kept masks'
   * logits above highScoreThresh are OR-ed into a crop-sized map; round 2 prompts the other grid
   * points whose pixel is not in the map. Both rounds' masks go into `data` (one NMS after).
   * Returns the number of prompts run.
   */
  private async hierarchicalRounds(pointsForImage: Float64Array, ctx: BatchContext, data: MaskSet, timings: StageTimes): Promise<number> {
    const [cropH, cropW] = ctx.cropSize;
    const count = pointsForImage.length / 2;
    const n = squareGridSide(count);
    if (n < 0) throw new Error(`internal: hierarchical prompts need a square grid, got ${count} points`);
    const sparse = sparseGridIndices(n, this.options.sparseStride);
    const round1 = new Float64Array(sparse.length * 2);
    const inRound1 = new Uint8Array(count);
    sparse.forEach((p, k) => {
      round1[2 * k] = pointsForImage[2 * p];
      round1[2 * k + 1] = pointsForImage[2 * p + 1];
      inRound1[p] = 1;
    });
    ctx.covered = new Uint8Array(cropH * cropW);
    await this.processPoints(round1, ctx, data, timings);
    const covered = ctx.covered;
    ctx.covered = null;
    const round2: number[] = [];
    for (let p = 0; p < count; p++) {
      if (inRound1[p]) continue;
      const x = Math.min(Math.max(Math.floor(pointsForImage[2 * p]), 0), cropW - 1);
      const y = Math.min(Math.max(Math.floor(pointsForImage[2 * p + 1]), 0), cropH - 1);
      if (covered[y * cropW + x]) continue;
      round2.push(pointsForImage[2 * p], pointsForImage[2 * p + 1]);
    }
    await this.processPoints(Float64Array.from(round2), ctx, data, timings);
    return sparse.length + round2.length / 2;
  }

  private processBatch(points: Float64Array, prediction: PointPrediction, ctx: BatchContext, data: MaskSet, timings: StageTimes): void {
    const { cropBox, cropSize, origSize } = ctx;
    const [cropH, cropW] = cropSize;
    const nPoints = points.length / 2;
    const lowLen = LOW_RES_LENGTH;
    const o = this.options;
    // torch compares a float32 tensor with a Python float in float32: round the thresholds too.
    const iouThresh = Math.fround(o.predIouThresh);
    const stabilityThresh = Math.fround(o.stabilityScoreThresh);
    const highThresh = Math.fround(o.highScoreThresh);
    const passesIou = (iou: number): boolean => !(o.predIouThresh > 0) || iou > iouThresh;
    const sam2Fill = o.family === 'sam2' && o.minMaskRegionArea > 0;
    const { lowResLogits, iouPredictions, masksPerPoint, maskRows } = prediction;
    const origBox: BoxXyxy = [0, 0, origSize[1], origSize[0]];
    const nRows = maskRows ? maskRows.length : nPoints;
    for (let r = 0; r < nRows; r++) {
      const p = maskRows ? maskRows[r] : r;
      for (let k = 0; k < masksPerPoint; k++) {
        const m = p * masksPerPoint + k;
        const iou = iouPredictions[m];
        if (!passesIou(iou)) continue;
        const t0 = performance.now();
        const l = r * masksPerPoint + k;
        let low = lowResLogits.subarray(l * lowLen, (l + 1) * lowLen);
        // SAM 2: min_mask_region_area is its predictor's max_hole_area and max_sprinkle_area, on the low-res logits.
        if (sam2Fill) low = fillHolesAndSprinkles(low, LOW_RES_SIDE, LOW_RES_SIDE, o.minMaskRegionArea, o.minMaskRegionArea, maskThresholdOf(o));
        allocateScratch(ctx);
        ctx.upscale(low, ctx.logits, ctx.floor);
        const stats = maskLogitStats(ctx.logits, 0, cropH, cropW, maskThresholdOf(o), o.stabilityScoreOffset, ctx.mask, ctx.upscale);
        const keep =
          (o.stabilityScoreThresh <= 0 || stats.stabilityScore >= stabilityThresh) &&
          !isBoxNearCropEdge(stats.box, cropBox, origBox);
        timings.add('postprocess', performance.now() - t0);
        if (!keep) continue;
        const t1 = performance.now();
        // The mask is final: keep its compact RLE, or its logits when those are smaller.
        const enc = ctx.encoder;
        let rle: CompactRle | null = null;
        let area = 0;
        if (enc.scanInCrop({ data: ctx.mask, h: cropH, w: cropW }, cropBox, origSize, stats.box) <= LOW_RES_BYTES) {
          rle = enc.compact();
          area = enc.area();
          if (rle.bytes.length > LOW_RES_BYTES) rle = null;
        }
        timings.add('rle', performance.now() - t1);
        if (ctx.covered) {
          // Hierarchical round 1: the mask's confident pixels are covered.
          const t2 = performance.now();
          const { covered, logits } = ctx;
          for (let i = 0; i < logits.length; i++) if (logits[i] > highThresh) covered[i] = 1;
          timings.add('postprocess', performance.now() - t2);
        }
        data.push(rle, rle ? null : low.slice(), area, stats.box, iou, points[2 * p], points[2 * p + 1], stats.stabilityScore, cropBox);
      }
    }
  }
}

const EMPTY_LOGITS = new Float32Array(0);
const EMPTY_MASK = new Uint8Array(0);

/** The crop-sized scratch buffers, allocated when the first mask of the crop passes the IoU filter. */
function allocateScratch(ctx: BatchContext): void {
  const n = ctx.cropSize[0] * ctx.cropSize[1];
  if (ctx.logits.length === n) return;
  ctx.logits = new Float32Array(n);
  ctx.mask = new Uint8Array(n);
}

interface BatchContext {
  cropBox: BoxXyxy;
  cropSize: Size;
  origSize: Size;
  upscale: ReturnType<typeof createUpscaler>;
  /** [cropH, cropW] scratch for one mask's logits (empty until allocateScratch). */
  logits: Float32Array;
  /** [cropH, cropW] scratch for one binary mask (empty until allocateScratch). */
  mask: Uint8Array;
  /** RLE scratch buffers, reused from mask to mask. */
  encoder: RleEncoder;
  /** Hierarchical round 1: [cropH, cropW] OR of the kept masks' logits > highScoreThresh; null otherwise. */
  covered: Uint8Array | null;
  /** The lowest threshold upscaled logits are compared with: rows certainly below it need not be computed (Upscaler). */
  floor: number;
}

/** The lowest of the thresholds the generator compares upscaled logits with. */
function logitFloor(o: AmgOptions): number {
  const m = maskThresholdOf(o);
  const t = [m, m - o.stabilityScoreOffset, m + o.stabilityScoreOffset];
  if (o.promptStrategy === 'hierarchical') t.push(o.highScoreThresh);
  return Math.min(...t.map(Math.fround));
}

/**
 * The reference's postprocess_small_regions: fill small holes, remove small islands; a changed
 * mask scores 0, an unchanged one 1; NMS; kept changed masks take their new RLE and box.
 * Masks are decoded one at a time; only changed ones are re-encoded (compactly).
 */
export function postprocessSmallRegions(data: MaskSet, minArea: number, nmsThresh: number): MaskSet {
  if (data.n === 0) return data;
  const scores = new Float32Array(data.n);
  const newBoxes = new Float32Array(data.n * 4);
  const newRles = new Map<number, { rle: CompactRle; area: number }>();
  const enc = new RleEncoder();
  for (let i = 0; i < data.n; i++) {
    const rle = data.rles[i];
    if (!rle) throw new Error('internal: a mask left its crop without its RLE');
    const mask = decodeRle(rle);
    const holes = removeSmallRegions(mask, minArea, 'holes');
    const islands = removeSmallRegions(holes.mask, minArea, 'islands');
    const unchanged = !holes.changed && !islands.changed;
    scores[i] = unchanged ? 1 : 0;
    newBoxes.set(maskToBox(islands.mask), i * 4);
    if (!unchanged) {
      enc.scan(islands.mask);
      newRles.set(i, { rle: enc.compact(), area: enc.area() });
    }
  }
  const keep = nmsKeep(newBoxes, scores, nmsThresh);
  const out = pick(data, keep);
  keep.forEach((i, j) => {
    const changed = newRles.get(i);
    if (changed) {
      out.rles[j] = changed.rle;
      out.areas[j] = changed.area;
      out.boxes.set(newBoxes.subarray(i * 4, i * 4 + 4), j * 4);
    }
  });
  return out;
}
