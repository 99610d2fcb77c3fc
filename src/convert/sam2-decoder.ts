/**
 * The SAM 2 / SAM 2.1 prompt encoder + mask decoder as an ONNX graph, built from an official
 * state dict (`sam_prompt_encoder.*`, `sam_mask_decoder.*`): sam2/modeling/sam/{prompt_encoder,
 * mask_decoder,transformer}.py as SAM2ImagePredictor._predict runs them, with the signature of
 * samexporter's export_sam2.py decoder:
 *
 *   image_embed [1,256,64,64]  high_res_feats_0 [1,32,256,256]  high_res_feats_1 [1,64,128,128]
 *   point_coords [n,p,2] (1024 frame, box corners first, WITHOUT the padding point)
 *   point_labels [n,p] (float: 1 fg, 0 bg, 2/3 box corners, −1 padding)
 *   mask_input [n,1,256,256]  has_mask_input [n]
 *   → masks [n,M,256,256] (low-res logits clamped to ±32)  iou_predictions [n,M]
 *   (optionally object_score_logits [n,1])
 *
 * n (prompt batch, `num_labels`) and p (`num_points`) are dynamic; the image inputs are shared by
 * the batch (predict_masks' repeat_image). Row b gives what a call with prompt set b alone gives;
 * a batch only mixes prompt sets of the same p (an extra (0,0)/−1 point is not neutral).
 *
 * What differs from SAM 1 (sam-decoder.ts), all as in the sam2 source:
 * - The graph itself shifts the points by +0.5, ALWAYS appends one padding point (0,0) with label
 *   −1 (the image predictor merges a box into the points, so the prompt encoder pads with a box
 *   too), and divides by 1024.
 * - Output tokens [obj_score_token, iou_token, mask_tokens×4] precede the prompt tokens; hs[:,1]
 *   feeds the IoU head, whose output goes through a sigmoid; hs[:,2..5] feed the hypernetworks;
 *   hs[:,0] feeds the object-score MLP (pred_obj_scores_mlp), which the image predictor ignores
 *   (no NO_OBJ_SCORE gating: that is SAM2Base._forward_sam_heads, the video path).
 * - The transformer MLP is `mlp.layers.{0,1}` (ReLU), LayerNorm eps 1e-5 there, 1e-6 in
 *   LayerNorm2d; GELU exact.
 * - Upscaling reads the encoder's high-res features:
 *   GELU(LN2d(ConvT₁(src) + high_res_feats_1)), then GELU(ConvT₂(·) + high_res_feats_0).
 *
 * Mask selection (MaskDecoder.forward):
 * - `multimask: true` → masks / IoUs of tokens 1..3 (M = 3): predict(multimask_output=True).
 * - `multimask: false` → token 0 (M = 1): predict(multimask_output=False) of a model built with
 *   `apply_postprocessing=False` (what the golden data, SAM2AutomaticMaskGenerator's use_m2m
 *   references included, were made with).
 * - `multimask: false, stabilityFallback: true` → additionally MaskDecoder's
 *   dynamic_multimask_via_stability, which build_sam2's default apply_postprocessing=True turns on
 *   (delta 0.05, threshold 0.98): when token 0's stability score #(logit > δ) / #(logit > −δ)
 *   (1 when nothing is > −δ) is below the threshold, the mask and IoU of the best of tokens 1..3
 *   by IoU (first on ties) replace it. Computed on the unclamped logits, like the original.
 *
 * Layout: as in sam-decoder.ts, the image side is channels-last rows [B,64·64,C]; the kernel =
 * stride transposed convolutions are Gemms over pixel rows, and the high-res features are
 * reordered once per call into the same row order, (y,x,i,j) for the 128² map and (y,x,i,j,k,l)
 * for the 256² map, so the additions are plain broadcasts over the batch. Only the finished
 * logits are reordered to row-major pixels. Without any mask input in the batch, the dense
 * embedding (no_mask_embed) and the image side of layer 0 are computed once and broadcast.
 *
 * Initializers carry the state-dict tensors unchanged under their state-dict keys; the dense
 * positional encoding (get_dense_pe(), a constant of the checkpoint) is precomputed under
 * `sam_prompt_encoder.pe_layer.dense_pe`.
 */
import { modelError } from '../util/errors.js';
import type { StateDict } from './checkpoint.js';
import { GraphBuilder, dataTypeCode, type ModelOptions, type TensorRef } from './onnx-builder.js';
import { DecoderGraph, EMBED_HW, LN2D_EPS, LN_EPS, LOW_RES, denseImagePe, embedPoints, type DecoderConfig } from './sam-decoder.js';
import { buildSplitImageSide, buildSplitPromptSide } from './sam-decoder-split.js';

export interface Sam2DecoderOptions {
  /** true: the 3 multimask outputs (tokens 1..3); false: the single mask (token 0). */
  multimask: boolean;
  /**
   * Single-mask only: SAM 2's dynamic_multimask_via_stability fallback (build_sam2's default
   * apply_postprocessing=True). Default false: the behaviour of the golden references.
   */
  stabilityFallback?: boolean;
  /** dynamic_multimask_stability_delta / _thresh (0.05 / 0.98, build_sam2's values). */
  stabilityDelta?: number;
  stabilityThresh?: number;
  /** Also output `object_score_logits` [n,1] (the object-score head; the image predictor ignores it). */
  objectScore?: boolean;
  /** Passed to the serialized ModelProto (producer, metadata). */
  model?: ModelOptions;
}

/** Input and output names, in graph order (samexporter's export_sam2.py decoder). */
export const SAM2_DECODER_INPUTS = [
  'image_embed',
  'high_res_feats_0',
  'high_res_feats_1',
  'point_coords',
  'point_labels',
  'mask_input',
  'has_mask_input',
] as const;
export const SAM2_DECODER_OUTPUTS = ['masks', 'iou_predictions'] as const;

const PE = 'sam_prompt_encoder.';
const MD = 'sam_mask_decoder.';
/** The state-dict prefix that turns sam-decoder.ts' `prompt_encoder.` / `mask_decoder.` keys into SAM 2's. */
const PREFIX = 'sam_';
const HW = EMBED_HW * EMBED_HW;
const LOW_PIXELS = LOW_RES * LOW_RES;
const MASK_CLAMP = 32;

/**
 * SAM2Base's prompt encoder + mask decoder, identical in every official SAM 2 / 2.1 config
 * (sam_prompt_embed_dim 256, mask_in_chans 16, TwoWayTransformer depth 2 / 8 heads / MLP 2048 /
 * downsample 2, 3 multimask outputs, IoU head 3 layers 256 wide with sigmoid, pred_obj_scores with
 * the 3-layer MLP head, use_high_res_features_in_sam).
 */
const CFG: DecoderConfig = {
  embedDim: 256,
  depth: 2,
  numHeads: 8,
  mlpDim: 2048,
  crossAttnDim: 128,
  numMaskTokens: 4,
  iouHeadDepth: 3,
  hypernetDepth: 3,
};
const MASK_IN_CHANS = 16;
const OBJ_HEAD_DEPTH = 3;

/** Every state-dict tensor the decoder reads, with its shape. */
export function sam2DecoderTensorShapes(): Map<string, number[]> {
  const c = CFG.embedDim;
  const ci = CFG.crossAttnDim;
  const m = new Map<string, number[]>();
  m.set(`${PE}pe_layer.positional_encoding_gaussian_matrix`, [2, c / 2]);
  for (let i = 0; i < 4; i++) m.set(`${PE}point_embeddings.${i}.weight`, [1, c]);
  m.set(`${PE}not_a_point_embed.weight`, [1, c]);
  m.set(`${PE}no_mask_embed.weight`, [1, c]);
  const q = MASK_IN_CHANS / 4;
  const ds = `${PE}mask_downscaling.`;
  const conv = (key: string, cout: number, cin: number, k: number): void => {
    m.set(`${key}.weight`, [cout, cin, k, k]);
    m.set(`${key}.bias`, [cout]);
  };
  const vec = (key: string, n: number): void => {
    m.set(`${key}.weight`, [n]);
    m.set(`${key}.bias`, [n]);
  };
  const linear = (key: string, out: number, inDim: number): void => {
    m.set(`${key}.weight`, [out, inDim]);
    m.set(`${key}.bias`, [out]);
  };
  const mlp = (key: string, inDim: number, hidden: number, out: number, layers: number): void => {
    for (let i = 0; i < layers; i++) linear(`${key}.layers.${i}`, i === layers - 1 ? out : hidden, i === 0 ? inDim : hidden);
  };
  const attention = (key: string, internal: number): void => {
    linear(`${key}.q_proj`, internal, c);
    linear(`${key}.k_proj`, internal, c);
    linear(`${key}.v_proj`, internal, c);
    linear(`${key}.out_proj`, c, internal);
  };
  conv(`${ds}0`, q, 1, 2);
  vec(`${ds}1`, q);
  conv(`${ds}3`, MASK_IN_CHANS, q, 2);
  vec(`${ds}4`, MASK_IN_CHANS);
  conv(`${ds}6`, c, MASK_IN_CHANS, 1);
  const t = `${MD}transformer.`;
  for (let l = 0; l < CFG.depth; l++) {
    const layer = `${t}layers.${l}`;
    attention(`${layer}.self_attn`, c);
    vec(`${layer}.norm1`, c);
    attention(`${layer}.cross_attn_token_to_image`, ci);
    vec(`${layer}.norm2`, c);
    mlp(`${layer}.mlp`, c, CFG.mlpDim, c, 2);
    vec(`${layer}.norm3`, c);
    vec(`${layer}.norm4`, c);
    attention(`${layer}.cross_attn_image_to_token`, ci);
  }
  attention(`${t}final_attn_token_to_image`, ci);
  vec(`${t}norm_final_attn`, c);
  m.set(`${MD}obj_score_token.weight`, [1, c]);
  m.set(`${MD}iou_token.weight`, [1, c]);
  m.set(`${MD}mask_tokens.weight`, [CFG.numMaskTokens, c]);
  m.set(`${MD}output_upscaling.0.weight`, [c, c / 4, 2, 2]);
  m.set(`${MD}output_upscaling.0.bias`, [c / 4]);
  vec(`${MD}output_upscaling.1`, c / 4);
  m.set(`${MD}output_upscaling.3.weight`, [c / 4, c / 8, 2, 2]);
  m.set(`${MD}output_upscaling.3.bias`, [c / 8]);
  for (let i = 0; i < CFG.numMaskTokens; i++) mlp(`${MD}output_hypernetworks_mlps.${i}`, c, c, c / 8, CFG.hypernetDepth);
  mlp(`${MD}iou_prediction_head`, c, 256, CFG.numMaskTokens, CFG.iouHeadDepth);
  mlp(`${MD}pred_obj_score_head`, c, c, 1, OBJ_HEAD_DEPTH);
  return m;
}

/**
 * Throws a model error, before any graph is built, at the first tensor (in the order above) that
 * is missing (saying how many more are), is not floating point, or has another shape.
 */
export function checkSam2DecoderTensors(sd: StateDict): void {
  const shapes = sam2DecoderTensorShapes();
  for (const [key, shape] of shapes) {
    const t = sd.get(key);
    if (!t) {
      const missing = [...shapes.keys()].filter((k) => !sd.has(k)).length;
      const more = missing > 1 ? ` and ${missing - 1} more` : '';
      const what = missing === shapes.size ? ': not a SAM 2 checkpoint' : '; is the checkpoint complete?';
      throw modelError(`checkpoint has no tensor ${key}${more} (needed by the SAM 2 prompt encoder + mask decoder)${what}`);
    }
    if (t.shape.length !== shape.length || t.shape.some((v, i) => v !== shape[i])) {
      throw modelError(`checkpoint tensor ${key} has shape [${t.shape.join(',')}], expected [${shape.join(',')}] for the SAM 2 mask decoder`);
    }
    if (!(t.data instanceof Float32Array)) throw modelError(`checkpoint tensor ${key} is ${t.dtype}, expected a floating-point tensor`);
  }
}

/** Builds the decoder and serializes it: ONNX model bytes (19.5 MiB multimask, 18.5 MiB single mask, for every official type:
 * the decoder is the same size in all of them; 4 MiB of it is the precomputed dense PE). */
export function buildSam2Decoder(sd: StateDict, opts: Sam2DecoderOptions): Buffer {
  return buildSam2DecoderGraph(sd, opts).serialize({ producerName: 'sam-cli convert', ...opts.model });
}

/** The decoder graph; see the module comment for the signature and the options. */
export function buildSam2DecoderGraph(sd: StateDict, opts: Sam2DecoderOptions): GraphBuilder {
  const fallback = opts.stabilityFallback ?? false;
  if (opts.multimask && fallback) throw new Error('stabilityFallback applies to the single-mask decoder only');
  checkSam2DecoderTensors(sd);
  const mode = opts.multimask ? 'multimask' : fallback ? 'single_stability' : 'single';
  const g = new GraphBuilder(`sam2_decoder_${mode}`);
  const d = new DecoderGraph(g, sd, PREFIX);
  const c = CFG.embedDim;
  const n = 'num_labels';

  const imageEmbed = g.input('image_embed', 'float32', [1, c, EMBED_HW, EMBED_HW]);
  const feats0 = g.input('high_res_feats_0', 'float32', [1, c / 8, LOW_RES, LOW_RES]);
  const feats1 = g.input('high_res_feats_1', 'float32', [1, c / 4, LOW_RES / 2, LOW_RES / 2]);
  const pointCoords = g.input('point_coords', 'float32', [n, 'num_points', 2]);
  const pointLabels = g.input('point_labels', 'float32', [n, 'num_points']);
  const maskInput = g.input('mask_input', 'float32', [n, 1, LOW_RES, LOW_RES]);
  const hasMaskInput = g.input('has_mask_input', 'float32', [n]);

  const batchShape = g.op('Shape', [pointCoords], { start: 0, end: 1 }); // [n]
  const sparse = embedPromptPoints(d, pointCoords, pointLabels, batchShape);
  const rows = distinctRows(g, hasMaskInput, batchShape);
  const slice = (x: TensorRef): TensorRef => g.op('Slice', [x, g.constInt64([0]), rows, g.constInt64([0])]);
  const dense = embedMasks(d, slice(maskInput), slice(hasMaskInput)); // [n' ,HW,C]

  // Which mask tokens get a hypernetwork and a mask.
  const tokens = opts.multimask ? [1, 2, 3] : fallback ? [0, 1, 2, 3] : [0];
  const heads = predictMasks(d, imageEmbed, feats0, feats1, sparse, dense, batchShape, tokens);
  let masks = heads.masks; // [n,T,256,256]
  let iou = heads.iou; // [n,4]
  if (opts.multimask) {
    iou = g.op('Slice', [iou, g.constInt64([1]), g.constInt64([4]), g.constInt64([1])]);
  } else if (fallback) {
    [masks, iou] = dynamicMultimaskViaStability(g, masks, iou, batchShape, opts.stabilityDelta ?? 0.05, opts.stabilityThresh ?? 0.98);
  } else {
    iou = g.op('Slice', [iou, g.constInt64([0]), g.constInt64([1]), g.constInt64([1])]);
  }
  masks = g.op('Clip', [masks, g.constFloat([-MASK_CLAMP], []), g.constFloat([MASK_CLAMP], [])]);
  const mOut = opts.multimask ? 3 : 1;
  g.output(masks, 'masks', 'float32', [n, mOut, LOW_RES, LOW_RES]);
  g.output(iou, 'iou_predictions', 'float32', [n, mOut]);
  if (opts.objectScore) {
    const objToken = g.op('Gather', [heads.hs, g.constInt64([0], [])], { axis: 1 }); // [n,C]
    g.output(d.mlp(objToken, 'mask_decoder.pred_obj_score_head', OBJ_HEAD_DEPTH), 'object_score_logits', 'float32', [n, 1]);
  }
  return g;
}

/**
 * PromptEncoder._embed_points(pad=True): the padding point (0,0) / −1 appended after the given
 * points, then sam-decoder.ts' embedding (+0.5, /1024, random-Fourier PE, not_a_point_embed for
 * −1, point_embeddings[label] for 0..3). The padding point's PE is zeroed there, so whether the
 * +0.5 reaches it (here: yes; in the sam2 code: no) does not matter. → [n,p+1,C]
 */
function embedPromptPoints(d: DecoderGraph, coords: TensorRef, labels: TensorRef, batchShape: TensorRef): TensorRef {
  const { g } = d;
  const padCoords = g.op('Expand', [g.constFloat([0, 0], [1, 1, 2]), g.op('Concat', [batchShape, g.constInt64([1, 2])], { axis: 0 })]);
  const padLabels = g.op('Expand', [g.constFloat([-1], [1, 1]), g.op('Concat', [batchShape, g.constInt64([1])], { axis: 0 })]);
  const allCoords = g.op('Concat', [coords, padCoords], { axis: 1 });
  const allLabels = g.op('Concat', [labels, padLabels], { axis: 1 });
  return embedPoints(d, allCoords, allLabels, CFG);
}

/**
 * Rows of an hw×hw channels-last map [R·hw², C] → rows of its 2×2 patches [R·(hw/2)², (i,j,C)],
 * the input of a kernel = stride = 2 convolution.
 */
function toPatches(g: GraphBuilder, x: TensorRef, hw: number, ch: number): TensorRef {
  const grid = g.op('Reshape', [x, g.constInt64([-1, hw / 2, 2, hw / 2, 2, ch])]);
  return g.op('Reshape', [g.op('Transpose', [grid], { perm: [0, 1, 3, 2, 4, 5] }), g.constInt64([-1, 4 * ch])]);
}

/**
 * samexporter's _embed_masks: has·mask_downscaling(mask_input) + (1 − has)·no_mask_embed per row.
 * mask_input [n',1,256,256] → [n',64·64,C] channels-last.
 */
function embedMasks(d: DecoderGraph, maskInput: TensorRef, hasMaskInput: TensorRef): TensorRef {
  const { g } = d;
  const ds = 'prompt_encoder.mask_downscaling';
  let x = toPatches(g, g.op('Reshape', [maskInput, g.constInt64([-1, 1])]), LOW_RES, 1); // [n'·128², 4]
  x = d.gelu(d.layerNorm(d.patchConv(x, `${ds}.0`), `${ds}.1`, LN2D_EPS)); // [n'·128², 4]
  x = toPatches(g, x, LOW_RES / 2, MASK_IN_CHANS / 4); // [n'·64², 16]
  x = d.gelu(d.layerNorm(d.patchConv(x, `${ds}.3`), `${ds}.4`, LN2D_EPS)); // [n'·64², 16]
  x = d.patchConv(x, `${ds}.6`); // 1×1 conv → [n'·64², C]
  const maskEmbedding = g.op('Reshape', [x, g.constInt64([-1, HW, CFG.embedDim])]);
  const has = g.op('Reshape', [hasMaskInput, g.constInt64([-1, 1, 1])]);
  const notHas = g.op('Sub', [g.constFloat([1], []), has]);
  const noMask = d.weight('prompt_encoder.no_mask_embed.weight');
  return g.op('Add', [g.op('Mul', [has, maskEmbedding]), g.op('Mul', [notHas, noMask])]);
}

/**
 * n' ([1] int64): n if any has_mask_input > 0, else 1. Without a mask input every row's dense
 * embedding is no_mask_embed, so the image side stays shared until layer 0's image → token
 * attention.
 */
function distinctRows(g: GraphBuilder, hasMaskInput: TensorRef, batchShape: TensorRef): TensorRef {
  const anyMask = g.op('Cast', [g.op('Greater', [g.op('ReduceMax', [hasMaskInput], { keepdims: 1 }), g.constFloat([0], [])])], {
    to: dataTypeCode('int64'),
  });
  return g.op('Max', [g.op('Mul', [batchShape, anyMask]), g.constInt64([1])]);
}

/** TwoWayTransformer (SAM 2 key names): → [queries [n,T,C], keys [n,64·64,C]]. */
function twoWayTransformer(d: DecoderGraph, src: TensorRef, imagePe: TensorRef, tokens: TensorRef): [TensorRef, TensorRef] {
  const { g } = d;
  const t = 'mask_decoder.transformer';
  const h = CFG.numHeads;
  let keys = src;
  let queries = tokens;
  const queryPe = tokens;
  for (let i = 0; i < CFG.depth; i++) {
    const layer = `${t}.layers.${i}`;
    if (i === 0) {
      queries = d.attention(queries, queries, queries, `${layer}.self_attn`, h); // skip_first_layer_pe
    } else {
      const q = g.op('Add', [queries, queryPe]);
      queries = g.op('Add', [queries, d.attention(q, q, queries, `${layer}.self_attn`, h)]);
    }
    queries = d.layerNorm(queries, `${layer}.norm1`, LN_EPS);

    const k = g.op('Add', [keys, imagePe]); // keys change only at norm4: k serves both cross attentions
    let q = g.op('Add', [queries, queryPe]);
    queries = g.op('Add', [queries, d.attention(q, k, keys, `${layer}.cross_attn_token_to_image`, h, 'kv')]);
    queries = d.layerNorm(queries, `${layer}.norm2`, LN_EPS);

    const mlpOut = d.mlp(queries, `${layer}.mlp`, 2); // Linear, ReLU, Linear
    queries = d.layerNorm(g.op('Add', [queries, mlpOut]), `${layer}.norm3`, LN_EPS);

    q = g.op('Add', [queries, queryPe]);
    keys = g.op('Add', [keys, d.attention(k, q, queries, `${layer}.cross_attn_image_to_token`, h, 'q')]);
    keys = d.layerNorm(keys, `${layer}.norm4`, LN_EPS);
  }
  const q = g.op('Add', [queries, queryPe]);
  const k = g.op('Add', [keys, imagePe]);
  queries = g.op('Add', [queries, d.attention(q, k, keys, `${t}.final_attn_token_to_image`, h, 'kv')]);
  queries = d.layerNorm(queries, `${t}.norm_final_attn`, LN_EPS);
  return [queries, keys];
}

/**
 * high_res_feats_1 [1,C/4,128,128] → rows [1, 64·64·4, C/4] in the order (y,x,i,j) of pixel
 * (2y+i, 2x+j): the order of ConvT₁'s output rows.
 */
function feats1Rows(g: GraphBuilder, f: TensorRef, ch: number): TensorRef {
  const grid = g.op('Reshape', [f, g.constInt64([ch, EMBED_HW, 2, EMBED_HW, 2])]); // (c,y,i,x,j)
  return g.op('Reshape', [g.op('Transpose', [grid], { perm: [1, 3, 2, 4, 0] }), g.constInt64([1, HW * 4, ch])]);
}

/**
 * high_res_feats_0 [1,C/8,256,256] → rows [1, 64·64·16, C/8] in the order (y,x,i,j,k,l) of pixel
 * (4y+2i+k, 4x+2j+l): the order of ConvT₂'s output rows.
 */
function feats0Rows(g: GraphBuilder, f: TensorRef, ch: number): TensorRef {
  const grid = g.op('Reshape', [f, g.constInt64([ch, EMBED_HW, 2, 2, EMBED_HW, 2, 2])]); // (c,y,i,k,x,j,l)
  return g.op('Reshape', [g.op('Transpose', [grid], { perm: [1, 4, 2, 5, 3, 6, 0] }), g.constInt64([1, LOW_PIXELS, ch])]);
}

/** image_embed [1,C,64,64] → channels-last image tokens [1,64·64,C]. */
function imageTokens(g: GraphBuilder, imageEmbed: TensorRef): TensorRef {
  return g.op('Transpose', [g.op('Reshape', [imageEmbed, g.constInt64([1, CFG.embedDim, -1])])], { perm: [0, 2, 1] });
}

/**
 * predict_masks up to the transformer: output tokens [obj_score, iou, mask×4] + sparse [n,p+1,C],
 * src [n',HW,C] (image tokens + dense) → [hs [n,6+p+1,C], keys [n,HW,C]].
 */
function transformerStage(d: DecoderGraph, src: TensorRef, sparse: TensorRef, batchShape: TensorRef): [TensorRef, TensorRef] {
  const { g } = d;
  const c = CFG.embedDim;
  const md = 'mask_decoder';
  const outputTokens = g.op(
    'Concat',
    [d.weight(`${md}.obj_score_token.weight`), d.weight(`${md}.iou_token.weight`), d.weight(`${md}.mask_tokens.weight`)],
    { axis: 0 },
  ); // [6,C]
  const expandTo = g.op('Concat', [batchShape, g.constInt64([1, 1])], { axis: 0 });
  const expanded = g.op('Expand', [g.op('Unsqueeze', [outputTokens, g.constInt64([0])]), expandTo]);
  const tokens = g.op('Concat', [expanded, sparse], { axis: 1 }); // [n,6+p+1,C]
  const gaussian = d.sd.get(`${PE}pe_layer.positional_encoding_gaussian_matrix`)!.data as Float32Array;
  const imagePe = g.initializer(`${PE}pe_layer.dense_pe`, denseImagePe(gaussian, c / 2), [1, HW, c]);
  return twoWayTransformer(d, src, imagePe, tokens);
}

/** The IoU head (sigmoid) on hs[:,1] → [n,4], and the hypernetworks of `maskTokens` → hyper_in [n,T,C/8]. */
function tokenHeads(d: DecoderGraph, hs: TensorRef, maskTokens: readonly number[]): { iou: TensorRef; hyper: TensorRef } {
  const { g } = d;
  const md = 'mask_decoder';
  const hyperIn = maskTokens.map((i) => {
    const token = g.op('Gather', [hs, g.constInt64([2 + i], [])], { axis: 1 }); // [n,C]
    const out = d.mlp(token, `${md}.output_hypernetworks_mlps.${i}`, CFG.hypernetDepth); // [n,C/8]
    return g.op('Unsqueeze', [out, g.constInt64([1])]);
  });
  const hyper = hyperIn.length === 1 ? hyperIn[0] : g.op('Concat', hyperIn, { axis: 1 });
  const iouToken = g.op('Gather', [hs, g.constInt64([1], [])], { axis: 1 }); // [n,C]
  const iou = g.op('Sigmoid', [d.mlp(iouToken, `${md}.iou_prediction_head`, CFG.iouHeadDepth)]);
  return { iou, hyper };
}

/**
 * output_upscaling with the high-res features (as rows: feats1Rows / feats0Rows) and the mask
 * product: keys [n,HW,C], hyper_in [n,T,C/8] → unclamped masks [n,T,256,256].
 */
function upscaleMasks(d: DecoderGraph, keys: TensorRef, hyper: TensorRef, f1Rows: TensorRef, f0Rows: TensorRef): TensorRef {
  const { g } = d;
  const c = CFG.embedDim;
  const md = 'mask_decoder';
  // ConvT₁ [n·64², C] → [n·64², (i,j,C/4)] = [n, 64²·4, C/4], rows (y,x,i,j)
  const up0 = d.patchConvTranspose(g.op('Reshape', [keys, g.constInt64([-1, c])]), `${md}.output_upscaling.0`);
  let up = g.op('Add', [g.op('Reshape', [up0, g.constInt64([-1, HW * 4, c / 4])]), f1Rows]);
  up = d.gelu(d.layerNorm(up, `${md}.output_upscaling.1`, LN2D_EPS));
  // ConvT₂ [n·64²·4, C/4] → [n·64²·4, (k,l,C/8)] = [n, 256², C/8], rows (y,x,i,j,k,l)
  const up1 = d.patchConvTranspose(g.op('Reshape', [up, g.constInt64([-1, c / 4])]), `${md}.output_upscaling.3`);
  const upscaled = d.gelu(g.op('Add', [g.op('Reshape', [up1, g.constInt64([-1, LOW_PIXELS, c / 8])]), f0Rows]));
  const blocks = g.op('MatMul', [hyper, g.op('Transpose', [upscaled], { perm: [0, 2, 1] })]); // [n,T,P]
  const grid = g.op('Reshape', [blocks, g.constInt64([-1, EMBED_HW, EMBED_HW, 2, 2, 2, 2])]);
  const rowMajor = g.op('Transpose', [grid], { perm: [0, 1, 3, 5, 2, 4, 6] });
  const outShape = g.op('Concat', [g.op('Shape', [hyper], { start: 0, end: 2 }), g.constInt64([LOW_RES, LOW_RES])], { axis: 0 });
  return g.op('Reshape', [rowMajor, outShape]);
}

/**
 * MaskDecoder.predict_masks (pred_obj_scores, high-res features): → masks of the mask tokens
 * `maskTokens` [n,T,256,256] (unclamped), the IoU head's 4 sigmoid outputs [n,4], and hs.
 */
function predictMasks(
  d: DecoderGraph,
  imageEmbed: TensorRef,
  feats0: TensorRef,
  feats1: TensorRef,
  sparse: TensorRef,
  dense: TensorRef,
  batchShape: TensorRef,
  maskTokens: readonly number[],
): { masks: TensorRef; iou: TensorRef; hs: TensorRef } {
  const { g } = d;
  const c = CFG.embedDim;
  const src = g.op('Add', [imageTokens(g, imageEmbed), dense]); // [n',HW,C]
  const [hs, keys] = transformerStage(d, src, sparse, batchShape);
  const { iou, hyper } = tokenHeads(d, hs, maskTokens);
  const masks = upscaleMasks(d, keys, hyper, feats1Rows(g, feats1, c / 4), feats0Rows(g, feats0, c / 8));
  return { masks, iou, hs };
}

/**
 * MaskDecoder._dynamic_multimask_via_stability on all 4 masks [n,4,256,256] and IoUs [n,4]
 * → [n,1,256,256], [n,1].
 */
function dynamicMultimaskViaStability(
  g: GraphBuilder,
  masks: TensorRef,
  iou: TensorRef,
  batchShape: TensorRef,
  delta: number,
  thresh: number,
): [TensorRef, TensorRef] {
  const sl = (x: TensorRef, start: number, end: number): TensorRef =>
    g.op('Slice', [x, g.constInt64([start]), g.constInt64([end]), g.constInt64([1])]);
  const multi = sl(masks, 1, 4);
  const multiIou = sl(iou, 1, 4);
  const best = g.op('ArgMax', [multiIou], { axis: 1, keepdims: 1, select_last_index: 0 }); // [n,1], first on ties
  const index = g.op('Expand', [
    g.op('Reshape', [best, g.constInt64([-1, 1, 1, 1])]),
    g.op('Concat', [batchShape, g.constInt64([1, LOW_RES, LOW_RES])], { axis: 0 }),
  ]);
  const bestMask = g.op('GatherElements', [multi, index], { axis: 1 });
  const bestIou = g.op('GatherElements', [multiIou, best], { axis: 1 });

  const single = sl(masks, 0, 1);
  const singleIou = sl(iou, 0, 1);
  const area = (threshold: number): TensorRef =>
    g.op('ReduceSum', [g.op('Cast', [g.op('Greater', [single, g.constFloat([threshold], [])])], { to: dataTypeCode('float32') }), g.constInt64([2, 3])], {
      keepdims: 0,
    }); // [n,1]
  const areaI = area(delta);
  const areaU = area(-delta);
  const score = g.op('Where', [g.op('Greater', [areaU, g.constFloat([0], [])]), g.op('Div', [areaI, areaU]), g.constFloat([1], [])]);
  const stable = g.op('GreaterOrEqual', [score, g.constFloat([thresh], [])]); // [n,1]
  const stable4 = g.op('Unsqueeze', [stable, g.constInt64([2, 3])]);
  return [g.op('Where', [stable4, single, bestMask]), g.op('Where', [stable, singleIou, bestIou])];
}


// ---------------------------------------------------------------------------------------------
// Split form (automatic mask generation: point prompts, no mask input)
// ---------------------------------------------------------------------------------------------

/**
 * The decoder split into three graphs, like sam-decoder-split.ts for SAM 1, for prompts without a
 * mask input (the dense embedding is always no_mask_embed; `--use-m2m` and mask prompts need the
 * plain graph). Same arithmetic as the plain graph, cut at two places:
 *
 *   image side, once per image (crop):
 *     image_embed, high_res_feats_0, high_res_feats_1
 *     → feats1_rows [1,16384,64]  high_res_feats_1 in ConvT₁'s row order (y,x,i,j)
 *       feats0_rows [1,65536,32]  high_res_feats_0 in ConvT₂'s row order (y,x,i,j,k,l)
 *       src, pos_src [4096,256], l0_t2i_k [8,16,4096], l0_t2i_v [8,4096,16], l0_i2t_q [4096,128]
 *                                 as sam-decoder-split.ts' image side (image tokens + no_mask_embed,
 *                                 dense PE, layer 0's prompt-independent projections)
 *   prompt side, per batch of B prompts of equal p (point_coords [B,p,2] / point_labels [B,p] as
 *   for the plain graph, without the padding point):
 *     src, pos_src, l0_*, point_coords, point_labels
 *     → iou_predictions [B,M]  transformer_src [B,4096,256]  hyper_in [B,M,32]
 *     sam-decoder-split.ts' prompt side with SAM 2's tokens ([obj_score, iou, mask×4, points,
 *     padding point]), MLP key names (mlp.layers.0/1) and heads (sigmoid IoU, tokens 2..5): the
 *     TwoWayTransformer is the same module, so its factorized cross attentions apply unchanged
 *     (`factorized: false`: the plain projections).
 *   mask side, only for the prompts (rows) and masks (columns of hyper_in) that are needed:
 *     transformer_src [B,4096,256], hyper_in [B,K,32], feats1_rows, feats0_rows
 *     → masks [B,K,256,256] (clamped to ±32)
 *
 * M is 3 (tokens 1..3) for `multimask: true`, 1 (token 0) otherwise; the stability fallback needs
 * all four masks and is not offered here. output_upscaling (~0.4 GMAC of the ~1.5 per prompt)
 * is in the mask side, which automatic mask generation only runs for prompts whose IoU passes
 * pred_iou_thresh.
 */
export interface Sam2SplitDecoderGraphs {
  image: GraphBuilder;
  prompt: GraphBuilder;
  masks: GraphBuilder;
}

/** Graph input/output names of the split decoder, in order. */
export const SAM2_SPLIT_DECODER_IO = {
  image: {
    inputs: ['image_embed', 'high_res_feats_0', 'high_res_feats_1'],
    outputs: ['feats1_rows', 'feats0_rows', 'src', 'pos_src', 'l0_t2i_k', 'l0_t2i_v', 'l0_i2t_q'],
  },
  prompt: {
    inputs: ['src', 'pos_src', 'l0_t2i_k', 'l0_t2i_v', 'l0_i2t_q', 'point_coords', 'point_labels'],
    outputs: ['iou_predictions', 'transformer_src', 'hyper_in'],
  },
  masks: { inputs: ['transformer_src', 'hyper_in', 'feats1_rows', 'feats0_rows'], outputs: ['masks'] },
} as const;

const SPLIT_SHAPES = {
  src: [1, HW, CFG.embedDim],
  feats1_rows: [1, HW * 4, CFG.embedDim / 4],
  feats0_rows: [1, LOW_PIXELS, CFG.embedDim / 8],
} as const;

/** The three graphs of the split decoder (see above). */
export function buildSam2DecoderSplit(sd: StateDict, opts: { multimask: boolean; factorized?: boolean }): Sam2SplitDecoderGraphs {
  checkSam2DecoderTensors(sd);
  const c = CFG.embedDim;
  const mode = opts.multimask ? 'multimask' : 'single';

  // Image and prompt sides: SAM's split builders (the TwoWayTransformer is the same, factorized
  // cross attentions included), with SAM 2's tokens, MLP key names, heads and high-res rows.
  const image = buildSplitImageSide(sd, PREFIX, {
    graphName: 'sam2_decoder_image_side',
    cfg: CFG,
    embeddingName: 'image_embed',
    extra: (d) => {
      const g = d.g;
      const f0 = g.input('high_res_feats_0', 'float32', [1, c / 8, LOW_RES, LOW_RES]);
      const f1 = g.input('high_res_feats_1', 'float32', [1, c / 4, LOW_RES / 2, LOW_RES / 2]);
      g.output(feats1Rows(g, f1, c / 4), 'feats1_rows', 'float32', SPLIT_SHAPES.feats1_rows);
      g.output(feats0Rows(g, f0, c / 8), 'feats0_rows', 'float32', SPLIT_SHAPES.feats0_rows);
    },
  });
  const tokensOut = opts.multimask ? [1, 2, 3] : [0];
  const prompt = buildSplitPromptSide(sd, PREFIX, opts.factorized ?? true, {
    graphName: `sam2_decoder_prompt_side_${mode}`,
    cfg: CFG,
    mlp: ['mlp.layers.0', 'mlp.layers.1'],
    // [obj_score, iou, mask×4] + the points and the padding point (transformerStage)
    tokens: (d, pointCoords, pointLabels, batchShape) => {
      const g = d.g;
      const md = 'mask_decoder';
      const sparse = embedPromptPoints(d, pointCoords, pointLabels, batchShape);
      const outputTokens = g.op('Concat', [d.weight(`${md}.obj_score_token.weight`), d.weight(`${md}.iou_token.weight`), d.weight(`${md}.mask_tokens.weight`)], { axis: 0 });
      const expanded = g.op('Expand', [g.op('Unsqueeze', [outputTokens, g.constInt64([0])]), g.op('Concat', [batchShape, g.constInt64([1, 1])], { axis: 0 })]);
      return g.op('Concat', [expanded, sparse], { axis: 1 });
    },
    heads: (d, hs) => {
      const g = d.g;
      const { iou, hyper } = tokenHeads(d, hs, tokensOut);
      const [start, end] = opts.multimask ? [1, 4] : [0, 1];
      return { iou: g.op('Slice', [iou, g.constInt64([start]), g.constInt64([end]), g.constInt64([1])]), hyper, m: tokensOut.length };
    },
  });

  const masks = new GraphBuilder('sam2_decoder_mask_side');
  {
    const d = new DecoderGraph(masks, sd, PREFIX);
    const g = masks;
    const b = 'batch';
    const keys = g.input('transformer_src', 'float32', [b, HW, c]);
    const hyper = g.input('hyper_in', 'float32', [b, 'num_masks', c / 8]);
    const f1 = g.input('feats1_rows', 'float32', SPLIT_SHAPES.feats1_rows);
    const f0 = g.input('feats0_rows', 'float32', SPLIT_SHAPES.feats0_rows);
    const out = g.op('Clip', [upscaleMasks(d, keys, hyper, f1, f0), g.constFloat([-MASK_CLAMP], []), g.constFloat([MASK_CLAMP], [])]);
    g.output(out, 'masks', 'float32', [b, 'num_masks', LOW_RES, LOW_RES]);
  }
  return { image, prompt, masks };
}
