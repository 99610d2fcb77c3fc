/**
 * Reference boxes of row-major binary masks, computed pixel by pixel (independent of the code
 * under test), for the three conventions the outputs use.
 */

/** Inclusive extent [x0, y0, x1, y1] of the ones, or undefined for an empty mask. */
function extent(mask: Uint8Array, w: number): [number, number, number, number] | undefined {
  let [x0, y0, x1, y1] = [Infinity, Infinity, -1, -1];
  mask.forEach((v, i) => {
    if (!v) return;
    const x = i % w;
    const y = (i - x) / w;
    x0 = Math.min(x0, x);
    y0 = Math.min(y0, y);
    x1 = Math.max(x1, x);
    y1 = Math.max(y1, y);
  });
  return x1 < 0 ? undefined : [x0, y0, x1, y1];
}

/** SAM's record bbox: XYWH of the inclusive-max box (w = x1 - x0); [0,0,0,0] when empty. */
export function samBbox(mask: Uint8Array, w: number): number[] {
  const e = extent(mask, w);
  return e ? [e[0], e[1], e[2] - e[0], e[3] - e[1]] : [0, 0, 0, 0];
}

/** COCO's tight box (pycocotools toBbox): [x, y, w, h] with w, h the pixel extent; [0,0,0,0] when empty. */
export function tightBbox(mask: Uint8Array, w: number): number[] {
  const e = extent(mask, w);
  return e ? [e[0], e[1], e[2] - e[0] + 1, e[3] - e[1] + 1] : [0, 0, 0, 0];
}
