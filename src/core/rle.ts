/**
 * COCO run-length encoding of binary masks.
 *
 * Masks are row-major `Uint8Array`s (h*w, values 0/1); COCO RLE is column-major (Fortran order)
 * and always starts with a run of zeros (possibly of length 0). Encoders walk the mask
 * column-major in place rather than materializing a transposed copy.
 *
 * Reference: segment_anything/utils/amg.py (mask_to_rle_pytorch, rle_to_mask, area_from_rle)
 * and pycocotools common/maskApi.c (rleToString, rleFrString, rleToBbox).
 */
import type { BinaryMask, BoxXywh, BoxXyxy, CocoRle, Size, UncompressedRle } from './types.js';

/**
 * Column-major run lengths of an H×W image that is zero everywhere except the sub-rectangle
 * starting at (x0, y0) of size ch×cw, whose content is `crop` (row-major, ch*cw).
 * Columns (and row ranges) outside the crop contribute whole zero runs, so the cost is
 * O(ch*cw + W) and the full-image mask is never allocated.
 */
function columnMajorRuns(
  crop: Uint8Array,
  ch: number,
  cw: number,
  x0: number,
  y0: number,
  imageH: number,
  imageW: number,
): number[] {
  const counts: number[] = [];
  let cur = 0; // value of the run being accumulated; COCO runs start with zeros
  let run = 0;
  const below = imageH - y0 - ch; // zero rows under the crop in every crop column
  // Zero columns left of the crop, and the zero rows above the first crop column.
  run = x0 * imageH;
  for (let cx = 0; cx < cw; cx++) {
    // Rows above the crop (for cx > 0 they join the zeros below the previous column).
    if (y0 > 0) {
      if (cur !== 0) {
        counts.push(run);
        cur = 0;
        run = 0;
      }
      run += y0;
    }
    for (let i = cx, y = 0; y < ch; y++, i += cw) {
      const v = crop[i] !== 0 ? 1 : 0;
      if (v !== cur) {
        counts.push(run);
        cur = v;
        run = 0;
      }
      run++;
    }
    if (below > 0) {
      if (cur !== 0) {
        counts.push(run);
        cur = 0;
        run = 0;
      }
      run += below;
    }
  }
  // Zero columns right of the crop.
  const right = imageW - x0 - cw;
  if (right > 0) {
    if (cur !== 0) {
      counts.push(run);
      cur = 0;
      run = 0;
    }
    run += right * imageH;
  }
  counts.push(run);
  return counts;
}

/** amg.py mask_to_rle_pytorch for one mask: uncompressed RLE, `size` = [h, w]. */
export function maskToRleUncompressed(mask: BinaryMask): UncompressedRle {
  return {
    size: [mask.h, mask.w],
    counts: columnMajorRuns(mask.data, mask.h, mask.w, 0, 0, mask.h, mask.w),
  };
}

/**
 * Uncompressed RLE of the full-image mask that is `cropMask` placed at `cropBox` (XYXY, exclusive
 * max) and zero elsewhere: amg.py uncrop_masks followed by mask_to_rle_pytorch, without padding.
 * imageSize is [h, w].
 */
export function maskToRleUncompressedInCrop(
  cropMask: BinaryMask,
  cropBox: BoxXyxy,
  imageSize: Size,
): UncompressedRle {
  const [x0, y0, x1, y1] = cropBox;
  const [imageH, imageW] = imageSize;
  if (x1 - x0 !== cropMask.w || y1 - y0 !== cropMask.h) {
    throw new Error(
      `crop mask is ${cropMask.h}x${cropMask.w} but crop box [${cropBox.join(', ')}] is ${y1 - y0}x${x1 - x0}`,
    );
  }
  if (x0 < 0 || y0 < 0 || x1 > imageW || y1 > imageH) {
    throw new Error(`crop box [${cropBox.join(', ')}] lies outside the ${imageH}x${imageW} image`);
  }
  return {
    size: [imageH, imageW],
    counts: columnMajorRuns(cropMask.data, cropMask.h, cropMask.w, x0, y0, imageH, imageW),
  };
}

/**
 * pycocotools rleToString: LEB128-like, 5 payload bits per char (chars 48..111), bit 0x20 =
 * "more chars follow", sign taken from bit 0x10 of the last char. From the fourth count on, the
 * value written is the difference to the count two positions back.
 * Arithmetic uses floor division instead of 32-bit JS bit operators so that deltas of counts up
 * to 2^32 (C `long`) encode as in C.
 */
export function rleToString(counts: ArrayLike<number>): string {
  const m = counts.length;
  // 7 chars cover any 35-bit signed delta (|delta| < 2^32 for uint32 counts).
  const buf = new Uint8Array(m * 7);
  let p = 0;
  for (let i = 0; i < m; i++) {
    let x = counts[i];
    if (i > 2) x -= counts[i - 2];
    let more = true;
    while (more) {
      const q = Math.floor(x / 32); // arithmetic shift right by 5
      let c = x - q * 32; // x & 0x1f, in 0..31 also for negative x
      x = q;
      more = (c & 0x10) !== 0 ? x !== -1 : x !== 0;
      if (more) c |= 0x20;
      buf[p++] = c + 48;
    }
  }
  let s = '';
  const CHUNK = 8192; // keep fromCharCode's argument count bounded
  for (let i = 0; i < p; i += CHUNK) {
    s += String.fromCharCode.apply(null, buf.subarray(i, Math.min(p, i + CHUNK)) as unknown as number[]);
  }
  return s;
}

/** pycocotools rleFrString: inverse of rleToString. */
export function rleFromString(s: string): number[] {
  const counts: number[] = [];
  let p = 0;
  const n = s.length;
  while (p < n) {
    let x = 0;
    let scale = 1; // 32^k
    let more = true;
    while (more) {
      if (p >= n) throw new Error('truncated COCO RLE string');
      const c = s.charCodeAt(p) - 48;
      if (c < 0 || c > 63) throw new Error(`invalid character in COCO RLE string at ${p}`);
      x += (c & 0x1f) * scale;
      more = (c & 0x20) !== 0;
      p++;
      scale *= 32;
      if (!more && (c & 0x10) !== 0) x -= scale; // sign-extend: x |= -1 << 5k
    }
    const m = counts.length;
    if (m > 2) x += counts[m - 2];
    counts.push(x);
  }
  return counts;
}

export function uncompressedToCoco(rle: UncompressedRle): CocoRle {
  return { size: [rle.size[0], rle.size[1]], counts: rleToString(rle.counts) };
}

export function cocoToUncompressed(rle: CocoRle): UncompressedRle {
  return { size: [rle.size[0], rle.size[1]], counts: rleFromString(rle.counts) };
}

function countsOf(rle: CocoRle | UncompressedRle): number[] {
  return typeof rle.counts === 'string' ? rleFromString(rle.counts) : rle.counts;
}

/** Compressed COCO RLE of a row-major mask (amg.py mask_to_rle_pytorch + coco_encode_rle). */
export function encodeMask(mask: BinaryMask): CocoRle {
  return { size: [mask.h, mask.w], counts: rleToString(maskToRleUncompressed(mask).counts) };
}

/** Compressed COCO RLE of `cropMask` placed at `cropBox` in an image of `imageSize` ([h, w]). */
export function encodeMaskInCrop(cropMask: BinaryMask, cropBox: BoxXyxy, imageSize: Size): CocoRle {
  return uncompressedToCoco(maskToRleUncompressedInCrop(cropMask, cropBox, imageSize));
}

/** Decode COCO RLE (compressed or not) to a row-major mask (amg.py rle_to_mask). */
export function decodeRle(rle: CocoRle | UncompressedRle): BinaryMask {
  const [h, w] = rle.size;
  const counts = countsOf(rle);
  const data = new Uint8Array(h * w);
  const total = h * w;
  let pos = 0; // column-major position
  for (let j = 0; j < counts.length; j++) {
    const len = counts[j];
    if (pos + len > total) throw new Error(`RLE counts exceed ${h}x${w}`);
    if ((j & 1) === 1 && len > 0) {
      let x = Math.floor(pos / h);
      let y = pos - x * h;
      for (let k = 0; k < len; k++) {
        data[y * w + x] = 1;
        if (++y === h) {
          y = 0;
          x++;
        }
      }
    }
    pos += len;
  }
  if (pos !== total) throw new Error(`RLE counts sum to ${pos}, expected ${total}`);
  return { data, h, w };
}

/** amg.py area_from_rle / pycocotools rleArea: sum of the ones runs. */
export function rleArea(rle: CocoRle | UncompressedRle): number {
  const counts = countsOf(rle);
  let a = 0;
  for (let j = 1; j < counts.length; j += 2) a += counts[j];
  return a;
}

/**
 * pycocotools rleToBbox: XYWH with w/h = max - min + 1 (unlike SAM's box_xyxy_to_xywh).
 * A trailing zero run is ignored; a ones run spanning several columns covers all rows.
 */
export function rleToBbox(rle: CocoRle | UncompressedRle): BoxXywh {
  const [h, w] = rle.size;
  const counts = countsOf(rle);
  const m = counts.length - (counts.length % 2);
  if (m === 0) return [0, 0, 0, 0];
  let xs = w;
  let ys = h;
  let xe = 0;
  let ye = 0;
  let cc = 0;
  let xp = 0;
  for (let j = 0; j < m; j++) {
    cc += counts[j];
    const t = cc - (j % 2); // first pixel of a ones run (j even) or last pixel (j odd)
    const y = t % h;
    const x = (t - y) / h;
    if (j % 2 === 0) xp = x;
    else if (xp < x) {
      ys = 0;
      ye = h - 1;
    }
    xs = Math.min(xs, x);
    xe = Math.max(xe, x);
    ys = Math.min(ys, y);
    ye = Math.max(ye, y);
  }
  return [xs, ys, xe - xs + 1, ye - ys + 1];
}
