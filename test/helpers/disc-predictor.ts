import type { AmgPredictor, PointPrediction } from '../../src/amg/predictor.js';
import { getPreprocessShape } from '../../src/core/transforms.js';
import type { BoxXyxy, Size } from '../../src/core/types.js';

export interface Disc {
  cx: number;
  cy: number;
  r: number;
}

export const LOW = 256;
/** Logits slope: 10 per pixel from the disc's edge (in crop pixels). */
export const SLOPE = 10;

/**
 * A fake model for the generator: a point inside a disc gets that disc's logits
 * (SLOPE * (r - distance), three equal masks, IoU `iou`), any other point an empty mask
 * (IoU 0.5). Records every crop it embeds and the prompts of every predictPoints call.
 */
export class DiscPredictor implements AmgPredictor {
  private crop: BoxXyxy = [0, 0, 0, 0];
  private inputSize: Size = [0, 0];
  readonly crops: BoxXyxy[] = [];
  /** Prompts of each predictPoints call, as [x, y] in image pixels. */
  readonly calls: [number, number][][] = [];

  constructor(
    private readonly discs: readonly Disc[],
    private readonly iou: number = 0.95,
  ) {}

  async setCrop(cropBox: BoxXyxy): Promise<{ cropSize: Size; inputSize: Size }> {
    this.crop = cropBox;
    this.crops.push(cropBox);
    const cropSize: Size = [cropBox[3] - cropBox[1], cropBox[2] - cropBox[0]];
    this.inputSize = getPreprocessShape(cropSize[0], cropSize[1]);
    return { cropSize, inputSize: this.inputSize };
  }

  async predictPoints(points: Float32Array): Promise<PointPrediction> {
    const b = points.length / 2;
    const k = 3;
    const [x0, y0, x1] = this.crop;
    const scale = this.inputSize[1] / (x1 - x0); // 1024-frame pixels per crop pixel
    const lowResLogits = new Float32Array(b * k * LOW * LOW).fill(-SLOPE * 20);
    const iouPredictions = new Float32Array(b * k).fill(0.5);
    const call: [number, number][] = [];
    for (let p = 0; p < b; p++) {
      const px = points[2 * p] + x0;
      const py = points[2 * p + 1] + y0;
      call.push([px, py]);
      const disc = this.discs.find((d) => (px - d.cx) ** 2 + (py - d.cy) ** 2 < d.r * d.r);
      if (!disc) continue;
      for (let m = 0; m < k; m++) {
        const base = (p * k + m) * LOW * LOW;
        for (let i = 0; i < LOW; i++) {
          for (let j = 0; j < LOW; j++) {
            // Low-res cell centre in the 1024 frame, back to image pixels.
            const x = ((j + 0.5) * 4) / scale + x0;
            const y = ((i + 0.5) * 4) / scale + y0;
            lowResLogits[base + i * LOW + j] = SLOPE * (disc.r - Math.hypot(x - disc.cx, y - disc.cy));
          }
        }
        iouPredictions[p * k + m] = this.iou;
      }
    }
    this.calls.push(call);
    return { lowResLogits, iouPredictions, masksPerPoint: k };
  }
}
