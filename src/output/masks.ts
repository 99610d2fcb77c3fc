import sharp, { type PngOptions, type Sharp } from 'sharp';
import { boxXyxyToXywh, maskLogitStats } from '../core/masks.js';
import { encodeMask } from '../core/rle.js';
import type { BinaryMask, BoxXywh, BoxXyxy, CocoRle } from '../core/types.js';
import { produceFileAtomic } from '../util/atomic.js';
import type { RgbImage } from '../io/image.js';

/** One prompted mask as `sam segment` writes it. */
export interface SegmentMask {
  segmentation: CocoRle;
  area: number;
  /** XYWH of the mask's XYXY box with inclusive max indices, as SAM's generator writes it. */
  bbox: BoxXywh;
  predicted_iou: number;
  stability_score: number;
}

/** Binarize [K, h, w] logits at 0.0 and describe each mask (one fused pass per mask). */
export function describeMasks(logits: Float32Array, iou: Float32Array, h: number, w: number): { masks: BinaryMask[]; records: SegmentMask[] } {
  const masks: BinaryMask[] = [];
  const records: SegmentMask[] = [];
  for (let k = 0; k < iou.length; k++) {
    const data = new Uint8Array(h * w);
    const stats = maskLogitStats(logits, k * h * w, h, w, 0.0, 1.0, data);
    const mask = { data, h, w };
    masks.push(mask);
    records.push({
      segmentation: encodeMask(mask),
      area: stats.area,
      bbox: boxXyxyToXywh(stats.box),
      predicted_iou: iou[k],
      stability_score: Number.isNaN(stats.stabilityScore) ? 0 : stats.stabilityScore,
    });
  }
  return { masks, records };
}

/**
 * A binary mask as an 8-bit single-channel PNG (0 / 255), as cv2.imwrite writes SAM's masks.
 * 'b-w' matters: without it sharp writes 1-channel raw input as RGB.
 */
export function maskToPng(mask: BinaryMask, png: PngOptions = { compressionLevel: 6 }): Sharp {
  const px = new Uint8Array(mask.data.length);
  for (let i = 0; i < px.length; i++) px[i] = mask.data[i] ? 255 : 0;
  return sharp(px, { raw: { width: mask.w, height: mask.h, channels: 1 } })
    .toColourspace('b-w')
    .png(png);
}

/** writeMaskPng: maskToPng, written atomically. */
export async function writeMaskPng(path: string, mask: BinaryMask): Promise<void> {
  await produceFileAtomic(path, (tmp) => maskToPng(mask).toFile(tmp));
}

/** Distinct, saturated colours for overlays (golden-angle hues). */
export function overlayColour(i: number): [number, number, number] {
  const h = (i * 137.508) % 360;
  const f = (n: number) => {
    const k = (n + h / 30) % 12;
    return Math.round(255 * (0.55 - 0.45 * Math.max(-1, Math.min(k - 3, 9 - k, 1))));
  };
  return [f(0), f(8), f(4)];
}

/**
 * Blend `mask` (row-major h×w, 0/1) into RGB pixels `px` in `colour`: half-transparent inside,
 * opaque on its outline. `box` (XYXY, inclusive) bounds the scan when known.
 */
export function paintMask(
  px: Uint8Array,
  w: number,
  h: number,
  mask: Uint8Array,
  colour: readonly [number, number, number],
  box: BoxXyxy = [0, 0, w - 1, h - 1],
): void {
  const [r, g, b] = colour;
  for (let y = Math.max(0, box[1]); y <= Math.min(h - 1, box[3]); y++) {
    for (let x = Math.max(0, box[0]); x <= Math.min(w - 1, box[2]); x++) {
      const j = y * w + x;
      if (!mask[j]) continue;
      const edge = x === 0 || y === 0 || x === w - 1 || y === h - 1 || !mask[j - 1] || !mask[j + 1] || !mask[j - w] || !mask[j + w];
      const a = edge ? 1 : 0.5;
      const o = j * 3;
      px[o] = Math.round(px[o] * (1 - a) + r * a);
      px[o + 1] = Math.round(px[o + 1] * (1 - a) + g * a);
      px[o + 2] = Math.round(px[o + 2] * (1 - a) + b * a);
    }
  }
}

export interface OverlayPrompt {
  points?: { x: number; y: number; label: number }[];
  box?: BoxXyxy;
}

/**
 * The image with each mask blended in its colour and outlined, plus the prompts (green dots
 * foreground, red dots background, box in yellow), as a PNG for a person to check.
 */
export async function writeOverlayPng(path: string, image: RgbImage, masks: readonly BinaryMask[], prompt: OverlayPrompt = {}): Promise<void> {
  const { width: w, height: h } = image;
  const px = Uint8Array.from(image.data);
  masks.forEach((mask, i) => paintMask(px, w, h, mask.data, overlayColour(i)));
  const radius = Math.max(3, Math.round(Math.max(w, h) / 150));
  const shapes: string[] = [];
  if (prompt.box) {
    const [x0, y0, x1, y1] = prompt.box;
    shapes.push(`<rect x="${x0}" y="${y0}" width="${x1 - x0}" height="${y1 - y0}" fill="none" stroke="#ffd400" stroke-width="${Math.max(2, radius / 2)}"/>`);
  }
  for (const p of prompt.points ?? []) {
    const fill = p.label === 1 ? '#00d000' : '#e00000';
    shapes.push(`<circle cx="${p.x}" cy="${p.y}" r="${radius}" fill="${fill}" stroke="#ffffff" stroke-width="${Math.max(1, radius / 3)}"/>`);
  }
  let pipeline = sharp(px, { raw: { width: w, height: h, channels: 3 } });
  if (shapes.length > 0) {
    const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}">${shapes.join('')}</svg>`;
    pipeline = pipeline.composite([{ input: Buffer.from(svg), top: 0, left: 0 }]);
  }
  await produceFileAtomic(path, (tmp) => pipeline.png().toFile(tmp));
}
