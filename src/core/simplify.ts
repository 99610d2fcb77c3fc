/**
 * Douglas-Peucker simplification of closed rings (cv2.approxPolyDP(closed=True) in spirit), on
 * flat typed arrays, iterative (a stack, no recursion: noisy outlines have 1e5+ vertices).
 * Pure.
 */

/** Squared distance from (px, py) to the segment (ax, ay)-(bx, by). */
function segDist2(px: number, py: number, ax: number, ay: number, bx: number, by: number): number {
  let dx = bx - ax;
  let dy = by - ay;
  if (dx !== 0 || dy !== 0) {
    const t = ((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy);
    if (t > 1) {
      ax = bx;
      ay = by;
    } else if (t > 0) {
      ax += dx * t;
      ay += dy * t;
    }
  }
  dx = px - ax;
  dy = py - ay;
  return dx * dx + dy * dy;
}

/** Mark in `keep` the vertices DP keeps strictly between `first` and `last` (indices into the open chain `pts`). */
function dpChain(pts: ArrayLike<number>, first: number, last: number, tol2: number, keep: Uint8Array): void {
  const stack: number[] = [first, last];
  while (stack.length > 0) {
    const b = stack.pop() as number;
    const a = stack.pop() as number;
    let best = -1;
    let bestD = tol2;
    const ax = pts[2 * a];
    const ay = pts[2 * a + 1];
    const bx = pts[2 * b];
    const by = pts[2 * b + 1];
    for (let i = a + 1; i < b; i++) {
      const d = segDist2(pts[2 * i], pts[2 * i + 1], ax, ay, bx, by);
      if (d > bestD) {
        bestD = d;
        best = i;
      }
    }
    if (best >= 0) {
      keep[best] = 1;
      stack.push(a, best, best, b);
    }
  }
}

/**
 * A closed ring (flat [x1, y1, ...], first vertex not repeated) simplified so that no dropped
 * vertex lies farther than `tolerance` pixels from the kept outline. The first vertex is kept, as
 * is the vertex farthest from it (the ring is split there into two chains). Tolerance 0 only drops
 * collinear vertices. A result under 3 vertices gives the ring back unchanged: a piece too small to
 * simplify keeps its outline rather than vanish.
 */
export function simplifyRing(ring: Int32Array | Float64Array, tolerance: number): Int32Array | Float64Array {
  const n = ring.length >> 1;
  if (n <= 3) return ring;
  // The chain 0..n (vertex n = vertex 0 again) split at the vertex farthest from vertex 0.
  const pts = new Float64Array(2 * (n + 1));
  pts.set(ring);
  pts[2 * n] = ring[0];
  pts[2 * n + 1] = ring[1];
  let far = 1;
  let farD = -1;
  for (let i = 1; i < n; i++) {
    const d = (ring[2 * i] - ring[0]) ** 2 + (ring[2 * i + 1] - ring[1]) ** 2;
    if (d > farD) {
      farD = d;
      far = i;
    }
  }
  const keep = new Uint8Array(n + 1);
  keep[0] = 1;
  keep[far] = 1;
  // A tiny epsilon so that tolerance 0 drops exactly collinear vertices only.
  const tol2 = tolerance > 0 ? tolerance * tolerance : 1e-12;
  dpChain(pts, 0, far, tol2, keep);
  dpChain(pts, far, n, tol2, keep);
  let m = 0;
  for (let i = 0; i < n; i++) m += keep[i];
  if (m < 3) return ring;
  const out = ring instanceof Int32Array ? new Int32Array(2 * m) : new Float64Array(2 * m);
  for (let i = 0, k = 0; i < n; i++) {
    if (!keep[i]) continue;
    out[k++] = ring[2 * i];
    out[k++] = ring[2 * i + 1];
  }
  return out;
}
