/**
 * A mask decoded into the crop of its box (plus a zero border), not the whole image: exporters
 * walk one mask at a time, and a small object on a 4000x3000 photo costs its box, not 12 M bytes.
 * Pure: typed arrays in and out.
 */
import { rleFromString } from './rle.js';
import type { CocoRle, UncompressedRle } from './types.js';

/** Row-major 0/1 bytes of `w * h`; crop pixel (cx, cy) is image pixel (cx + x0, cy + y0). */
export interface MaskCrop {
  data: Uint8Array;
  w: number;
  h: number;
  x0: number;
  y0: number;
  /** The image size the RLE was made for. */
  imageW: number;
  imageH: number;
}

/** Column-major counts of COCO RLE in either form (string counts are pycocotools' encoding). */
export function rleCounts(rle: CocoRle | UncompressedRle): ArrayLike<number> {
  return typeof rle.counts === 'string' ? rleFromString(rle.counts) : rle.counts;
}

/**
 * Decode COCO RLE into the crop of the mask's box with `pad` zero pixels on every side (so
 * neighbour lookups need no bounds checks). An empty mask gives undefined. Throws when the counts
 * do not sum to h * w.
 */
export function decodeRleCrop(rle: CocoRle | UncompressedRle, pad = 1): MaskCrop | undefined {
  const [imageH, imageW] = rle.size;
  const counts = rleCounts(rle);
  const total = imageH * imageW;
  let pos = 0;
  let xs = Infinity;
  let xe = -1;
  let ys = Infinity;
  let ye = -1;
  for (let j = 0; j < counts.length; j++) {
    const len = counts[j];
    if ((j & 1) === 1 && len > 0) {
      const xa = Math.floor(pos / imageH);
      const xb = Math.floor((pos + len - 1) / imageH);
      xs = Math.min(xs, xa);
      xe = Math.max(xe, xb);
      if (xa !== xb) {
        ys = 0;
        ye = imageH - 1;
      } else {
        ys = Math.min(ys, pos - xa * imageH);
        ye = Math.max(ye, pos + len - 1 - xa * imageH);
      }
    }
    pos += len;
  }
  if (pos !== total) throw new Error(`RLE counts sum to ${pos}, expected ${imageH}x${imageW} = ${total}`);
  if (xe < 0) return undefined;
  const x0 = xs - pad;
  const y0 = ys - pad;
  const w = xe - xs + 1 + 2 * pad;
  const h = ye - ys + 1 + 2 * pad;
  const data = new Uint8Array(w * h);
  pos = 0;
  for (let j = 0; j < counts.length; j++) {
    const len = counts[j];
    if ((j & 1) === 1 && len > 0) {
      let x = Math.floor(pos / imageH);
      let y = pos - x * imageH;
      for (let k = 0; k < len; k++) {
        data[(y - y0) * w + (x - x0)] = 1;
        if (++y === imageH) {
          y = 0;
          x++;
        }
      }
    }
    pos += len;
  }
  return { data, w, h, x0, y0, imageW, imageH };
}

/**
 * Fill the holes of a crop whose one-pixel border is zero (decodeRleCrop's padding): background pixels not 8-connected to the border
 * become foreground (the dual of the 4-connected foreground the contour tracer follows). Works in
 * place; returns the number of pixels filled (0: the mask had no hole).
 */
export function fillHoles(crop: MaskCrop): number {
  const { data, w, h } = crop;
  const OUTSIDE = 2;
  // The border is background by construction: mark it outside, and flood the inside from there,
  // so every pixel popped is an inner one and its 8 neighbours need no bounds checks.
  for (let x = 0; x < w; x++) {
    data[x] = OUTSIDE;
    data[(h - 1) * w + x] = OUTSIDE;
  }
  for (let y = 0; y < h; y++) {
    data[y * w] = OUTSIDE;
    data[y * w + w - 1] = OUTSIDE;
  }
  const stack = new Int32Array(Math.max(16, w * h));
  let top = 0;
  const seed = (i: number): void => {
    if (data[i] === 0) {
      data[i] = OUTSIDE;
      stack[top++] = i;
    }
  };
  for (let x = 1; x < w - 1; x++) {
    seed(w + x);
    seed((h - 2) * w + x);
  }
  for (let y = 1; y < h - 1; y++) {
    seed(y * w + 1);
    seed(y * w + w - 2);
  }
  const nb = [-w - 1, -w, -w + 1, -1, 1, w - 1, w, w + 1];
  while (top > 0) {
    const i = stack[--top];
    for (let k = 0; k < 8; k++) {
      const j = i + nb[k];
      if (data[j] === 0) {
        data[j] = OUTSIDE;
        stack[top++] = j;
      }
    }
  }
  let filled = 0;
  for (let i = 0; i < data.length; i++) {
    const v = data[i];
    if (v === OUTSIDE) data[i] = 0;
    else if (v === 0) {
      data[i] = 1;
      filled++;
    }
  }
  return filled;
}

/**
 * Even-odd scanline fill of polygons (each a flat [x1, y1, x2, y2, ...] ring, implicitly closed,
 * in pixel-edge coordinates: pixel (x, y) covers [x, x+1) x [y, y+1)) into a row-major h x w mask:
 * a pixel is set when its centre (x + 0.5, y + 0.5) is inside. All rings of one call are filled
 * together, so overlapping rings cancel (holes as inner rings, zero-width bridges cancel).
 */
export function rasterizePolygons(rings: readonly ArrayLike<number>[], w: number, h: number): Uint8Array {
  const out = new Uint8Array(w * h);
  const xs: number[] = [];
  for (let y = 0; y < h; y++) {
    const cy = y + 0.5;
    xs.length = 0;
    for (const r of rings) {
      const n = r.length >> 1;
      for (let i = 0, j = n - 1; i < n; j = i++) {
        const yi = r[2 * i + 1];
        const yj = r[2 * j + 1];
        // Half-open in y so a vertex on the scanline counts once.
        if (yi > cy !== yj > cy) {
          const xi = r[2 * i];
          const xj = r[2 * j];
          xs.push(xi + ((cy - yi) * (xj - xi)) / (yj - yi));
        }
      }
    }
    xs.sort((a, b) => a - b);
    for (let k = 0; k + 1 < xs.length; k += 2) {
      // Pixels whose centre lies in [xs[k], xs[k+1]).
      const from = Math.max(0, Math.ceil(xs[k] - 0.5));
      const to = Math.min(w - 1, Math.ceil(xs[k + 1] - 0.5) - 1);
      for (let x = from; x <= to; x++) out[y * w + x] = 1;
    }
  }
  return out;
}
