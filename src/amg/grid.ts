/**
 * Point grids and crop boxes for automatic mask generation.
 * Reference: segment_anything/utils/amg.py (build_point_grid, build_all_layer_point_grids,
 * generate_crop_boxes), reproducing Python's float and int() arithmetic exactly.
 */
import type { BoxXyxy, Size } from '../core/types.js';

/**
 * amg.py build_point_grid: n×n points in [0,1]², offset 1/(2n) from the borders.
 * Returns Float64Array [n*n, 2] of (x, y), x varying fastest (row-major over the grid).
 * Values follow np.linspace: start + i*step, with the last point set exactly to the stop value.
 */
export function buildPointGrid(nPerSide: number): Float64Array {
  const n = nPerSide;
  const offset = 1 / (2 * n);
  const start = offset;
  const stop = 1 - offset;
  const side = new Float64Array(n);
  if (n === 1) {
    side[0] = start;
  } else {
    const step = (stop - start) / (n - 1);
    for (let i = 0; i < n; i++) side[i] = i * step + start;
    side[n - 1] = stop;
  }
  const points = new Float64Array(n * n * 2);
  for (let yi = 0, k = 0; yi < n; yi++) {
    for (let xi = 0; xi < n; xi++, k += 2) {
      points[k] = side[xi];
      points[k + 1] = side[yi];
    }
  }
  return points;
}

/** amg.py build_all_layer_point_grids: layer i has int(nPerSide / scalePerLayer**i) points per side. */
export function buildAllLayerPointGrids(nPerSide: number, nLayers: number, scalePerLayer: number): Float64Array[] {
  const grids: Float64Array[] = [];
  for (let i = 0; i <= nLayers; i++) {
    grids.push(buildPointGrid(Math.trunc(nPerSide / scalePerLayer ** i)));
  }
  return grids;
}

/**
 * amg.py generate_crop_boxes. imSize is [h, w]. Crop 0 is the whole image; layer i (1-based)
 * has (2^i)² overlapping crops, enumerated x0-major (itertools.product(x0s, y0s)).
 * Boxes are XYXY with exclusive max.
 */
export function generateCropBoxes(
  imSize: Size,
  nLayers: number,
  overlapRatio: number,
): { cropBoxes: BoxXyxy[]; layerIdxs: number[] } {
  const [imH, imW] = imSize;
  const shortSide = Math.min(imH, imW);
  const cropBoxes: BoxXyxy[] = [[0, 0, imW, imH]];
  const layerIdxs: number[] = [0];

  const cropLen = (origLen: number, nCrops: number, overlap: number): number =>
    Math.ceil((overlap * (nCrops - 1) + origLen) / nCrops);

  for (let iLayer = 0; iLayer < nLayers; iLayer++) {
    const nCropsPerSide = 2 ** (iLayer + 1);
    // Same evaluation order as Python: (ratio * short_side) * (2 / n), then int() truncation.
    const overlap = Math.trunc(overlapRatio * shortSide * (2 / nCropsPerSide));
    const cropW = cropLen(imW, nCropsPerSide, overlap);
    const cropH = cropLen(imH, nCropsPerSide, overlap);
    for (let xi = 0; xi < nCropsPerSide; xi++) {
      const x0 = (cropW - overlap) * xi;
      for (let yi = 0; yi < nCropsPerSide; yi++) {
        const y0 = (cropH - overlap) * yi;
        cropBoxes.push([x0, y0, Math.min(x0 + cropW, imW), Math.min(y0 + cropH, imH)]);
        layerIdxs.push(iLayer + 1);
      }
    }
  }
  return { cropBoxes, layerIdxs };
}

/**
 * The rows (and columns) of an n×n grid that the first round of the hierarchical prompt strategy
 * runs: r with r % stride === floor(stride / 2); the middle one, floor((n - 1) / 2), when that
 * picks none (n small). Ascending; empty only for n = 0.
 */
export function sparseGridLines(n: number, stride: number): number[] {
  const lines: number[] = [];
  for (let r = Math.floor(stride / 2); r < n; r += stride) lines.push(r);
  if (lines.length === 0 && n > 0) lines.push(Math.floor((n - 1) / 2));
  return lines;
}

/**
 * Indices into a row-major n×n grid (as buildPointGrid returns, point i at row floor(i / n),
 * column i % n) of the points on both a sparse row and a sparse column, ascending.
 */
export function sparseGridIndices(n: number, stride: number): Int32Array {
  const lines = sparseGridLines(n, stride);
  const out = new Int32Array(lines.length * lines.length);
  let k = 0;
  for (const r of lines) for (const c of lines) out[k++] = r * n + c;
  return out;
}

/** Points per side of a square grid of `count` points, or -1 when count is not a square. */
export function squareGridSide(count: number): number {
  const n = Math.round(Math.sqrt(count));
  return n * n === count ? n : -1;
}
