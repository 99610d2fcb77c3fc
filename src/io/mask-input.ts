import { readFile } from 'node:fs/promises';
import sharp, { type OutputInfo } from 'sharp';
import { getPreprocessShape } from '../core/transforms.js';
import type { Size } from '../core/types.js';
import { inputError } from '../util/errors.js';
import { decodeNpyFloat32 } from './npy.js';

const LOW_RES = 256;
/** Logit given to a fully covered low-res cell of a mask read from an image (SAM's low-res logits span roughly ±20). */
const MASK_LOGIT = 10;

/**
 * A previous mask as the decoder's `mask_input` [256, 256]: either low-res logits saved by
 * `sam segment --low-res-out` (.npy, shape [256,256], [1,256,256] or [1,1,256,256]), or a binary
 * mask image of the original size (white = mask), mapped into the padded 1024 frame and averaged
 * down to 256×256, then turned into logits ±MASK_LOGIT.
 */
export async function readMaskInput(path: string, originalSize: Size): Promise<Float32Array> {
  const buf = await readFile(path).catch((err: unknown) => {
    throw inputError(`${path}: cannot read the mask input; check the path`, err);
  });
  const npy = decodeNpyFloat32(buf);
  if (npy) {
    if (npy.data.length !== LOW_RES * LOW_RES) {
      throw inputError(`${path}: mask input must be float32 [256,256] low-res logits, found shape [${npy.shape.join(',')}]; use the file 'sam segment --low-res-out' writes`);
    }
    return npy.data;
  }
  const [h, w] = originalSize;
  let grey: Buffer;
  let info: OutputInfo;
  try {
    ({ data: grey, info } = await sharp(buf).autoOrient().removeAlpha().greyscale().raw({ depth: 'uchar' }).toBuffer({ resolveWithObject: true }));
  } catch (err) {
    throw inputError(`${path}: mask input is neither a .npy of low-res logits nor a readable mask image; pass a PNG mask or a --low-res-out file`, err);
  }
  if (info.width !== w || info.height !== h) {
    throw inputError(`${path}: mask image is ${info.width}x${info.height} but the image is ${w}x${h}; give a mask of the image's size`);
  }
  const [nh, nw] = getPreprocessShape(h, w, 1024);
  const resized = await sharp(grey, { raw: { width: w, height: h, channels: 1 } })
    .resize(nw, nh, { kernel: 'linear', fit: 'fill' })
    .raw()
    .toBuffer();
  // Average 4×4 blocks of the zero-padded 1024×1024 frame into 256×256.
  const sum = new Float32Array(LOW_RES * LOW_RES);
  for (let y = 0; y < nh; y++) {
    const row = (y >> 2) * LOW_RES;
    for (let x = 0; x < nw; x++) sum[row + (x >> 2)] += resized[y * nw + x];
  }
  const out = new Float32Array(LOW_RES * LOW_RES);
  for (let i = 0; i < out.length; i++) out[i] = (sum[i] / (16 * 255) - 0.5) * 2 * MASK_LOGIT;
  return out;
}
