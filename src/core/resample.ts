/**
 * PIL's `Image.resize(size, Image.BILINEAR)` on 8-bit RGB, bit for bit: what SAM's
 * ResizeLongestSide.apply_image runs (torchvision `resize` of a PIL image). Ported from Pillow's
 * libImaging/Resample.c (precompute_coeffs, normalize_coeffs_8bpc, ImagingResampleHorizontal_8bpc /
 * Vertical_8bpc, ImagingResampleInner): a separable convolution with the triangle filter widened
 * by the scale when shrinking (antialiasing), weights in 22-bit fixed point, the horizontal pass
 * first into a uint8 image of the rows the vertical pass needs, each pass rounding and clipping
 * to uint8. No library reproduces this arithmetic; libvips' kernels differ by a grey level in
 * about 11% of the pixels, which moves SAM's stability scores by up to 5e-3.
 */

/** Pillow's PRECISION_BITS (32 - 8 - 2): weights are integers scaled by 2^22. */
const PRECISION_BITS = 22;
const ONE = 1 << PRECISION_BITS;
const HALF = 1 << (PRECISION_BITS - 1);

/** The bilinear (triangle) filter of Resample.c, support 1. */
const bilinear = (x: number): number => {
  const a = x < 0 ? -x : x;
  return a < 1 ? 1 - a : 0;
};

interface Coeffs {
  /** Taps per output pixel (the stride of `weights`). */
  ksize: number;
  /** [outSize, 2]: first input index and number of taps of each output pixel. */
  bounds: Int32Array;
  /** [outSize, ksize] fixed-point weights (normalize_coeffs_8bpc). */
  weights: Int32Array;
}

/** precompute_coeffs over the whole input (box in0 = 0, in1 = inSize), then normalize_coeffs_8bpc. */
function precomputeCoeffs(inSize: number, outSize: number): Coeffs {
  const scale = inSize / outSize;
  const filterscale = scale < 1 ? 1 : scale;
  const support = 1 * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const weights = new Int32Array(outSize * ksize);
  const k = new Float64Array(ksize);
  const ss = 1 / filterscale;
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    // (int) casts truncate toward zero.
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      const w = bilinear((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (let x = 0; x < xmax; x++) {
      const w = ww !== 0 ? k[x] / ww : k[x];
      weights[xx * ksize + x] = w < 0 ? Math.trunc(-0.5 + w * ONE) : Math.trunc(0.5 + w * ONE);
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, bounds, weights };
}

/** clip8 (Pillow's clip8_lookups[in >> PRECISION_BITS]): the fixed-point sum to uint8, clamped. */
function clip8(v: number): number {
  const q = v >> PRECISION_BITS;
  return q < 0 ? 0 : q > 255 ? 255 : q;
}

/**
 * Resize 8-bit RGB (row-major HWC, `data.length === h * w * 3`) to outW x outH exactly as
 * PIL's BILINEAR resize. Returns the new pixels.
 */
export function resizeBilinearPil(data: Uint8Array, w: number, h: number, outW: number, outH: number): Uint8Array {
  if (outW === w && outH === h) return data.slice();
  const needHorizontal = outW !== w;
  const needVertical = outH !== h;
  const horiz = precomputeCoeffs(w, outW);
  const vert = precomputeCoeffs(h, outH);
  // Rows of the input the vertical pass reads: ybox_first .. ybox_last.
  const yFirst = vert.bounds[0];
  const yLast = vert.bounds[outH * 2 - 2] + vert.bounds[outH * 2 - 1];

  let src = data;
  let srcW = w;
  let rowOffset = 0;
  if (needHorizontal) {
    const rows = yLast - yFirst;
    const tmp = new Uint8Array(rows * outW * 3);
    const { ksize, bounds, weights } = horiz;
    for (let yy = 0; yy < rows; yy++) {
      const inRow = (yy + yFirst) * w * 3;
      const outRow = yy * outW * 3;
      for (let xx = 0; xx < outW; xx++) {
        const xmin = bounds[xx * 2];
        const xmax = bounds[xx * 2 + 1];
        const kb = xx * ksize;
        let s0 = HALF;
        let s1 = HALF;
        let s2 = HALF;
        for (let x = 0; x < xmax; x++) {
          const p = inRow + (x + xmin) * 3;
          const wt = weights[kb + x];
          s0 += data[p] * wt;
          s1 += data[p + 1] * wt;
          s2 += data[p + 2] * wt;
        }
        const o = outRow + xx * 3;
        tmp[o] = clip8(s0);
        tmp[o + 1] = clip8(s1);
        tmp[o + 2] = clip8(s2);
      }
    }
    src = tmp;
    srcW = outW;
    rowOffset = yFirst;
  }
  if (!needVertical) return src === data ? data.slice() : src;

  const out = new Uint8Array(outH * srcW * 3);
  const { ksize, bounds, weights } = vert;
  const stride = srcW * 3;
  for (let yy = 0; yy < outH; yy++) {
    const ymin = bounds[yy * 2] - rowOffset;
    const ymax = bounds[yy * 2 + 1];
    const kb = yy * ksize;
    const outRow = yy * stride;
    for (let i = 0; i < stride; i++) {
      let s = HALF;
      for (let y = 0; y < ymax; y++) s += src[(y + ymin) * stride + i] * weights[kb + y];
      out[outRow + i] = clip8(s);
    }
  }
  return out;
}

/**
 * Taps of torch's antialiased bilinear resize along one axis (aten upsample_bilinear2d_aa,
 * align_corners=False): a triangle filter widened by the downscale factor, weights normalized to
 * sum 1, all in float32 as torch computes them. Upscaling is plain bilinear with edge clamping.
 */
export function antialiasLinearTaps(inSize: number, outSize: number): { xmin: number; w: Float32Array }[] {
  const f = Math.fround;
  const scale = f(inSize / outSize);
  const support = scale >= 1 ? scale : 1;
  const invscale = scale >= 1 ? f(1 / scale) : 1;
  return Array.from({ length: outSize }, (_, i) => {
    const center = f(scale * f(i + 0.5));
    const xmin = Math.max(Math.trunc(f(center - support + 0.5)), 0);
    const xsize = Math.min(Math.trunc(f(center + support + 0.5)), inSize) - xmin;
    const w = new Float32Array(xsize);
    let total = 0;
    for (let j = 0; j < xsize; j++) {
      const x = Math.abs(f(f(j + xmin - center + 0.5) * invscale));
      w[j] = x < 1 ? 1 - x : 0;
      total = f(total + w[j]);
    }
    if (total !== 0) for (let j = 0; j < xsize; j++) w[j] = f(w[j] / total);
    return { xmin, w };
  });
}

/**
 * SAM 2's transforms on 8-bit RGB (HWC, w×h): ToTensor (/255), Resize((outH, outW)) bilinear
 * antialiased (torchvision >= 0.20 default), Normalize(mean, std) in 0..1 units, in float32 as
 * torch does it: a width pass then a height pass. Returns CHW float32 [3, outH, outW].
 */
export function resizeNormalizeSam2(
  data: Uint8Array,
  w: number,
  h: number,
  outW: number,
  outH: number,
  mean: readonly number[],
  std: readonly number[],
): Float32Array {
  const f = Math.fround;
  const tx = antialiasLinearTaps(w, outW);
  const ty = antialiasLinearTaps(h, outH);
  const out = new Float32Array(3 * outH * outW);
  const rows = new Float32Array(h * outW);
  for (let c = 0; c < 3; c++) {
    const m = f(mean[c]);
    const s = f(std[c]);
    // Width pass: [h, w] → [h, outW].
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < outW; x++) {
        const { xmin, w: wt } = tx[x];
        let acc = 0;
        for (let j = 0; j < wt.length; j++) acc = f(acc + f(f(data[(y * w + xmin + j) * 3 + c] / 255) * wt[j]));
        rows[y * outW + x] = acc;
      }
    }
    // Height pass: [h, outW] → [outH, outW], then normalize.
    for (let y = 0; y < outH; y++) {
      const { xmin, w: wt } = ty[y];
      const base = (c * outH + y) * outW;
      for (let x = 0; x < outW; x++) {
        let acc = 0;
        for (let j = 0; j < wt.length; j++) acc = f(acc + f(rows[(xmin + j) * outW + x] * wt[j]));
        out[base + x] = f(f(acc - m) / s);
      }
    }
  }
  return out;
}
