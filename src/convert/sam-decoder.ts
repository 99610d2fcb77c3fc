/**
 * SAM's prompt encoder + mask decoder as an ONNX graph, built from a PyTorch state dict.
 *
 * Reference: segment_anything/utils/onnx.py (SamOnnxModel: _embed_points, _embed_masks,
 * mask_postprocessing), modeling/prompt_encoder.py, modeling/mask_decoder.py (predict_masks),
 * modeling/transformer.py (TwoWayTransformer) and modeling/common.py (LayerNorm2d, MLPBlock).
 * The single variant has exactly the signature of scripts/export_onnx_model.py with the default
 * options (return_single_mask false, no stability score, no extra metrics):
 *
 *   image_embeddings [1,256,64,64]  point_coords [1,N,2]  point_labels [1,N]
 *   mask_input [1,1,256,256]  has_mask_input [1]  orig_im_size [2]
 *   → masks [1,M,h,w]  iou_predictions [1,M]  low_res_masks [1,M,256,256]
 *
 * The batched variant takes B prompt sets of equal N in one call (point_coords [B,N,2],
 * point_labels [B,N], mask_input [B,1,256,256], has_mask_input [B], one flag per row) against one
 * image (image_embeddings [1,256,64,64], broadcast to B as predict_masks' repeat_interleave does)
 * and returns [B,M,...]. Rows are independent: row b gives what the single variant gives for
 * prompt set b. Padding a row with extra (0,0)/−1 points is NOT neutral (they become
 * not_a_point_embed tokens the transformer attends to), so a batch only mixes prompt sets of the
 * same N.
 *
 * With `upscale: false` the graph ends at low_res_masks: no `masks` output and no `orig_im_size`
 * input (the caller upscales, or only needs low-res logits, as automatic mask generation does).
 *
 * Layout: the image side runs channels-last as [B,64·64,C] tokens (the transformer's own layout),
 * so its Linears and the kernel = stride convolutions of mask_downscaling and output_upscaling
 * are plain Gemms over pixel or 2×2-patch rows, and LayerNorm2d is a LayerNormalization over the
 * channel axis; only the finished [B,M,256·256] logits are reordered to row-major pixels. Same
 * arithmetic as the PyTorch modules, fewer passes over the large tensors.
 *
 * Batch sharing: without any mask input in the batch, every row's image tokens are identical until
 * layer 0's image → token attention, so that part is computed once and broadcast (distinctRows).
 *
 * Initializers carry the state-dict tensors unchanged under their state-dict keys; where an op
 * wants another layout (a token Linear's Wᵀ, a convolution weight as a Gemm matrix) a
 * Transpose/Reshape node does it, and onnxruntime folds those at load time. The dense positional
 * encoding (prompt_encoder.get_dense_pe(), a constant of the checkpoint) is precomputed here, as
 * the official export's tracing does, under `prompt_encoder.pe_layer.dense_pe`.
 */
import type { CheckpointTensor, StateDict } from './checkpoint.js';
import { GraphBuilder, attr, dataTypeCode, type Dim, type TensorRef } from './onnx-builder.js';

export interface DecoderBuildOptions {
  /** Dynamic prompt batch: point_coords [B,N,2] …, outputs [B,M,…]. False: the official [1,N,2]. */
  batched: boolean;
  /** Default true: in-graph mask_postprocessing, the `orig_im_size` input and the `masks` output. */
  upscale?: boolean;
}

/** Architecture numbers of a prompt encoder + mask decoder, read from the state dict's shapes. */
export interface DecoderConfig {
  /** transformer_dim / prompt embed_dim (256 in every official model). */
  embedDim: number;
  /** TwoWayTransformer depth (2). */
  depth: number;
  /** Attention heads (8). Not recoverable from the weights: every official build uses 8. */
  numHeads: number;
  /** MLPBlock hidden size (2048). */
  mlpDim: number;
  /** Cross-attention internal dim = embedDim / attention_downsample_rate (128). */
  crossAttnDim: number;
  /** Mask tokens = num_multimask_outputs + 1 (4): the number of masks M per prompt. */
  numMaskTokens: number;
  /** Layers of the IoU head MLP (3) and of each hypernetwork MLP (3). */
  iouHeadDepth: number;
  hypernetDepth: number;
}

/** SAM's fixed geometry: 1024² encoder input, 64² embedding, 256² mask logits. */
const IMG_SIZE = 1024;
const EMBED_HW = 64;
const LOW_RES = 4 * EMBED_HW;
const NUM_HEADS = 8;
/** nn.LayerNorm default and LayerNorm2d's eps. */
const LN_EPS = 1e-5;
const LN2D_EPS = 1e-6;

function tensorOf(sd: StateDict, key: string): CheckpointTensor {
  const t = sd.get(key);
  if (!t) throw new Error(`state dict has no '${key}': not a SAM prompt encoder + mask decoder checkpoint`);
  return t;
}

function countIndexed(sd: StateDict, prefix: string, suffix: string): number {
  let n = 0;
  while (sd.has(`${prefix}${n}${suffix}`)) n++;
  return n;
}

/** Reads the decoder's configuration from tensor shapes (keys prefixed by `prefix`). */
export function decoderConfigFromStateDict(sd: StateDict, prefix = ''): DecoderConfig {
  const pe = `${prefix}prompt_encoder.`;
  const md = `${prefix}mask_decoder.`;
  const embedDim = tensorOf(sd, `${pe}no_mask_embed.weight`).shape[1];
  const depth = countIndexed(sd, `${md}transformer.layers.`, '.norm1.weight');
  if (depth === 0) throw new Error(`state dict has no '${md}transformer.layers.0.*': not a SAM mask decoder checkpoint`);
  const cfg: DecoderConfig = {
    embedDim,
    depth,
    numHeads: NUM_HEADS,
    mlpDim: tensorOf(sd, `${md}transformer.layers.0.mlp.lin1.weight`).shape[0],
    crossAttnDim: tensorOf(sd, `${md}transformer.final_attn_token_to_image.q_proj.weight`).shape[0],
    numMaskTokens: tensorOf(sd, `${md}mask_tokens.weight`).shape[0],
    iouHeadDepth: countIndexed(sd, `${md}iou_prediction_head.layers.`, '.weight'),
    hypernetDepth: countIndexed(sd, `${md}output_hypernetworks_mlps.0.layers.`, '.weight'),
  };
  if (embedDim % NUM_HEADS !== 0 || cfg.crossAttnDim % NUM_HEADS !== 0 || embedDim % 8 !== 0) {
    throw new Error(`mask decoder dims ${embedDim}/${cfg.crossAttnDim} do not split into ${NUM_HEADS} heads`);
  }
  return cfg;
}

/**
 * prompt_encoder.get_dense_pe() as [1, 64·64, C] (token index y·64 + x, channels sin | cos), in
 * float32 arithmetic step by step like PositionEmbeddingRandom.forward, so it matches the constant
 * the official export bakes in to float32 rounding.
 */
function denseImagePe(gaussian: Float32Array, numPosFeats: number): Float32Array {
  const f = Math.fround;
  const twoPi = f(2 * Math.PI);
  const out = new Float32Array(EMBED_HW * EMBED_HW * 2 * numPosFeats);
  for (let y = 0; y < EMBED_HW; y++) {
    const cy = f(2 * f((y + 0.5) / EMBED_HW) - 1);
    for (let x = 0; x < EMBED_HW; x++) {
      const cx = f(2 * f((x + 0.5) / EMBED_HW) - 1);
      const base = (y * EMBED_HW + x) * 2 * numPosFeats;
      for (let k = 0; k < numPosFeats; k++) {
        const v = f(twoPi * f(f(cx * gaussian[k]) + f(cy * gaussian[numPosFeats + k])));
        out[base + k] = Math.sin(v);
        out[base + numPosFeats + k] = Math.cos(v);
      }
    }
  }
  return out;
}

/** Graph-building helpers bound to one state dict; method names follow the PyTorch modules. */
class DecoderGraph {
  private readonly weights = new Map<string, TensorRef>();
  private readonly transposed = new Map<string, TensorRef>();

  constructor(
    readonly g: GraphBuilder,
    readonly sd: StateDict,
    readonly prefix: string,
  ) {}

  shape(key: string): number[] {
    return tensorOf(this.sd, this.prefix + key).shape;
  }

  /** The state-dict tensor `key` (without prefix) as an initializer of its own shape. */
  weight(key: string, shape?: readonly number[]): TensorRef {
    const full = this.prefix + key;
    const known = this.weights.get(full);
    if (known) return known;
    const t = tensorOf(this.sd, full);
    if (!(t.data instanceof Float32Array)) throw new Error(`'${full}' is ${t.dtype}, expected a floating-point tensor`);
    if (shape && (shape.length !== t.shape.length || shape.some((d, i) => d !== t.shape[i]))) {
      throw new Error(`'${full}' has shape [${t.shape.join(',')}], expected [${shape.join(',')}]`);
    }
    const ref = this.g.initializer(full, t.data, t.shape);
    this.weights.set(full, ref);
    return ref;
  }

  /** nn.Linear on token tensors [B,T,in] → [B,T,out]: x·Wᵀ + b; W is [out, in]. */
  linear(x: TensorRef, key: string): TensorRef {
    let wt = this.transposed.get(key);
    if (!wt) {
      wt = this.g.op('Transpose', [this.weight(`${key}.weight`)], { perm: [1, 0] });
      this.transposed.set(key, wt);
    }
    return this.g.op('Add', [this.g.op('MatMul', [x, wt]), this.weight(`${key}.bias`)]);
  }

  /** Gemm over rows [R, in] with a [out, in] weight (transB) and a fused bias → [R, out]. */
  rowsGemm(rows: TensorRef, weight: TensorRef, bias: TensorRef): TensorRef {
    return this.g.op('Gemm', [rows, weight, bias], { transB: 1 });
  }

  /**
   * nn.Linear on image tokens [B,64·64,in] → [B,64·64,out] as one Gemm over B·4096 rows: W is
   * used as stored and the bias add is fused, saving a pass over these large tensors.
   */
  imageLinear(x: TensorRef, key: string): TensorRef {
    const { g } = this;
    const [out, inDim] = this.shape(`${key}.weight`);
    const rows = g.op('Reshape', [x, g.constInt64([-1, inDim])]);
    const y = this.rowsGemm(rows, this.weight(`${key}.weight`), this.weight(`${key}.bias`));
    return g.op('Reshape', [y, g.constInt64([-1, EMBED_HW * EMBED_HW, out])]);
  }

  /** nn.LayerNorm, and LayerNorm2d on channels-last rows: normalizes the last axis. */
  layerNorm(x: TensorRef, key: string, eps = LN_EPS): TensorRef {
    return this.g.op('LayerNormalization', [x, this.weight(`${key}.weight`), this.weight(`${key}.bias`)], {
      axis: -1,
      epsilon: attr.float(eps),
    });
  }

  /** nn.GELU (exact): x·½(1 + erf(x/√2)), in the pattern onnxruntime fuses into one Gelu. */
  gelu(x: TensorRef): TensorRef {
    const { g } = this;
    const e = g.op('Erf', [g.op('Div', [x, g.constFloat([Math.SQRT2], [])])]);
    return g.op('Mul', [g.op('Mul', [x, g.op('Add', [e, g.constFloat([1], [])])]), g.constFloat([0.5], [])]);
  }

  /**
   * nn.Conv2d with kernel = stride = k (1 or 2) on patch rows [R, (i,j,Cin)] (see toPatches)
   * → [R, Cout]: the weight [Cout,Cin,k,k] reordered to [Cout,(i,j,Cin)].
   */
  patchConv(rows: TensorRef, key: string): TensorRef {
    const { g } = this;
    const [cout] = this.shape(`${key}.weight`);
    const w = g.op('Reshape', [g.op('Transpose', [this.weight(`${key}.weight`)], { perm: [0, 2, 3, 1] }), g.constInt64([cout, -1])]);
    return this.rowsGemm(rows, w, this.weight(`${key}.bias`));
  }

  /**
   * nn.ConvTranspose2d(k=2, s=2) on pixel rows [R, Cin] → [R, (i,j,Cout)]: each input pixel
   * writes its own 2×2 output block, so it is one Gemm; the weight [Cin,Cout,2,2] is reordered
   * to [(i,j,Cout), Cin] and the bias repeated per block position.
   */
  patchConvTranspose(rows: TensorRef, key: string): TensorRef {
    const { g } = this;
    const [cin] = this.shape(`${key}.weight`);
    const w = g.op('Reshape', [g.op('Transpose', [this.weight(`${key}.weight`)], { perm: [2, 3, 1, 0] }), g.constInt64([-1, cin])]);
    const b = g.op('Tile', [this.weight(`${key}.bias`), g.constInt64([4])]);
    return this.rowsGemm(rows, w, b);
  }

  /** mask_decoder.MLP: Linear layers with ReLU between them. */
  mlp(x: TensorRef, key: string, numLayers: number): TensorRef {
    let h = x;
    for (let i = 0; i < numLayers; i++) {
      h = this.linear(h, `${key}.layers.${i}`);
      if (i < numLayers - 1) h = this.g.op('Relu', [h]);
    }
    return h;
  }

  /**
   * transformer.Attention: q [B,Nq,C], k and v [B,Nk,C] → [B,Nq,C], with heads of
   * internalDim / numHeads channels. `image` says which side holds the 64·64 image tokens
   * (projected with imageLinear): 'kv' for token → image, 'q' for image → token.
   */
  attention(
    q: TensorRef,
    k: TensorRef,
    v: TensorRef,
    key: string,
    numHeads: number,
    image: 'none' | 'kv' | 'q' = 'none',
  ): TensorRef {
    const { g } = this;
    const proj = (x: TensorRef, name: string, onImage: boolean): TensorRef =>
      onImage ? this.imageLinear(x, `${key}.${name}`) : this.linear(x, `${key}.${name}`);
    const internalDim = this.shape(`${key}.q_proj.weight`)[0];
    const cPerHead = internalDim / numHeads;
    const heads = g.constInt64([0, 0, numHeads, cPerHead]);
    // _separate_heads: [B,N,Ci] → [B,H,N,c]; k goes straight to [B,H,c,Nk] for q·kᵀ.
    const qh = g.op('Transpose', [g.op('Reshape', [proj(q, 'q_proj', image === 'q'), heads])], { perm: [0, 2, 1, 3] });
    const khT = g.op('Transpose', [g.op('Reshape', [proj(k, 'k_proj', image === 'kv'), heads])], { perm: [0, 2, 3, 1] });
    const vh = g.op('Transpose', [g.op('Reshape', [proj(v, 'v_proj', image === 'kv'), heads])], { perm: [0, 2, 1, 3] });
    const logits = g.op('Div', [g.op('MatMul', [qh, khT]), g.constFloat([Math.sqrt(cPerHead)], [])]);
    const out = g.op('MatMul', [g.op('Softmax', [logits], { axis: -1 }), vh]); // [B,H,Nq,c]
    // _recombine_heads: [B,H,Nq,c] → [B,Nq,Ci]
    const merged = g.op('Reshape', [g.op('Transpose', [out], { perm: [0, 2, 1, 3] }), g.constInt64([0, 0, internalDim])]);
    return proj(merged, 'out_proj', image === 'q');
  }
}

/**
 * Channels-last rows of an hw×hw map, [B·hw², C] (row (b,y,x)) → rows of its 2×2 patches,
 * [B·(hw/2)², (i,j,C)] (row (b,y/2,x/2)): the input of a kernel = stride = 2 convolution.
 */
function toPatches(g: GraphBuilder, rows: TensorRef, hw: number, c: number): TensorRef {
  const grid = g.op('Reshape', [rows, g.constInt64([-1, hw / 2, 2, hw / 2, 2, c])]);
  return g.op('Reshape', [g.op('Transpose', [grid], { perm: [0, 1, 3, 2, 4, 5] }), g.constInt64([-1, 4 * c])]);
}

/**
 * SamOnnxModel._embed_points: coords [B,N,2] (1024 frame), labels [B,N] → sparse embeddings
 * [B,N,C]: random-Fourier PE of the pixel centre, zeroed for padding points (label −1), plus
 * not_a_point_embed (−1) or point_embeddings[label] (0 neg, 1 pos, 2/3 box corners).
 */
function embedPoints(d: DecoderGraph, coords: TensorRef, labels: TensorRef, cfg: DecoderConfig): TensorRef {
  const { g } = d;
  const numPosFeats = cfg.embedDim / 2;
  const gaussian = d.weight('prompt_encoder.pe_layer.positional_encoding_gaussian_matrix', [2, numPosFeats]);
  // _pe_encoding on (coords + 0.5) / img_size
  const unit = g.op('Div', [g.op('Add', [coords, g.constFloat([0.5], [])]), g.constFloat([IMG_SIZE], [])]);
  const centered = g.op('Sub', [g.op('Mul', [unit, g.constFloat([2], [])]), g.constFloat([1], [])]);
  const phase = g.op('Mul', [g.op('MatMul', [centered, gaussian]), g.constFloat([2 * Math.PI], [])]); // [B,N,C/2]
  let emb = g.op('Concat', [g.op('Sin', [phase]), g.op('Cos', [phase])], { axis: -1 }); // [B,N,C]

  const lab = g.op('Unsqueeze', [labels, g.constInt64([-1])]); // [B,N,1]
  const is = (value: number): TensorRef => g.op('Equal', [lab, g.constFloat([value], [])]);
  const asFloat = (b: TensorRef): TensorRef => g.op('Cast', [b], { to: dataTypeCode('float32') });
  const padding = is(-1);
  emb = g.op('Mul', [emb, asFloat(g.op('Not', [padding]))]);
  emb = g.op('Add', [emb, g.op('Mul', [d.weight('prompt_encoder.not_a_point_embed.weight', [1, cfg.embedDim]), asFloat(padding)])]);
  for (let i = 0; i < 4; i++) {
    const pointEmbed = d.weight(`prompt_encoder.point_embeddings.${i}.weight`, [1, cfg.embedDim]);
    emb = g.op('Add', [emb, g.op('Mul', [pointEmbed, asFloat(is(i))])]);
  }
  return emb;
}

/**
 * SamOnnxModel._embed_masks: has·mask_downscaling(mask_input) + (1 − has)·no_mask_embed, with
 * has_mask_input [B] applied per row. mask_input [B,1,256,256] → dense embeddings [B,64·64,C],
 * channels-last like the image tokens they are added to. The kernel-2 stride-2 convolutions are
 * Gemms over 2×2 patches, LayerNorm2d a LayerNormalization over the channel axis.
 */
function embedMasks(d: DecoderGraph, maskInput: TensorRef, hasMaskInput: TensorRef): TensorRef {
  const { g } = d;
  const pe = 'prompt_encoder.mask_downscaling';
  const hidden = d.shape(`${pe}.0.weight`)[0];
  let x = toPatches(g, g.op('Reshape', [maskInput, g.constInt64([-1, 1])]), LOW_RES, 1); // [B·128², 4]
  x = d.gelu(d.layerNorm(d.patchConv(x, `${pe}.0`), `${pe}.1`, LN2D_EPS)); // [B·128², c/4]
  x = toPatches(g, x, LOW_RES / 2, hidden); // [B·64², 4·c/4]
  x = d.gelu(d.layerNorm(d.patchConv(x, `${pe}.3`), `${pe}.4`, LN2D_EPS)); // [B·64², c]
  x = d.patchConv(x, `${pe}.6`); // 1×1 conv: [B·64², C]
  const maskEmbedding = g.op('Reshape', [x, g.constInt64([-1, EMBED_HW * EMBED_HW, d.shape(`${pe}.6.weight`)[0]])]);

  const has = g.op('Reshape', [hasMaskInput, g.constInt64([-1, 1, 1])]); // [B,1,1]
  const noMask = d.weight('prompt_encoder.no_mask_embed.weight'); // [1,C]
  const notHas = g.op('Sub', [g.constFloat([1], []), has]);
  return g.op('Add', [g.op('Mul', [has, maskEmbedding]), g.op('Mul', [notHas, noMask])]);
}

/**
 * TwoWayTransformer: tokens [B,T,C] attend to the image tokens [B,64·64,C] and back.
 * Returns [queries [B,T,C], keys [B,64·64,C]].
 */
function twoWayTransformer(
  d: DecoderGraph,
  imageEmbedding: TensorRef,
  imagePe: TensorRef,
  pointEmbedding: TensorRef,
  cfg: DecoderConfig,
): [TensorRef, TensorRef] {
  const { g } = d;
  const t = 'mask_decoder.transformer';
  const h = cfg.numHeads;
  let keys = imageEmbedding;
  let queries = pointEmbedding;
  const queryPe = pointEmbedding;
  const keyPe = imagePe; // [1,HW,C], broadcast over B

  for (let i = 0; i < cfg.depth; i++) {
    const layer = `${t}.layers.${i}`;
    // self attention; the first layer (skip_first_layer_pe) has neither PE nor residual
    if (i === 0) {
      queries = d.attention(queries, queries, queries, `${layer}.self_attn`, h);
    } else {
      const q = g.op('Add', [queries, queryPe]);
      queries = g.op('Add', [queries, d.attention(q, q, queries, `${layer}.self_attn`, h)]);
    }
    queries = d.layerNorm(queries, `${layer}.norm1`);

    // tokens → image; keys are unchanged until norm4, so k serves both cross attentions
    const k = g.op('Add', [keys, keyPe]);
    let q = g.op('Add', [queries, queryPe]);
    queries = g.op('Add', [queries, d.attention(q, k, keys, `${layer}.cross_attn_token_to_image`, h, 'kv')]);
    queries = d.layerNorm(queries, `${layer}.norm2`);

    // MLPBlock (ReLU in the transformer)
    const mlpOut = d.linear(g.op('Relu', [d.linear(queries, `${layer}.mlp.lin1`)]), `${layer}.mlp.lin2`);
    queries = d.layerNorm(g.op('Add', [queries, mlpOut]), `${layer}.norm3`);

    // image → tokens
    q = g.op('Add', [queries, queryPe]);
    keys = g.op('Add', [keys, d.attention(k, q, queries, `${layer}.cross_attn_image_to_token`, h, 'q')]);
    keys = d.layerNorm(keys, `${layer}.norm4`);
  }

  const q = g.op('Add', [queries, queryPe]);
  const k = g.op('Add', [keys, keyPe]);
  queries = g.op('Add', [queries, d.attention(q, k, keys, `${t}.final_attn_token_to_image`, h, 'kv')]);
  queries = d.layerNorm(queries, `${t}.norm_final_attn`);
  return [queries, keys];
}

/**
 * MaskDecoder.predict_masks: image embeddings [1,C,64,64] (shared by the batch), sparse [B,N,C],
 * dense [B',64·64,C] (B' = B, or 1 when shared: see distinctRows) → [masks [B,M,256,256],
 * iou_pred [B,M]].
 */
function predictMasks(
  d: DecoderGraph,
  imageEmbeddings: TensorRef,
  sparse: TensorRef,
  dense: TensorRef,
  batchShape: TensorRef,
  cfg: DecoderConfig,
): [TensorRef, TensorRef] {
  const { g } = d;
  const { embedDim: c, numMaskTokens: m } = cfg;
  const md = 'mask_decoder';
  // output tokens [1+M, C] expanded to [B,1+M,C], then the prompt tokens: [B,1+M+N,C]
  const outputTokens = g.op('Concat', [d.weight(`${md}.iou_token.weight`, [1, c]), d.weight(`${md}.mask_tokens.weight`, [m, c])], {
    axis: 0,
  });
  const expandTo = g.op('Concat', [batchShape, g.constInt64([1, 1])], { axis: 0 });
  const expanded = g.op('Expand', [g.op('Unsqueeze', [outputTokens, g.constInt64([0])]), expandTo]);
  const tokens = g.op('Concat', [expanded, sparse], { axis: 1 });

  // repeat_interleave(image_embeddings, B) + dense: [1,C,64,64] → [1,64·64,C], broadcast to [B,64·64,C]
  const imageTokens = g.op('Transpose', [g.op('Reshape', [imageEmbeddings, g.constInt64([1, c, -1])])], { perm: [0, 2, 1] });
  const src = g.op('Add', [imageTokens, dense]);
  const gaussian = tensorOf(d.sd, `${d.prefix}prompt_encoder.pe_layer.positional_encoding_gaussian_matrix`).data as Float32Array;
  const imagePe = g.initializer(`${d.prefix}prompt_encoder.pe_layer.dense_pe`, denseImagePe(gaussian, c / 2), [1, EMBED_HW * EMBED_HW, c]);

  const [hs, keys] = twoWayTransformer(d, src, imagePe, tokens, cfg);
  const iouTokenOut = g.op('Gather', [hs, g.constInt64([0], [])], { axis: 1 }); // [B,C]

  // output_upscaling on channels-last rows, each 64² pixel expanding to its 4×4 block:
  // [B·64², C] → [B·64²·4, C/4] (rows (b,y,x,i,j)) → [B·64²·4, (k,l,C/8)]
  const up0 = d.patchConvTranspose(g.op('Reshape', [keys, g.constInt64([-1, c])]), `${md}.output_upscaling.0`);
  let up = g.op('Reshape', [up0, g.constInt64([-1, c / 4])]);
  up = d.gelu(d.layerNorm(up, `${md}.output_upscaling.1`, LN2D_EPS));
  up = d.gelu(d.patchConvTranspose(up, `${md}.output_upscaling.3`));
  const upscaled = g.op('Reshape', [up, g.constInt64([-1, LOW_RES * LOW_RES, c / 8])]); // [B, P=(y,x,i,j,k,l), C/8]

  // hypernetwork MLPs, one per mask token: [B,C] → [B,C/8], stacked to [B,M,C/8]
  const hyperIn: TensorRef[] = [];
  for (let i = 0; i < m; i++) {
    const token = g.op('Gather', [hs, g.constInt64([1 + i], [])], { axis: 1 });
    const out = d.mlp(token, `${md}.output_hypernetworks_mlps.${i}`, cfg.hypernetDepth);
    hyperIn.push(g.op('Unsqueeze', [out, g.constInt64([1])]));
  }
  const hyper = g.op('Concat', hyperIn, { axis: 1 });
  // hyper_in @ upscaled: [B,M,P], then the pixels (y,x,i,j,k,l) to row-major (4y+2i+k, 4x+2j+l)
  const blocks = g.op('MatMul', [hyper, g.op('Transpose', [upscaled], { perm: [0, 2, 1] })]);
  const grid = g.op('Reshape', [blocks, g.constInt64([-1, EMBED_HW, EMBED_HW, 2, 2, 2, 2])]);
  const rowMajor = g.op('Transpose', [grid], { perm: [0, 1, 3, 5, 2, 4, 6] });
  const masks = g.op('Reshape', [rowMajor, g.constInt64([-1, m, LOW_RES, LOW_RES])]);

  const iouPred = d.mlp(iouTokenOut, `${md}.iou_prediction_head`, cfg.iouHeadDepth); // [B,M]
  return [masks, iouPred];
}

/**
 * Without any mask input every row's dense embedding is no_mask_embed, so the image tokens stay
 * identical across the batch until layer 0's image → token attention. Returns B' ([1] int64):
 * B if any has_mask_input ≠ 0, else 1. Embedding only B' rows of the mask inputs then lets
 * broadcasting share the mask embedding and layer 0's image-side projections (k/v of
 * token → image, q of image → token) among all B prompts.
 */
function distinctRows(g: GraphBuilder, hasMaskInput: TensorRef, batchShape: TensorRef): TensorRef {
  const anyMask = g.op('Cast', [g.op('Greater', [g.op('ReduceMax', [hasMaskInput], { keepdims: 1 }), g.constFloat([0], [])])], {
    to: dataTypeCode('int64'),
  });
  return g.op('Max', [g.op('Mul', [batchShape, anyMask]), g.constInt64([1])]);
}

/**
 * SamOnnxModel.mask_postprocessing: bilinear ×4 to 1024² (align_corners false), crop to the
 * pre-padding size floor(1024/max(h,w)·[h,w] + 0.5), bilinear to orig_im_size [h,w].
 */
function maskPostprocessing(g: GraphBuilder, masks: TensorRef, origImSize: TensorRef): TensorRef {
  const resize = { mode: 'linear', coordinate_transformation_mode: 'pytorch_half_pixel' } as const;
  const full = g.op('Resize', [masks, '', g.constFloat([1, 1, IMG_SIZE / LOW_RES, IMG_SIZE / LOW_RES])], resize);
  const scale = g.op('Div', [g.constFloat([IMG_SIZE], []), g.op('ReduceMax', [origImSize], { keepdims: 0 })]);
  const prepadded = g.op('Floor', [g.op('Add', [g.op('Mul', [scale, origImSize]), g.constFloat([0.5], [])])]);
  const toInt64 = (x: TensorRef): TensorRef => g.op('Cast', [x], { to: dataTypeCode('int64') });
  const cropped = g.op('Slice', [full, g.constInt64([0, 0]), toInt64(prepadded), g.constInt64([2, 3])]);
  const sizes = g.op('Concat', [g.op('Shape', [cropped], { start: 0, end: 2 }), toInt64(origImSize)], { axis: 0 });
  return g.op('Resize', [cropped, '', '', sizes], resize);
}

/**
 * The prompt encoder + mask decoder of a SAM state dict (`prompt_encoder.*`, `mask_decoder.*`
 * keys, each prefixed by `prefix`) as an ONNX graph; see the module comment for the signature.
 */
export function buildSamDecoder(sd: StateDict, opts: DecoderBuildOptions, prefix = ''): GraphBuilder {
  const cfg = decoderConfigFromStateDict(sd, prefix);
  const upscale = opts.upscale ?? true;
  const name = `sam_decoder${opts.batched ? '_batched' : ''}${upscale ? '' : '_lowres'}`;
  const g = new GraphBuilder(name);
  const d = new DecoderGraph(g, sd, prefix);
  const b: Dim = opts.batched ? 'batch' : 1;
  const m = cfg.numMaskTokens;

  const imageEmbeddings = g.input('image_embeddings', 'float32', [1, cfg.embedDim, EMBED_HW, EMBED_HW]);
  const pointCoords = g.input('point_coords', 'float32', [b, 'num_points', 2]);
  const pointLabels = g.input('point_labels', 'float32', [b, 'num_points']);
  const maskInput = g.input('mask_input', 'float32', [b, 1, LOW_RES, LOW_RES]);
  const hasMaskInput = g.input('has_mask_input', 'float32', [b]);
  const origImSize = upscale ? g.input('orig_im_size', 'float32', [2]) : undefined;

  const sparse = embedPoints(d, pointCoords, pointLabels, cfg);
  const batchShape = g.op('Shape', [pointCoords], { start: 0, end: 1 }); // [B]
  const rows = distinctRows(g, hasMaskInput, batchShape);
  const slice = (x: TensorRef): TensorRef => g.op('Slice', [x, g.constInt64([0]), rows, g.constInt64([0])]);
  const dense = embedMasks(d, slice(maskInput), slice(hasMaskInput)); // [B',HW,C]
  const [lowRes, iouPred] = predictMasks(d, imageEmbeddings, sparse, dense, batchShape, cfg);

  if (origImSize) g.output(maskPostprocessing(g, lowRes, origImSize), 'masks', 'float32', [b, m, 'orig_h', 'orig_w']);
  g.output(iouPred, 'iou_predictions', 'float32', [b, m]);
  g.output(lowRes, 'low_res_masks', 'float32', [b, m, LOW_RES, LOW_RES]);
  return g;
}

/**
 * Building blocks shared with the split decoder (sam-decoder-split.ts): the state-dict-bound
 * helpers, the point embedding, the precomputed dense PE and SAM's fixed geometry. Exported
 * only; the graphs built above do not change.
 */
export { DecoderGraph, denseImagePe, embedPoints, tensorOf, EMBED_HW, LOW_RES, LN_EPS, LN2D_EPS };
