/**
 * SAM 2's mask upscaling (256x256 low-res logits straight to the image size, bilinear,
 * align_corners=False) against the official predict(return_logits=True) of the golden `point`
 * case (../shared/golden/sam2). The stored low-res logits are clamped to ±32 and the official
 * upscale read unclamped ones: only pixels whose footprint holds a clamped value may differ.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { createSam2Upscaler } from '../src/core/upscale.js';
import { decodeNpyFloat32 } from '../src/io/npy.js';
import { sharedDir } from './helpers/golden.js';

const dir = (): string => path.join(sharedDir(), 'golden', 'sam2', 'cases');
function npy(name: string): { data: Float32Array; shape: number[] } {
  const r = decodeNpyFloat32(new Uint8Array(readFileSync(path.join(dir(), name))));
  if (!r) throw new Error(`${name}: not a float32 .npy`);
  return { data: r.data, shape: r.shape };
}

describe('SAM 2 mask upscaling', () => {
  it('reproduces the official upscaled logits of the point case (3 masks, 534x800)', () => {
    const low = npy('point.low_res_masks.npy');
    const ref = npy('point.mask_logits.npy');
    expect(low.shape).toEqual([3, 256, 256]);
    const [c, h, w] = ref.shape;
    expect([c, h, w]).toEqual([3, 534, 800]);
    const upscale = createSam2Upscaler([h, w]);
    let max = 0;
    let sum = 0;
    let flips = 0;
    const clamped = low.data.some((v) => Math.abs(v) >= 32);
    for (let k = 0; k < c; k++) {
      const out = upscale(low.data.subarray(k * 65536, (k + 1) * 65536));
      const want = ref.data.subarray(k * h * w, (k + 1) * h * w);
      for (let i = 0; i < out.length; i++) {
        const d = Math.abs(out[i] - want[i]);
        max = Math.max(max, d);
        sum += d;
        if (out[i] > 0 !== want[i] > 0) flips++;
      }
    }
    console.log(`SAM 2 upscale vs official: max ${max.toExponential(2)}, mean ${(sum / ref.data.length).toExponential(2)}, mask pixels differing ${flips} (low-res clamped: ${clamped})`);
    expect(clamped).toBe(false);
    expect(max).toBeLessThanOrEqual(1e-4);
    expect(flips).toBe(0);
  });

  it('with a floor, pixels certainly below it are -inf and the rest are unchanged', () => {
    const low = npy('point.low_res_masks.npy').data.subarray(0, 65536);
    const full = createSam2Upscaler([534, 800])(low);
    // Random weights leave few logits far below 0: a high floor makes the skipping path run.
    const floor = Float32Array.from(low).sort()[Math.floor(low.length * 0.9)];
    const floored = createSam2Upscaler([534, 800])(low, undefined, floor);
    let skipped = 0;
    let bad = 0;
    for (let i = 0; i < full.length; i++) {
      if (floored[i] === -Infinity) {
        skipped++;
        if (!(full[i] < floor)) bad++;
      } else if (floored[i] !== full[i]) bad++;
    }
    expect(bad).toBe(0);
    expect(skipped).toBeGreaterThan(0);
  });
});
