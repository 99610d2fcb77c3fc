import { IMAGE_SIZE } from '../core/constants.js';
import { readFile } from 'node:fs/promises';
import sharp from 'sharp';
import { resizeBilinearPil, resizeNormalizeSam2 } from '../core/resample.js';
import { getPreprocessShape } from '../core/transforms.js';
import type { BoxXyxy, Size } from '../core/types.js';
import { inputError } from '../util/errors.js';

/** 8-bit RGB pixels, row-major HWC: `data.length === height * width * 3`. */
export interface RgbImage {
  data: Uint8Array;
  width: number;
  height: number;
}

export { IMAGE_SIZE };
export const PIXEL_MEAN = [123.675, 116.28, 103.53] as const;
export const PIXEL_STD = [58.395, 57.12, 57.375] as const;
/** SAM 2's ImageNet mean/std, in 0..1 units (SAM 1's are in 0..255). */
export const SAM2_PIXEL_MEAN = [0.485, 0.456, 0.406] as const;
export const SAM2_PIXEL_STD = [0.229, 0.224, 0.225] as const;

/**
 * SAM 2's encoder input: the whole image resized to exactly 1024x1024 (aspect not kept, no
 * padding), bilinear antialiased, ImageNet-normalized. Float32Array [1, 3, 1024, 1024].
 */
export function preprocessSam2(image: RgbImage): Float32Array {
  return resizeNormalizeSam2(image.data, image.width, image.height, IMAGE_SIZE, IMAGE_SIZE, SAM2_PIXEL_MEAN, SAM2_PIXEL_STD);
}

/**
 * Decode an image file the way SAM's scripts see it: EXIF orientation applied, alpha dropped
 * (not composited, as PIL's convert('RGB')), grayscale expanded to RGB, 16-bit reduced to 8-bit.
 */
export async function loadImage(path: string): Promise<RgbImage> {
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw inputError(`${path}: no such file; check the path`, err);
    if (code === 'EISDIR') throw inputError(`${path}: is a folder, not an image; pass an image file`, err);
    throw inputError(`${path}: cannot read (${code ?? 'unknown error'}); check its permissions`, err);
  }
  if (bytes.length === 0) throw inputError(`${path}: empty file (0 bytes); re-export or re-download the image`);
  try {
    const { data, info } = await sharp(bytes, { failOn: 'warning', limitInputPixels: 1 << 30 })
      .autoOrient()
      .removeAlpha()
      .toColourspace('srgb')
      .raw({ depth: 'uchar' })
      .toBuffer({ resolveWithObject: true });
    if (info.channels !== 3) {
      throw new Error(`decoded to ${info.channels} channels`);
    }
    return { data: new Uint8Array(data.buffer, data.byteOffset, data.length), width: info.width, height: info.height };
  } catch (err) {
    const reason = String((err as Error).message ?? err).split('\n')[0];
    if (/unsupported image format/i.test(reason)) {
      throw inputError(`${path}: not an image sharp can decode (JPEG, PNG, WebP, TIFF, GIF, AVIF); convert it or remove it from the input`, err);
    }
    throw inputError(`${path}: corrupt or truncated image (${reason}); re-export or re-download it`, err);
  }
}

/** The sub-image `box` (XYXY, exclusive max), as SAM's generator slices `image[y0:y1, x0:x1]`. */
export function cropImage(image: RgbImage, box: BoxXyxy): RgbImage {
  const [x0, y0, x1, y1] = box;
  if (x0 === 0 && y0 === 0 && x1 === image.width && y1 === image.height) return image;
  const w = x1 - x0;
  const h = y1 - y0;
  const out = new Uint8Array(w * h * 3);
  for (let y = 0; y < h; y++) {
    const src = ((y0 + y) * image.width + x0) * 3;
    out.set(image.data.subarray(src, src + w * 3), y * w * 3);
  }
  return { data: out, width: w, height: h };
}

/**
 * Resize so the longest side is 1024, as SAM's ResizeLongestSide.apply_image: PIL's bilinear
 * resize of the uint8 image, reproduced bit for bit by core/resample.ts (libvips' kernels differ
 * from PIL's by a grey level in ~11% of the pixels).
 *
 * Extreme aspect ratios (20000x3, 1x5000): getPreprocessShape clamps a side the official code
 * rounds to 0 to 1 pixel, so the result is e.g. 1024x1, never a 0-sized image.
 */
export async function resizeLongestSide(image: RgbImage, longSide = IMAGE_SIZE): Promise<RgbImage> {
  const [newH, newW] = getPreprocessShape(image.height, image.width, longSide);
  if (newH === image.height && newW === image.width) return image;
  return { data: resizeBilinearPil(image.data, image.width, image.height, newW, newH), width: newW, height: newH };
}

/**
 * (v - mean) / std per channel for every uint8 value, rounded as PyTorch computes it in float32
 * (the subtraction is exact in float64; float64 division then rounding to float32 is correctly
 * rounded), so the encoder input is bit-identical to the official one.
 */
const NORMALIZE_LUT: Float32Array[] = [0, 1, 2].map((c) => {
  const mean = Math.fround(PIXEL_MEAN[c]);
  const std = Math.fround(PIXEL_STD[c]);
  const lut = new Float32Array(256);
  for (let v = 0; v < 256; v++) lut[v] = Math.fround(v - mean) / std;
  return lut;
});

/**
 * The encoder input: resized image normalized per channel and zero-padded bottom/right.
 * Returns Float32Array [1, 3, 1024, 1024] (NCHW) and the pre-padding size [h', w'].
 */
export async function preprocess(image: RgbImage): Promise<{ tensor: Float32Array; inputSize: Size }> {
  const resized = await resizeLongestSide(image);
  const plane = IMAGE_SIZE * IMAGE_SIZE;
  const tensor = new Float32Array(3 * plane);
  const { data, width, height } = resized;
  for (let c = 0; c < 3; c++) {
    const lut = NORMALIZE_LUT[c];
    const base = c * plane;
    for (let y = 0; y < height; y++) {
      const row = base + y * IMAGE_SIZE;
      let src = y * width * 3 + c;
      for (let x = 0; x < width; x++, src += 3) tensor[row + x] = lut[data[src]];
    }
  }
  return { tensor, inputSize: [height, width] };
}
