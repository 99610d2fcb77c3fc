/**
 * Label Studio's brush RLE: the @thi.ng/rle-pack bit stream of the mask flattened as RGBA bytes
 * (row-major, 4 bytes a pixel, every channel 0 or 255), as label_studio_converter/brush.py
 * `mask2rle` / `encode_rle` writes it: header num (32 bits) = h * w * 4, word size - 1 (5 bits) = 7,
 * the four repeat-length widths - 1 (4 bits each) = 3, 4, 8, 16; then per run of equal bytes
 * `1`, the width index (2 bits), length - 1 in that width (3 for <= 8, 4 for <= 16, 8 for <= 256,
 * else 16 bits, in pieces of 65536 and a rest that keeps the 16-bit width), the byte (8 bits). Runs are always >= 4 long (4 equal
 * channels), so the single-value literal records of the format never occur. The stream is padded
 * with 1 to 8 zero bits to a whole byte (encode_rle's `8 - len % 8`). Pure.
 */
import type { MaskCrop } from './mask-crop.js';

/** Appends bits MSB-first into a growable byte buffer. */
class BitWriter {
  private buf = new Uint8Array(1 << 10);
  private bits = 0;

  write(value: number, width: number): void {
    for (let b = width - 1; b >= 0; b--) {
      const byte = this.bits >> 3;
      if (byte >= this.buf.length) {
        const nb = new Uint8Array(this.buf.length * 2);
        nb.set(this.buf);
        this.buf = nb;
      }
      if ((value >>> b) & 1) this.buf[byte] |= 0x80 >> (this.bits & 7);
      this.bits++;
    }
  }

  /** The bytes, after encode_rle's padding (1..8 zero bits). */
  finish(): number[] {
    this.write(0, 8 - (this.bits % 8));
    return Array.from(this.buf.subarray(0, this.bits >> 3));
  }
}

function writeRun(out: BitWriter, value: number, length: number): void {
  if (length <= 8) {
    out.write(0b100, 3);
    out.write(length - 1, 3);
  } else if (length <= 16) {
    out.write(0b101, 3);
    out.write(length - 1, 4);
  } else if (length <= 256) {
    out.write(0b110, 3);
    out.write(length - 1, 8);
  } else {
    // encode_rle: pieces of 65536, then the rest, every piece in the 16-bit width.
    let left = length;
    while (left > 65536) {
      out.write(0b111, 3);
      out.write(65535, 16);
      out.write(value, 8);
      left -= 65536;
    }
    out.write(0b111, 3);
    out.write(left - 1, 16);
  }
  out.write(value, 8);
}

/**
 * The Label Studio RLE of a mask given as its crop (decodeRleCrop) in an image of
 * crop.imageW x crop.imageH: foreground bytes 255, background 0.
 */
export function encodeLabelStudioRle(crop: MaskCrop): number[] {
  const { data, w, h, x0, y0, imageW, imageH } = crop;
  const total = imageW * imageH * 4;
  const out = new BitWriter();
  out.write(total, 32);
  out.write(7, 5);
  for (const s of [3, 4, 8, 16]) out.write(s - 1, 4);
  let cur = -1;
  let run = 0;
  // Runs in pixels; a pixel is 4 bytes.
  const add = (v: number, pixels: number): void => {
    if (pixels === 0) return;
    if (v === cur) {
      run += pixels;
      return;
    }
    if (run > 0) writeRun(out, cur * 255, run * 4);
    cur = v;
    run = pixels;
  };
  for (let y = 0; y < imageH; y++) {
    const cy = y - y0;
    if (cy < 0 || cy >= h) {
      add(0, imageW);
      continue;
    }
    // Crop columns cx map to image x = cx + x0; the crop may overhang the image by its padding.
    let x = 0;
    for (let cx = Math.max(0, -x0); cx < w && cx + x0 < imageW; cx++) {
      const ix = cx + x0;
      if (ix > x) add(0, ix - x);
      add(data[cy * w + cx] ? 1 : 0, 1);
      x = ix + 1;
    }
    add(0, imageW - x);
  }
  if (run > 0) writeRun(out, cur * 255, run * 4);
  return out.finish();
}

/** Decode a Label Studio RLE (any word size and widths, literal records included) to its byte values. */
export function decodeLabelStudioRle(bytes: ArrayLike<number>): Uint8Array {
  let pos = 0;
  const read = (width: number): number => {
    let v = 0;
    for (let k = 0; k < width; k++, pos++) v = v * 2 + ((bytes[pos >> 3] >> (7 - (pos & 7))) & 1);
    return v;
  };
  const num = read(32);
  const wordSize = read(5) + 1;
  const sizes = [read(4) + 1, read(4) + 1, read(4) + 1, read(4) + 1];
  const out = new Uint8Array(num);
  for (let i = 0; i < num; ) {
    const repeat = read(1);
    const j = i + 1 + read(sizes[read(2)]);
    if (j > num) throw new Error(`Label Studio RLE overruns its ${num} values`);
    if (repeat) {
      out.fill(read(wordSize), i, j);
      i = j;
    } else {
      for (; i < j; i++) out[i] = read(wordSize);
    }
  }
  return out;
}
