/**
 * Naive reference of segment_anything's Sam.postprocess_masks for one mask, written from the
 * definition of PyTorch's F.interpolate(mode="bilinear", align_corners=False) (no antialias),
 * independently of src/core/upscale.ts (which composes the two resizes into per-axis weights):
 * [256, 256] → [1024, 1024] → crop [:inH, :inW] → [origH, origW], each step a plain 2-D
 * bilinear resize that materialises its float32 output.
 *
 * PyTorch's CPU kernel (aten/src/ATen/native/UpSample.h, cpu/UpSampleKernel.cpp, torch 1.13):
 * - the ratio is `scalar_t`: float32(in / out) (no scale_factor is passed, sizes are);
 * - per output index: src = ratio * (dst + 0.5) - 0.5 in the CPU accumulate type (double),
 *   clamped at 0; i0 = (int64) src, i1 = i0 + 1 unless i0 is the last index;
 *   λ1 = clamp(src - i0, 0, 1) stored as float32, λ0 = 1 - λ1 in float32;
 * - the value λ0_h * (λ0_w * x00 + λ1_w * x01) + λ1_h * (λ0_w * x10 + λ1_w * x11) of the float32
 *   inputs and weights, stored as float32.
 * Indices are additionally clamped to size - 1 (a no-op for these ratios, kept as a guard).
 *
 * The sum is evaluated here in float64 and rounded to float32 once per output value. Measured
 * against the golden outputs (torch 1.13 CPU), that is what the kernel's (vectorised, fused)
 * arithmetic gives: bit-identical on the 699,392 values of the pure 256 → 1024 resize
 * (odd_683x1024, whose second step is the identity), within 1 float32 ulp (≤ 9.5e-7) elsewhere;
 * rounding every product and partial sum to float32 instead is off by up to 3 ulp (2.9e-6),
 * a float64 ratio by up to 2.5e-4, a float32-rounded source index by up to 1.6e-4.
 */

const f32 = Math.fround;

interface Tap {
  i0: number;
  i1: number;
  l0: number;
  l1: number;
}

function taps(inLen: number, outLen: number): Tap[] {
  const ratio = f32(inLen / outLen);
  const out: Tap[] = [];
  for (let dst = 0; dst < outLen; dst++) {
    let src = ratio * (dst + 0.5) - 0.5;
    if (src < 0) src = 0;
    const i0 = Math.min(Math.floor(src), inLen - 1);
    const i1 = Math.min(i0 + 1, inLen - 1);
    const l1 = f32(Math.min(Math.max(src - i0, 0), 1));
    const l0 = f32(1 - l1);
    out.push({ i0, i1, l0, l1 });
  }
  return out;
}

/** One channel [inH, inW] → [outH, outW], row-major float32, as F.interpolate bilinear. */
export function interpolateBilinearReference(src: Float32Array, inH: number, inW: number, outH: number, outW: number): Float32Array {
  if (src.length !== inH * inW) throw new Error(`source holds ${src.length} values, not ${inH}x${inW}`);
  const ty = taps(inH, outH);
  const tx = taps(inW, outW);
  const out = new Float32Array(outH * outW);
  for (let oy = 0; oy < outH; oy++) {
    const y = ty[oy];
    for (let ox = 0; ox < outW; ox++) {
      const x = tx[ox];
      const x00 = src[y.i0 * inW + x.i0];
      const x01 = src[y.i0 * inW + x.i1];
      const x10 = src[y.i1 * inW + x.i0];
      const x11 = src[y.i1 * inW + x.i1];
      out[oy * outW + ox] = y.l0 * (x.l0 * x00 + x.l1 * x01) + y.l1 * (x.l0 * x10 + x.l1 * x11);
    }
  }
  return out;
}

/**
 * Sam.postprocess_masks of one [256, 256] low-res logit map (row-major): inputSize = [h', w'] is
 * the pre-padding size in the 1024 frame, origSize = [h, w]; returns [h, w] logits.
 */
export function postprocessMasksReference(
  lowRes: Float32Array,
  inputSize: readonly [number, number],
  origSize: readonly [number, number],
  lowResSize = 256,
  imgSize = 1024,
): Float32Array {
  const big = interpolateBilinearReference(lowRes.subarray(0, lowResSize * lowResSize), lowResSize, lowResSize, imgSize, imgSize);
  const [inH, inW] = inputSize;
  if (!(inH >= 1 && inW >= 1 && inH <= imgSize && inW <= imgSize)) throw new Error(`input size [${inH}, ${inW}] outside 1..${imgSize}`);
  const cropped = new Float32Array(inH * inW);
  for (let y = 0; y < inH; y++) for (let x = 0; x < inW; x++) cropped[y * inW + x] = big[y * imgSize + x];
  return interpolateBilinearReference(cropped, inH, inW, origSize[0], origSize[1]);
}
