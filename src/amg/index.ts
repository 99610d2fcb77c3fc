/** Pure automatic-mask-generation core: typed arrays in, typed arrays out (no I/O, no model). */
export type * from './types.js';
export {
  maskToRleUncompressed,
  maskToRleUncompressedInCrop,
  rleToString,
  rleFromString,
  encodeMask,
  encodeMaskInCrop,
  decodeRle,
  rleArea,
  rleToBbox,
  cocoToUncompressed,
  uncompressedToCoco,
} from './rle.js';
export { buildPointGrid, buildAllLayerPointGrids, generateCropBoxes } from './grid.js';
export {
  calculateStabilityScore,
  maskLogitStats,
  maskToBox,
  batchedMaskToBox,
  isBoxNearCropEdge,
  uncropBoxesXyxy,
  uncropPoints,
  boxXyxyToXywh,
  removeSmallRegions,
} from './masks.js';
export type { MaskLogitStats } from './masks.js';
export { nms, batchedNms } from './nms.js';
export { createUpscaler, interpolateBilinear, postprocessMasksReference } from './postprocess.js';
export type { Upscaler } from './postprocess.js';
export { getPreprocessShape, applyCoords, applyBoxes } from './transforms.js';
