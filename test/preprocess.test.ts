import { join } from 'node:path';
import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import { IMAGE_SIZE, PIXEL_MEAN, PIXEL_STD, cropImage, loadImage, preprocess, resizeLongestSide } from '../src/io/image.js';
import { readGoldenNpy, sharedDir } from './helpers/golden.js';

/**
 * The official predictor resizes with PIL (bilinear, antialiased when shrinking, 22-bit fixed
 * point); core/resample.ts ports that arithmetic, so the result is PIL's to the grey level: one
 * enlarging case (dog 534x800 -> 684x1024), a 17x enlargement (40x60) and a shrink (1500x900).
 */
const CASES = ['dog-534x800', 'synthetic-40x60', 'tall-1500x900'];

describe('preprocessing against PIL golden images', () => {
  for (const name of CASES) {
    it(`resizes ${name} exactly as PIL`, async () => {
      const dir = join(sharedDir(), 'golden');
      const input = await loadImage(join(dir, `preprocess-${name}.input.png`));
      const ref = await sharp(join(dir, `preprocess-${name}.resized.png`)).removeAlpha().raw().toBuffer({ resolveWithObject: true });
      const out = await resizeLongestSide(input);
      expect([out.height, out.width]).toEqual([ref.info.height, ref.info.width]);
      expect(Math.max(out.width, out.height)).toBe(IMAGE_SIZE);
      let sum = 0;
      let max = 0;
      for (let i = 0; i < out.data.length; i++) {
        const d = Math.abs(out.data[i] - ref.data[i]);
        sum += d;
        if (d > max) max = d;
      }
      const mad = sum / out.data.length;
      console.log(`preprocess ${name}: mean abs diff ${mad.toFixed(3)} grey levels, max ${max}`);
      expect(max).toBe(0);
      expect(mad).toBe(0);
    });
  }

  it("gives dog.jpg's encoder input bit for bit as SamPredictor.set_image", async () => {
    const image = await loadImage(join(sharedDir(), 'images', 'dog.jpg'));
    const { tensor, inputSize } = await preprocess(image);
    expect(inputSize).toEqual([684, 1024]);
    const want = readGoldenNpy('dog.preprocessed_input.npy');
    expect(want.shape).toEqual([1, 3, 1024, 1024]);
    let diff = 0;
    for (let i = 0; i < tensor.length; i++) if (tensor[i] !== want.data[i]) diff++;
    expect(diff).toBe(0);
  });

  it('normalizes, pads with zeros and lays out NCHW', async () => {
    const img = { data: new Uint8Array(20 * 10 * 3), width: 10, height: 20 };
    for (let i = 0; i < 200; i++) img.data.set([200, 100, 50], i * 3);
    const { tensor, inputSize } = await preprocess(img);
    expect(inputSize).toEqual([1024, 512]);
    expect(tensor.length).toBe(3 * 1024 * 1024);
    for (let c = 0; c < 3; c++) {
      const v = ([200, 100, 50][c] - PIXEL_MEAN[c]) / PIXEL_STD[c];
      expect(tensor[c * 1024 * 1024 + 5 * 1024 + 7]).toBeCloseTo(v, 5);
      expect(tensor[c * 1024 * 1024 + 5 * 1024 + 600]).toBe(0);
    }
  });

  it('crops like a numpy slice', () => {
    const img = { data: new Uint8Array(4 * 3 * 3).map((_, i) => i), width: 3, height: 4 };
    const c = cropImage(img, [1, 2, 3, 4]);
    expect([c.width, c.height]).toEqual([2, 2]);
    expect([...c.data]).toEqual([21, 22, 23, 24, 25, 26, 30, 31, 32, 33, 34, 35]);
  });
});
