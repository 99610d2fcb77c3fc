/**
 * Outer outlines of a binary mask along pixel edges ("crack" following): each 4-connected piece
 * gives one closed ring whose vertices are pixel corners, so the ring encloses exactly the piece's
 * pixels (rasterizing it back with pixel-centre sampling gives the mask again, bit for bit).
 * Pure: typed arrays in and out.
 *
 * cv2.findContours traces pixel centres instead (a ring through the outermost pixels' centres,
 * half a pixel inside the true edge); rings here sit on the edge, which keeps COCO's bbox
 * convention (x .. x + w covers the pixels) and costs nothing on large shapes.
 */
import type { MaskCrop } from './mask-crop.js';

/** Headings: east, south, west, north (y grows downwards). */
const DX = [1, 0, -1, 0];
const DY = [0, 1, 0, -1];

/**
 * Outer rings of the foreground pixels (value 1) of a crop whose border row/column is zero (see
 * decodeRleCrop). Holes are not traced: fill them first (fillHoles) for "outer contours only",
 * or the result is the outline of each piece as if its holes were not there, which is the same.
 * Rings are flat Int32Array [x1, y1, x2, y2, ...] of corner coordinates in image pixels, one
 * vertex per change of direction (like CHAIN_APPROX_SIMPLE), the foreground on the right of the
 * walk (clockwise on screen), first vertex the top-left corner of the piece's first pixel in
 * raster order. Pieces touching only at a corner are separate rings.
 */
export function traceOuterRings(crop: MaskCrop): Int32Array[] {
  const { data, w, h, x0, y0 } = crop;
  const fg = (x: number, y: number): boolean => data[y * w + x] === 1;
  // Pixels whose top edge a ring already walked (eastwards): not a new start.
  const visited = new Uint8Array(w * h);
  const rings: Int32Array[] = [];
  let buf = new Int32Array(64);
  for (let y = 1; y < h - 1; y++) {
    for (let x = 1; x < w - 1; x++) {
      const i = y * w + x;
      if (data[i] !== 1 || data[i - w] === 1 || visited[i]) continue;
      // Walk from corner (x, y) heading east along the top edge of pixel (x, y).
      let n = 0;
      let cx = x;
      let cy = y;
      let d = 0;
      do {
        if (d === 0) visited[cy * w + cx] = 1;
        cx += DX[d];
        cy += DY[d];
        // The two pixels ahead of corner (cx, cy): ahead-left and ahead-right of heading d.
        let al: boolean;
        let ar: boolean;
        switch (d) {
          case 0:
            al = fg(cx, cy - 1);
            ar = fg(cx, cy);
            break;
          case 1:
            al = fg(cx, cy);
            ar = fg(cx - 1, cy);
            break;
          case 2:
            al = fg(cx - 1, cy);
            ar = fg(cx - 1, cy - 1);
            break;
          default:
            al = fg(cx - 1, cy - 1);
            ar = fg(cx, cy - 1);
        }
        // Foreground on the right; at a diagonal pinch turn right (4-connected pieces).
        const nd = ar ? (al ? (d + 3) & 3 : d) : (d + 1) & 3;
        if (nd !== d) {
          if (n + 2 > buf.length) {
            const b = new Int32Array(buf.length * 2);
            b.set(buf);
            buf = b;
          }
          buf[n++] = cx + x0;
          buf[n++] = cy + y0;
          d = nd;
        }
      } while (!(cx === x && cy === y && d === 0));
      // The start corner closes the walk as its last vertex: move it to the front.
      const ring = new Int32Array(n);
      ring[0] = buf[n - 2];
      ring[1] = buf[n - 1];
      ring.set(buf.subarray(0, n - 2), 2);
      rings.push(ring);
    }
  }
  return rings;
}

/** Shoelace area of a flat ring (positive when clockwise on screen, i.e. as traced here). */
export function ringArea(ring: ArrayLike<number>): number {
  const n = ring.length >> 1;
  let a = 0;
  for (let i = 0, j = n - 1; i < n; j = i++) a += ring[2 * j] * ring[2 * i + 1] - ring[2 * i] * ring[2 * j + 1];
  return a / 2;
}
