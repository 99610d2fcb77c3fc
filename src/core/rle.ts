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
import type { BinaryMask, BoxXywh, BoxXyxy, CocoRle, CompactRle, Size, UncompressedRle } from './types.js';

/** Any of the three RLE forms: counts as a number[], a pycocotools string, or its bytes. */
export type AnyRle = CocoRle | UncompressedRle | CompactRle;

/** Counts are held as uint32: an image must have fewer than 2^32 pixels. */
const MAX_PIXELS = 0xffffffff;

function checkImageSize(imageH: number, imageW: number): void {
  if (imageH * imageW > MAX_PIXELS) throw new Error(`a ${imageH}x${imageW} image has too many pixels for RLE counts`);
}

/**
 * Column-major run lengths of an H×W image that is zero everywhere except the sub-rectangle
 * starting at (x0, y0) of size ch×cw, whose content is `crop` (row-major, ch*cw), written into
 * `out` (grown as needed). Columns (and row ranges) outside the crop contribute whole zero runs,
 * so the cost is O(ch*cw + W) and the full-image mask is never allocated.
 */
function columnMajorRuns(
  out: RunBuffer,
  crop: Uint8Array,
  ch: number,
  cw: number,
  x0: number,
  y0: number,
  imageH: number,
  imageW: number,
  /** Row stride and first index of the ch×cw block in `crop` (a sub-rectangle of a larger mask). */
  stride = cw,
  first = 0,
): number {
  checkImageSize(imageH, imageW);
  let buf: Uint32Array = out.data;
  let n = 0;
  let cur = 0; // value of the run being accumulated; COCO runs start with zeros
  let run = 0;
  const below = imageH - y0 - ch; // zero rows under the crop in every crop column
  // Zero columns left of the crop, and the zero rows above the first crop column.
  run = x0 * imageH;
  for (let cx = 0; cx < cw; cx++) {
    // Rows above the crop (for cx > 0 they join the zeros below the previous column).
    if (y0 > 0) {
      if (cur !== 0) {
        if (n === buf.length) buf = out.grow();
        buf[n++] = run;
        cur = 0;
        run = 0;
      }
      run += y0;
    }
    for (let i = first + cx, y = 0; y < ch; y++, i += stride) {
      const v = crop[i] !== 0 ? 1 : 0;
      if (v !== cur) {
        if (n === buf.length) buf = out.grow();
        buf[n++] = run;
        cur = v;
        run = 0;
      }
      run++;
    }
    if (below > 0) {
      if (cur !== 0) {
        if (n === buf.length) buf = out.grow();
        buf[n++] = run;
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
      if (n === buf.length) buf = out.grow();
      buf[n++] = run;
      cur = 0;
      run = 0;
    }
    run += right * imageH;
  }
  if (n === buf.length) buf = out.grow();
  buf[n++] = run;
  return n;
}

/** A growable Uint32Array of run lengths, reused from mask to mask. */
class RunBuffer {
  data: Uint32Array = new Uint32Array(1 << 12);
  grow(): Uint32Array {
    const d = new Uint32Array(this.data.length * 2);
    d.set(this.data);
    this.data = d;
    return d;
  }
}

function checkCrop(cropMask: BinaryMask, cropBox: BoxXyxy, imageSize: Size): void {
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
}

/**
 * pycocotools rleToString's bytes for counts[0..m): LEB128-like, 5 payload bits per char
 * (chars 48..111), bit 0x20 = "more chars follow", sign taken from bit 0x10 of the last char.
 * From the fourth count on, the value written is the difference to the count two positions back.
 * Deltas within int32 use bit operators; larger ones (counts up to 2^32, C `long`) use floor
 * division, which gives the same digits. Returns the number of bytes written into `buf`, which
 * must hold m * 7 bytes (7 chars cover any 35-bit signed delta).
 */
function writeCompressedCounts(counts: ArrayLike<number>, m: number, buf: Uint8Array): number {
  let p = 0;
  for (let i = 0; i < m; i++) {
    let x = counts[i];
    if (i > 2) x -= counts[i - 2];
    if (x >= -0x80000000 && x <= 0x7fffffff) {
      x |= 0;
      for (;;) {
        let c = x & 0x1f;
        x >>= 5;
        const more = (c & 0x10) !== 0 ? x !== -1 : x !== 0;
        if (more) c |= 0x20;
        buf[p++] = c + 48;
        if (!more) break;
      }
    } else {
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
  }
  return p;
}

/** Bytes (ASCII) as a JS string, fromCharCode's argument count kept bounded. */
function bytesToString(bytes: Uint8Array): string {
  let s = '';
  const CHUNK = 8192;
  for (let i = 0; i < bytes.length; i += CHUNK) {
    s += String.fromCharCode.apply(null, bytes.subarray(i, Math.min(bytes.length, i + CHUNK)) as unknown as number[]);
  }
  return s;
}

/**
 * Encodes masks to RLE with scratch buffers reused from mask to mask, so encoding a mask
 * allocates only its result. `scan*` walks a mask into run lengths (kept in the encoder until the
 * next scan); `compact()` then gives the compact RLE, `area()` its area, `countsArray()` the
 * uncompressed counts. Synchronous: one encoder per caller.
 */
export class RleEncoder {
  private readonly runs = new RunBuffer();
  private bytes = new Uint8Array(1 << 14);
  private n = 0;
  private size: Size = [0, 0];

  /** Runs of the mask `mask` (row-major, h×w); returns the number of runs. */
  scan(mask: BinaryMask): number {
    this.size = [mask.h, mask.w];
    this.n = columnMajorRuns(this.runs, mask.data, mask.h, mask.w, 0, 0, mask.h, mask.w);
    return this.n;
  }

  /**
   * Runs of the full-image mask that is `cropMask` placed at `cropBox` (XYXY, exclusive max) and
   * zero elsewhere in an image of `imageSize` ([h, w]); returns the number of runs. `maskBox`
   * (XYXY, inclusive, in crop pixels; e.g. maskLogitStats' box) says no one lies outside it, so
   * only the box is read. An empty mask's [0, 0, 0, 0] is fine: pixel (0, 0) is then 0 too.
   */
  scanInCrop(cropMask: BinaryMask, cropBox: BoxXyxy, imageSize: Size, maskBox?: ArrayLike<number>): number {
    checkCrop(cropMask, cropBox, imageSize);
    const [x0, y0] = cropBox;
    const [imageH, imageW] = imageSize;
    this.size = [imageH, imageW];
    if (maskBox) {
      // Only the box can hold ones: scan it as the crop, the rest of the image is zero runs.
      const [bx0, by0, bx1, by1] = [maskBox[0], maskBox[1], maskBox[2], maskBox[3]];
      if (!(bx0 >= 0 && by0 >= 0 && bx1 >= bx0 && by1 >= by0 && bx1 < cropMask.w && by1 < cropMask.h)) {
        throw new Error(`mask box [${Array.from(maskBox).join(', ')}] lies outside the ${cropMask.h}x${cropMask.w} crop mask`);
      }
      const w = cropMask.w;
      this.n = columnMajorRuns(this.runs, cropMask.data, by1 - by0 + 1, bx1 - bx0 + 1, x0 + bx0, y0 + by0, imageH, imageW, w, by0 * w + bx0);
    } else {
      this.n = columnMajorRuns(this.runs, cropMask.data, cropMask.h, cropMask.w, x0, y0, imageH, imageW);
    }
    return this.n;
  }

  /** Number of runs of the last scanned mask. */
  get runCount(): number {
    return this.n;
  }

  /** Area of the last scanned mask: the sum of its ones runs (rleArea). */
  area(): number {
    const runs = this.runs.data;
    let a = 0;
    for (let j = 1; j < this.n; j += 2) a += runs[j];
    return a;
  }

  /** Compact RLE of the last scanned mask: an exact-size copy of the compressed counts. */
  compact(): CompactRle {
    const need = this.n * 7;
    if (this.bytes.length < need) this.bytes = new Uint8Array(Math.max(need, this.bytes.length * 2));
    const p = writeCompressedCounts(this.runs.data, this.n, this.bytes);
    return { size: [this.size[0], this.size[1]], bytes: this.bytes.slice(0, p) };
  }

  /** Uncompressed counts of the last scanned mask, as a plain array. */
  countsArray(): number[] {
    return Array.from(this.runs.data.subarray(0, this.n));
  }
}

/** Compact RLE of a row-major mask. */
export function encodeMaskCompact(mask: BinaryMask): CompactRle {
  const enc = new RleEncoder();
  enc.scan(mask);
  return enc.compact();
}

/** Compact RLE of `cropMask` placed at `cropBox` in an image of `imageSize` ([h, w]). */
export function encodeMaskInCropCompact(cropMask: BinaryMask, cropBox: BoxXyxy, imageSize: Size): CompactRle {
  const enc = new RleEncoder();
  enc.scanInCrop(cropMask, cropBox, imageSize);
  return enc.compact();
}

/** amg.py mask_to_rle_pytorch for one mask: uncompressed RLE, `size` = [h, w]. */
export function maskToRleUncompressed(mask: BinaryMask): UncompressedRle {
  const enc = new RleEncoder();
  enc.scan(mask);
  return { size: [mask.h, mask.w], counts: enc.countsArray() };
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
  const enc = new RleEncoder();
  enc.scanInCrop(cropMask, cropBox, imageSize);
  return { size: [imageSize[0], imageSize[1]], counts: enc.countsArray() };
}

/**
 * pycocotools rleToString: LEB128-like, 5 payload bits per char (chars 48..111), bit 0x20 =
 * "more chars follow", sign taken from bit 0x10 of the last char. From the fourth count on, the
 * value written is the difference to the count two positions back (see writeCompressedCounts).
 */
export function rleToString(counts: ArrayLike<number>): string {
  const buf = new Uint8Array(counts.length * 7);
  return bytesToString(buf.subarray(0, writeCompressedCounts(counts, counts.length, buf)));
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

/**
 * The counts of a compact RLE (rleFrString on its bytes) as a Uint32Array: 4 bytes a run, for a
 * caller that walks them once (decoding, area, bbox). Counts outside 0..2^32-1 are refused.
 */
export function compactCounts(rle: CompactRle): Uint32Array {
  const b = rle.bytes;
  let m = 0;
  for (let i = 0; i < b.length; i++) {
    const c = b[i] - 48;
    if (c < 0 || c > 63) throw new Error(`invalid byte in compact RLE at ${i}`);
    if ((c & 0x20) === 0) m++;
  }
  if (b.length > 0 && ((b[b.length - 1] - 48) & 0x20) !== 0) throw new Error('truncated compact RLE');
  const counts = new Uint32Array(m);
  let p = 0;
  for (let j = 0; j < m; j++) {
    let x = 0;
    let scale = 1; // 32^k
    let more = true;
    while (more) {
      const c = b[p] - 48;
      x += (c & 0x1f) * scale;
      more = (c & 0x20) !== 0;
      p++;
      scale *= 32;
      if (!more && (c & 0x10) !== 0) x -= scale; // sign-extend
    }
    if (j > 2) x += counts[j - 2];
    if (!(x >= 0 && x <= 0xffffffff)) throw new Error(`compact RLE count ${j} is ${x}, outside 0..2^32-1`);
    counts[j] = x;
  }
  return counts;
}

export function uncompressedToCoco(rle: UncompressedRle): CocoRle {
  return { size: [rle.size[0], rle.size[1]], counts: rleToString(rle.counts) };
}

export function cocoToUncompressed(rle: CocoRle): UncompressedRle {
  return { size: [rle.size[0], rle.size[1]], counts: rleFromString(rle.counts) };
}

/** The pycocotools string of a compact RLE: the same characters. */
export function compactToCoco(rle: CompactRle): CocoRle {
  return { size: [rle.size[0], rle.size[1]], counts: bytesToString(rle.bytes) };
}

/** A compact RLE from a pycocotools string (its characters, checked to lie in 48..111). */
export function cocoToCompact(rle: CocoRle): CompactRle {
  const s = rle.counts;
  const bytes = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 48 || c > 111) throw new Error(`invalid character in COCO RLE string at ${i}`);
    bytes[i] = c;
  }
  return { size: [rle.size[0], rle.size[1]], bytes };
}

export function compactToUncompressed(rle: CompactRle): UncompressedRle {
  return { size: [rle.size[0], rle.size[1]], counts: Array.from(compactCounts(rle)) };
}

export function uncompressedToCompact(rle: UncompressedRle): CompactRle {
  const buf = new Uint8Array(rle.counts.length * 7);
  const p = writeCompressedCounts(rle.counts, rle.counts.length, buf);
  return { size: [rle.size[0], rle.size[1]], bytes: buf.slice(0, p) };
}

function countsOf(rle: AnyRle): ArrayLike<number> {
  if ('bytes' in rle) return compactCounts(rle);
  return typeof rle.counts === 'string' ? rleFromString(rle.counts) : rle.counts;
}

/** Compressed COCO RLE of a row-major mask (amg.py mask_to_rle_pytorch + coco_encode_rle). */
export function encodeMask(mask: BinaryMask): CocoRle {
  return compactToCoco(encodeMaskCompact(mask));
}

/** Compressed COCO RLE of `cropMask` placed at `cropBox` in an image of `imageSize` ([h, w]). */
export function encodeMaskInCrop(cropMask: BinaryMask, cropBox: BoxXyxy, imageSize: Size): CocoRle {
  return compactToCoco(encodeMaskInCropCompact(cropMask, cropBox, imageSize));
}

/** Decode COCO RLE (any form) to a row-major mask (amg.py rle_to_mask). */
export function decodeRle(rle: AnyRle): BinaryMask {
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
export function rleArea(rle: AnyRle): number {
  const counts = countsOf(rle);
  let a = 0;
  for (let j = 1; j < counts.length; j += 2) a += counts[j];
  return a;
}

/**
 * pycocotools rleToBbox: XYWH with w/h = max - min + 1 (unlike SAM's box_xyxy_to_xywh).
 * A trailing zero run is ignored; a ones run spanning several columns covers all rows.
 */
export function rleToBbox(rle: AnyRle): BoxXywh {
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
