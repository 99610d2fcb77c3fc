/**
 * SAM's prompt encoder + mask decoder split into three ONNX graphs for automatic mask generation
 * (point/box prompts, no mask input), built from the same state dict as sam-decoder.ts and giving
 * the same low_res_masks and iou_predictions as its batched graph (to float32 rounding: ≤ 7e-7 on
 * the golden cases, test/convert-decoder-split.test.ts). Prompts with a mask input need the
 * regular decoder: here the dense prompt embedding is always no_mask_embed.
 *
 * Why: without a mask input the dense prompt embedding is no_mask_embed for every prompt, so the
 * image side of the decoder does not depend on the prompt until layer 0's image → token
 * attention (its k, v and the token → image q come from the prompt tokens); and automatic mask
 * generation keeps only the masks whose predicted IoU passes pred_iou_thresh (~30% at 0.88),
 * while output_upscaling (~30% of the decoder's multiply-adds) only matters for those.
 *
 *   image side, once per image (crop):
 *     image_embeddings [1,256,64,64]
 *     → src [4096,256]          image tokens + no_mask_embed (row y·64+x, channels last): layer 0's keys
 *       pos_src [4096,256]      prompt_encoder.get_dense_pe(), same layout (a constant of the checkpoint)
 *       l0_t2i_k [8,16,4096]    layer 0 cross_attn_token_to_image.k_proj(src + pos_src), per head, transposed
 *       l0_t2i_v [8,4096,16]    layer 0 cross_attn_token_to_image.v_proj(src), per head
 *       l0_i2t_q [4096,128]     layer 0 cross_attn_image_to_token.q_proj(src + pos_src)
 *   prompt side stage 1, per batch of B prompts of equal N (point_coords [B,N,2] in the 1024
 *   frame, point_labels [B,N] with the official export's (0,0)/−1 padding point, 2/3 box corners;
 *   padding is not neutral, so a batch mixes only prompts of the same N, as for the batched decoder):
 *     src, pos_src, l0_t2i_k, l0_t2i_v, l0_i2t_q, point_coords, point_labels
 *     → iou_predictions [B,4]
 *       transformer_src [B,4096,256]   the TwoWayTransformer's final image tokens (predict_masks' src)
 *       hyper_in [B,4,32]              the hypernetwork MLPs' outputs (predict_masks' hyper_in)
 *   stage 2, only for the prompts whose IoU passes the filter (rows gathered, any B):
 *     transformer_src [B,4096,256], hyper_in [B,4,32] → low_res_masks [B,4,256,256]
 *
 * (Numbers for the official models: C = 256, cross-attention 128 = 8 heads × 16, M = 4 masks.)
 *
 * Stage boundary: stage 2 takes transformer_src (4 MiB per prompt) and hyper_in (512 B), not the
 * upscaled embedding: that is [65536,32] per prompt (8 MiB, twice the size) and computing it is
 * exactly the work (output_upscaling: 402 M of stage 2's 411 M multiply-adds per prompt, ~90% of
 * its time; the mask product and pixel reorder are the rest) that the filter lets stage 2 skip.
 * The hypernetwork MLPs are in stage 1 (0.6 M multiply-adds per prompt) so that stage 2 needs
 * only 32 numbers per mask besides transformer_src.
 *
 * Factorized attention (default; `factorized: false` builds the plain projections instead).
 * The prompt side has T = 1 + M + N ≈ 7 tokens and 8 heads, so every attention between the tokens
 * and the 4096 image tokens can contract the image tokens against H·T = 56 token-side vectors
 * instead of projecting all 4096 image tokens to 128 channels (exact in real arithmetic; the
 * reassociation only changes float32 rounding):
 *
 * - token → image (layer ≥ 1, final): logits_h = q_h·(W_k,h·(x + pe) + b_k,h)ᵀ = (q_h·W_k,h)·(x + pe)ᵀ
 *   + q_h·b_k,h, and the last term is constant over the softmax axis (image tokens), so it drops;
 *   out_h = softmax·(x·W_v,hᵀ + b_v,h) = (softmax·x)·W_v,hᵀ + b_v,h (softmax rows sum to 1).
 *   2·4096·56·256 instead of 2·4096·256·128 + 2·4096·7·128 multiply-adds, and no image-sized
 *   Transpose. (Layer 0 instead uses the image side's k and v: one MatMul per head for all B·T
 *   tokens, [H, B·T, c]·[H, c, 4096].)
 * - image → token (every layer): logits[p,h,t] = (x + pe)_p·W_q,hᵀ·k_h,t + b_q,h·k_h,t, one MatMul of
 *   the image tokens with [256, H·T] (layer 0: the precomputed l0_i2t_q with a block-diagonal
 *   [128, H·T]); out_proj(⊕_h softmax_h·v_h) = Σ_h softmax_h·(v_h·W_o,hᵀ) + b_o, one MatMul with
 *   [H·T, 256], whose rows also carry b_o/H (each head's softmax sums to 1, so b_o is added once
 *   without a bias pass over [B,4096,C]; H = 8 makes the division exact). The softmax runs over
 *   the last axis of [B,4096,H,T] and the heads never need to be recombined, so no image-sized
 *   Transpose either.
 *
 * Both save multiply-adds while T < C·Ci / (H·C − Ci) = 17 tokens (N ≤ 12 points); automatic mask
 * generation has T = 7. vit_t, N = 2: stage 1 471 M per prompt instead of 998 M with the plain
 * projections; today's batched decoder 1435 M per prompt (B = 16), the split 882 M with stage 2
 * for every prompt, 594 M for 30% of them (image side: 403 M once per image).
 *
 * Scales 1/√(head dim) of the cross attentions multiply the token side (0.25 for 16-channel heads,
 * a power of two, so exact); the self-attention keeps SAM's Div.
 *
 * Fused projections: Linears that read the same tensor are one MatMul — layer 0's self-attention
 * q/k/v; layer i's image → token k (from queries + query_pe) with layer i+1's self-attention q and
 * k (or, after the last layer, final_attn_token_to_image's q), which read the same tensor; layer
 * i's image → token v with layer i+1's self-attention v; on the image side, layer 0's token →
 * image k with its image → token q (both from src + pos_src).
 *
 * Initializers carry the state-dict tensors under their state-dict keys, as in sam-decoder.ts;
 * the per-head reshapes, transposes and concatenations of weights are nodes that onnxruntime folds
 * at load time.
 */
import type { StateDict } from './checkpoint.js';
import { GraphBuilder, attr, type Dim, type TensorRef } from './onnx-builder.js';
import {
  DecoderGraph,
  EMBED_HW,
  LN2D_EPS,
  LN_EPS,
  LOW_RES,
  decoderConfigFromStateDict,
  denseImagePe,
  embedPoints,
  tensorOf,
  type DecoderConfig,
} from './sam-decoder.js';

export interface SplitDecoderOptions {
  /** Default true: factorized cross attentions (module comment); false: plain projections. */
  factorized?: boolean;
}

/** The three graphs of the split decoder; see the module comment for their signatures. */
export interface SplitDecoderGraphs {
  image: GraphBuilder;
  prompt: GraphBuilder;
  masks: GraphBuilder;
}

/** Graph input/output names, in order. */
export const SPLIT_DECODER_IO = {
  image: { inputs: ['image_embeddings'], outputs: ['src', 'pos_src', 'l0_t2i_k', 'l0_t2i_v', 'l0_i2t_q'] },
  prompt: {
    inputs: ['src', 'pos_src', 'l0_t2i_k', 'l0_t2i_v', 'l0_i2t_q', 'point_coords', 'point_labels'],
    outputs: ['iou_predictions', 'transformer_src', 'hyper_in'],
  },
  masks: { inputs: ['transformer_src', 'hyper_in'], outputs: ['low_res_masks'] },
} as const;

const HW = EMBED_HW * EMBED_HW;
const TRANSFORMER = 'mask_decoder.transformer';

/** Dimensions used throughout. */
interface Dims {
  c: number; // embed dim (256)
  ci: number; // cross-attention internal dim (128)
  h: number; // heads (8)
  ch: number; // channels per cross-attention head (16)
  m: number; // mask tokens (4)
}

function dimsOf(cfg: DecoderConfig): Dims {
  return { c: cfg.embedDim, ci: cfg.crossAttnDim, h: cfg.numHeads, ch: cfg.crossAttnDim / cfg.numHeads, m: cfg.numMaskTokens };
}

/** Image-side tensor shapes (the contract between the image graph and the prompt graph). */
function imageSideShapes(x: Dims): Record<(typeof SPLIT_DECODER_IO.image.outputs)[number], number[]> {
  return {
    src: [HW, x.c],
    pos_src: [HW, x.c],
    l0_t2i_k: [x.h, x.ch, HW],
    l0_t2i_v: [x.h, HW, x.ch],
    l0_i2t_q: [HW, x.ci],
  };
}

/** Helpers on top of DecoderGraph for the split graphs. */
export class SplitGraph {
  readonly g: GraphBuilder;
  readonly x: Dims;

  constructor(
    readonly d: DecoderGraph,
    readonly cfg: DecoderConfig,
  ) {
    this.g = d.g;
    this.x = dimsOf(cfg);
  }

  /** Wᵀ of several Linears side by side ([in, Σ out]) and their biases ([Σ out]). */
  private stacked(keys: readonly string[]): [TensorRef, TensorRef] {
    const { g, d } = this;
    const wt = keys.map((k) => g.op('Transpose', [d.weight(`${k}.weight`)], { perm: [1, 0] }));
    const b = keys.map((k) => d.weight(`${k}.bias`));
    return keys.length === 1 ? [wt[0], b[0]] : [g.op('Concat', wt, { axis: 1 }), g.op('Concat', b, { axis: 0 })];
  }

  /** Linears reading the same token tensor [B,T,in] as one MatMul, split per Linear. */
  fusedLinear(x: TensorRef, keys: readonly string[]): TensorRef[] {
    const { g, d } = this;
    if (keys.length === 1) return [d.linear(x, keys[0])];
    const [wt, b] = this.stacked(keys);
    const y = g.op('Add', [g.op('MatMul', [x, wt]), b]);
    const sizes = keys.map((k) => d.shape(`${k}.weight`)[0]);
    return g.node('Split', [y, g.constInt64(sizes)], { axis: -1 }, { outputs: keys.length });
  }

  /** Linears reading the same rows [R, in] as one Gemm, split per Linear. */
  fusedRowsGemm(rows: TensorRef, keys: readonly string[]): TensorRef[] {
    const { g, d } = this;
    const w = keys.length === 1 ? d.weight(`${keys[0]}.weight`) : g.op('Concat', keys.map((k) => d.weight(`${k}.weight`)), { axis: 0 });
    const b = keys.length === 1 ? d.weight(`${keys[0]}.bias`) : g.op('Concat', keys.map((k) => d.weight(`${k}.bias`)), { axis: 0 });
    const y = d.rowsGemm(rows, w, b);
    if (keys.length === 1) return [y];
    const sizes = keys.map((k) => d.shape(`${k}.weight`)[0]);
    return g.node('Split', [y, g.constInt64(sizes)], { axis: -1 }, { outputs: keys.length });
  }

  /** x · s for the 1/√(head dim) attention scale. */
  scale(x: TensorRef, channelsPerHead: number): TensorRef {
    return this.g.op('Mul', [x, this.g.constFloat([1 / Math.sqrt(channelsPerHead)], [])]);
  }

  /** [B,T,H·c] → [B,H,T,c]. */
  heads(x: TensorRef, h: number, ch: number): TensorRef {
    const { g } = this;
    return g.op('Transpose', [g.op('Reshape', [x, g.constInt64([0, 0, h, ch])])], { perm: [0, 2, 1, 3] });
  }

  /** [B,H,T,c] → [B,T,H·c]. */
  mergeHeads(x: TensorRef, h: number, ch: number): TensorRef {
    const { g } = this;
    return g.op('Reshape', [g.op('Transpose', [x], { perm: [0, 2, 1, 3] }), g.constInt64([0, 0, h * ch])]);
  }

  /** A Linear's weight [out, in] as per-head blocks [H, out/H, in] (rows h·c … h·c + c − 1). */
  weightRowHeads(key: string): TensorRef {
    const { g, d, x } = this;
    return g.op('Reshape', [d.weight(`${key}.weight`), g.constInt64([x.h, -1, d.shape(`${key}.weight`)[1]])]);
  }

  /**
   * Attention among the prompt tokens with projected q, k, v [B,T,Ci] (self-attention), as
   * transformer.Attention after its input projections; returns out_proj of the result.
   */
  tokenAttention(q: TensorRef, k: TensorRef, v: TensorRef, key: string): TensorRef {
    const { g, d, x } = this;
    const internal = d.shape(`${key}.q_proj.weight`)[0];
    const ch = internal / x.h;
    const qh = this.heads(q, x.h, ch);
    const khT = g.op('Transpose', [g.op('Reshape', [k, g.constInt64([0, 0, x.h, ch])])], { perm: [0, 2, 3, 1] });
    const vh = this.heads(v, x.h, ch);
    const logits = g.op('Div', [g.op('MatMul', [qh, khT]), g.constFloat([Math.sqrt(ch)], [])]);
    const out = g.op('MatMul', [g.op('Softmax', [logits], { axis: -1 }), vh]);
    return d.linear(this.mergeHeads(out, x.h, ch), `${key}.out_proj`);
  }

  /**
   * Layer 0's token → image attention against the precomputed image side: q [B,T,Ci] (already
   * q_proj'd and scaled), kT [H,c,4096], v [H,4096,c]. The heads of all B·T tokens are one
   * MatMul per head: [H, B·T, c] · [H, c, 4096].
   */
  tokenToImagePrecomputed(q: TensorRef, kT: TensorRef, v: TensorRef, bt: TensorRef, key: string): TensorRef {
    const { g, d, x } = this;
    const qh = g.op('Reshape', [
      g.op('Transpose', [g.op('Reshape', [q, g.constInt64([0, 0, x.h, x.ch])])], { perm: [2, 0, 1, 3] }),
      g.constInt64([x.h, -1, x.ch]),
    ]); // [H, B·T, c]
    const attn = g.op('Softmax', [g.op('MatMul', [qh, kT])], { axis: -1 }); // [H, B·T, 4096]
    const out = g.op('MatMul', [attn, v]); // [H, B·T, c]
    const split = g.op('Reshape', [out, g.op('Concat', [g.constInt64([x.h]), bt, g.constInt64([x.ch])], { axis: 0 })]);
    const merged = g.op('Reshape', [g.op('Transpose', [split], { perm: [1, 2, 0, 3] }), g.constInt64([0, 0, x.ci])]);
    return d.linear(merged, `${key}.out_proj`);
  }

  /**
   * Token → image attention, factorized (module comment): q [B,T,Ci] (q_proj'd, scaled), the
   * image tokens keys [B,4096,C] and keysPe = keys + pe. Returns out_proj of the result [B,T,C].
   */
  tokenToImageFactorized(q: TensorRef, keys: TensorRef, keysPe: TensorRef, key: string): TensorRef {
    const { g, d, x } = this;
    const qh = this.heads(q, x.h, x.ch); // [B,H,T,c]
    const a = g.op('Reshape', [g.op('MatMul', [qh, this.weightRowHeads(`${key}.k_proj`)]), g.constInt64([0, -1, x.c])]); // [B,H·T,C]
    const attn = g.op('Softmax', [g.op('MatMul', [a, g.op('Transpose', [keysPe], { perm: [0, 2, 1] })])], { axis: -1 }); // [B,H·T,4096]
    const ctx = g.op('MatMul', [attn, keys]); // [B,H·T,C]
    const ctxHeads = g.op('Reshape', [ctx, g.constInt64([0, x.h, -1, x.c])]); // [B,H,T,C]
    const wvT = g.op('Transpose', [this.weightRowHeads(`${key}.v_proj`)], { perm: [0, 2, 1] }); // [H,C,c]
    const bv = g.op('Reshape', [d.weight(`${key}.v_proj.bias`), g.constInt64([x.h, 1, x.ch])]);
    const out = g.op('Add', [g.op('MatMul', [ctxHeads, wvT]), bv]); // [B,H,T,c]
    return d.linear(this.mergeHeads(out, x.h, x.ch), `${key}.out_proj`);
  }

  /**
   * Token → image attention with the plain projections of keys + pe and keys (today's graph's
   * arithmetic): q [B,T,Ci] (q_proj'd, scaled).
   */
  tokenToImageDirect(q: TensorRef, keys: TensorRef, keysPe: TensorRef, key: string): TensorRef {
    const { g, d, x } = this;
    const qh = this.heads(q, x.h, x.ch);
    const khT = g.op('Transpose', [g.op('Reshape', [d.imageLinear(keysPe, `${key}.k_proj`), g.constInt64([0, 0, x.h, x.ch])])], {
      perm: [0, 2, 3, 1],
    });
    const vh = this.heads(d.imageLinear(keys, `${key}.v_proj`), x.h, x.ch);
    const out = g.op('MatMul', [g.op('Softmax', [g.op('MatMul', [qh, khT])], { axis: -1 }), vh]);
    return d.linear(this.mergeHeads(out, x.h, x.ch), `${key}.out_proj`);
  }

  /**
   * out_proj(⊕_h softmax_h · v_h) from softmax weights [B,4096,H·T] (heads outer) and the token
   * values v [B,T,Ci]: one MatMul with Σ_h v_h·W_o,hᵀ stacked as [B,H·T,C], plus b_o.
   */
  private imageToTokenOutput(attn: TensorRef, v: TensorRef, key: string): TensorRef {
    const { g, d, x } = this;
    const woT = g.op('Reshape', [g.op('Transpose', [d.weight(`${key}.out_proj.weight`)], { perm: [1, 0] }), g.constInt64([x.h, x.ch, x.c])]);
    // b_o / H on every row of Σ_h v_h·W_o,hᵀ adds b_o once per pixel (each head's softmax sums to
    // 1; H = 8 makes the division exact), sparing a bias pass over [B,4096,C]
    const bo = g.op('Div', [d.weight(`${key}.out_proj.bias`), g.constFloat([x.h], [])]);
    const vo = g.op('Reshape', [g.op('Add', [g.op('MatMul', [this.heads(v, x.h, x.ch), woT]), bo]), g.constInt64([0, -1, x.c])]); // [B,H·T,C]
    return g.op('MatMul', [attn, vo]);
  }

  /** Softmax over the tokens of logits [B,4096,H·T] (heads outer), staying [B,4096,H·T]. */
  private softmaxPerHead(logits: TensorRef): TensorRef {
    const { g, x } = this;
    const perHead = g.op('Reshape', [logits, g.constInt64([0, 0, x.h, -1])]);
    return g.op('Reshape', [g.op('Softmax', [perHead], { axis: -1 }), g.constInt64([0, 0, -1])]);
  }

  /**
   * Layer 0's image → token attention: the precomputed q0 [4096,Ci] against the token keys
   * k [B,T,Ci] (k_proj'd, scaled) as one MatMul with a block-diagonal [B,Ci,H·T]; v [B,T,Ci].
   */
  imageToTokenPrecomputed(q0: TensorRef, k: TensorRef, v: TensorRef, key: string): TensorRef {
    const { g, x } = this;
    const kT = g.op('Transpose', [g.op('Reshape', [k, g.constInt64([0, 0, x.h, x.ch])])], { perm: [0, 2, 3, 1] }); // [B,H,c,T]
    const eye = new Float32Array(x.h * x.h);
    for (let i = 0; i < x.h; i++) eye[i * x.h + i] = 1;
    const blocks = g.op('Mul', [g.op('Unsqueeze', [kT, g.constInt64([3])]), g.constFloat(eye, [x.h, 1, x.h, 1])]); // [B,H,c,H,T]
    const kBlockDiag = g.op('Reshape', [blocks, g.constInt64([0, x.ci, -1])]); // [B,Ci,H·T]
    const attn = this.softmaxPerHead(g.op('MatMul', [q0, kBlockDiag])); // [B,4096,H·T]
    return this.imageToTokenOutput(attn, v, key);
  }

  /**
   * Image → token attention, factorized: image tokens keysPe [B,4096,C] against the token keys
   * k [B,T,Ci] (k_proj'd, scaled) through W_q,hᵀ·k_h,t ([B,C,H·T]) and b_q,h·k_h,t; v [B,T,Ci].
   */
  imageToTokenFactorized(keysPe: TensorRef, k: TensorRef, v: TensorRef, key: string): TensorRef {
    const { g, d, x } = this;
    const kh = this.heads(k, x.h, x.ch); // [B,H,T,c]
    const kq = g.op('Reshape', [g.op('MatMul', [kh, this.weightRowHeads(`${key}.q_proj`)]), g.constInt64([0, -1, x.c])]); // [B,H·T,C]
    const bq = g.op('Reshape', [d.weight(`${key}.q_proj.bias`), g.constInt64([x.h, x.ch, 1])]);
    const beta = g.op('Reshape', [g.op('MatMul', [kh, bq]), g.constInt64([0, 1, -1])]); // [B,1,H·T]
    const logits = g.op('Add', [g.op('MatMul', [keysPe, g.op('Transpose', [kq], { perm: [0, 2, 1] })]), beta]); // [B,4096,H·T]
    return this.imageToTokenOutput(this.softmaxPerHead(logits), v, key);
  }

  /** Image → token attention with the plain projections (q0 given, or q_proj(keysPe)). */
  imageToTokenDirect(keysPe: TensorRef | undefined, q0: TensorRef | undefined, k: TensorRef, v: TensorRef, key: string): TensorRef {
    const { g, d, x } = this;
    const q = q0 ?? d.imageLinear(keysPe!, `${key}.q_proj`);
    const qh = g.op('Transpose', [g.op('Reshape', [q, g.constInt64([-1, HW, x.h, x.ch])])], { perm: [0, 2, 1, 3] }); // [B|1,H,4096,c]
    const khT = g.op('Transpose', [g.op('Reshape', [k, g.constInt64([0, 0, x.h, x.ch])])], { perm: [0, 2, 3, 1] });
    const out = g.op('MatMul', [g.op('Softmax', [g.op('MatMul', [qh, khT])], { axis: -1 }), this.heads(v, x.h, x.ch)]);
    return d.imageLinear(this.mergeHeads(out, x.h, x.ch), `${key}.out_proj`);
  }

  /** nn.LayerNorm over the last axis whose output is the graph tensor `name`. */
  namedLayerNorm(x: TensorRef, key: string, name: string): TensorRef {
    const { g, d } = this;
    return g.node('LayerNormalization', [x, d.weight(`${key}.weight`), d.weight(`${key}.bias`)], { axis: -1, epsilon: attr.float(LN_EPS) }, {
      outputs: [name],
    })[0];
  }

  /** M MLPs of equal shapes applied to their own rows: x [M,B,in] → [M,B,out] (ReLU between). */
  stackedMlps(x: TensorRef, keys: readonly string[], numLayers: number): TensorRef {
    const { g, d } = this;
    let h = x;
    for (let j = 0; j < numLayers; j++) {
      const w = g.op(
        'Concat',
        keys.map((k) => g.op('Unsqueeze', [g.op('Transpose', [d.weight(`${k}.layers.${j}.weight`)], { perm: [1, 0] }), g.constInt64([0])])),
        { axis: 0 },
      ); // [M,in,out]
      const b = g.op(
        'Concat',
        keys.map((k) => g.op('Unsqueeze', [d.weight(`${k}.layers.${j}.bias`), g.constInt64([0, 1])])),
        { axis: 0 },
      ); // [M,1,out]
      h = g.op('Add', [g.op('MatMul', [h, w]), b]);
      if (j < numLayers - 1) h = g.op('Relu', [h]);
    }
    return h;
  }
}

/** The image-side graph: image_embeddings → src, pos_src, layer 0's image-side projections. */
export function buildSamDecoderImageSide(sd: StateDict, prefix = ''): GraphBuilder {
  return buildSplitImageSide(sd, prefix, { graphName: 'sam_decoder_image_side', cfg: decoderConfigFromStateDict(sd, prefix), embeddingName: 'image_embeddings' });
}

/** What the image side of SAM 2's split decoder adds to SAM's (sam2-decoder.ts). */
export interface ImageSideSpec {
  graphName: string;
  cfg: DecoderConfig;
  /** The [1,C,64,64] embedding input: image_embeddings (SAM), image_embed (SAM 2). */
  embeddingName: string;
  /** More inputs and outputs (SAM 2's high-res feature rows for the mask side). */
  extra?: (d: DecoderGraph) => void;
}

/** The image side of SAM's or SAM 2's split decoder (their transformers are the same). */
export function buildSplitImageSide(sd: StateDict, prefix: string, spec: ImageSideSpec): GraphBuilder {
  const g = new GraphBuilder(spec.graphName);
  const d = new DecoderGraph(g, sd, prefix);
  const s = new SplitGraph(d, spec.cfg);
  const x = s.x;
  const l0 = `${TRANSFORMER}.layers.0`;

  const emb = g.input(spec.embeddingName, 'float32', [1, x.c, EMBED_HW, EMBED_HW]);
  spec.extra?.(d);
  // [1,C,64,64] → [4096,C] + no_mask_embed (= the dense prompt embedding without mask input)
  const tokens = g.op('Transpose', [g.op('Reshape', [emb, g.constInt64([x.c, HW])])], { perm: [1, 0] });
  const src = g.op('Add', [tokens, d.weight('prompt_encoder.no_mask_embed.weight', [1, x.c])]);
  const gaussian = tensorOf(sd, `${prefix}prompt_encoder.pe_layer.positional_encoding_gaussian_matrix`).data as Float32Array;
  const pos = g.initializer(`${prefix}prompt_encoder.pe_layer.dense_pe`, denseImagePe(gaussian, x.c / 2), [HW, x.c]);

  // k of token → image and q of image → token both project src + pos: one Gemm
  const srcPe = g.op('Add', [src, pos]);
  const [k0, q0] = s.fusedRowsGemm(srcPe, [`${l0}.cross_attn_token_to_image.k_proj`, `${l0}.cross_attn_image_to_token.q_proj`]);
  const [v0] = s.fusedRowsGemm(src, [`${l0}.cross_attn_token_to_image.v_proj`]);
  const perHead = (t: TensorRef, perm: number[]): TensorRef =>
    g.op('Transpose', [g.op('Reshape', [t, g.constInt64([HW, x.h, x.ch])])], { perm });

  const shapes = imageSideShapes(x);
  g.output(src, 'src', 'float32', shapes.src);
  g.output(pos, 'pos_src', 'float32', shapes.pos_src);
  g.output(perHead(k0, [1, 2, 0]), 'l0_t2i_k', 'float32', shapes.l0_t2i_k);
  g.output(perHead(v0, [1, 0, 2]), 'l0_t2i_v', 'float32', shapes.l0_t2i_v);
  g.output(q0, 'l0_i2t_q', 'float32', shapes.l0_i2t_q);
  return g;
}

/**
 * The prompt-side stage 1 graph: the image-side tensors and B point prompts → iou_predictions,
 * transformer_src and hyper_in (module comment).
 */
export function buildSamDecoderPromptSide(sd: StateDict, opts: SplitDecoderOptions = {}, prefix = ''): GraphBuilder {
  const factorized = opts.factorized ?? true;
  const cfg = decoderConfigFromStateDict(sd, prefix);
  const x = dimsOf(cfg);
  const md = 'mask_decoder';
  return buildSplitPromptSide(sd, prefix, factorized, {
    graphName: `sam_decoder_prompt_side${factorized ? '' : '_direct'}`,
    cfg,
    mlp: ['mlp.lin1', 'mlp.lin2'],
    // tokens [B, 1+M+N, C]: iou token, mask tokens, prompt points (predict_masks)
    tokens: (d, pointCoords, pointLabels, batchShape) => {
      const { g } = d;
      const sparse = embedPoints(d, pointCoords, pointLabels, cfg);
      const outputTokens = g.op('Concat', [d.weight(`${md}.iou_token.weight`, [1, x.c]), d.weight(`${md}.mask_tokens.weight`, [x.m, x.c])], { axis: 0 });
      const expanded = g.op('Expand', [g.op('Unsqueeze', [outputTokens, g.constInt64([0])]), g.op('Concat', [batchShape, g.constInt64([1, 1])], { axis: 0 })]);
      return g.op('Concat', [expanded, sparse], { axis: 1 });
    },
    // heads: IoU from the iou token, hypernetwork MLPs (one per mask token) as one batched MatMul
    heads: (d, hs, s) => {
      const { g } = d;
      const iou = d.mlp(g.op('Gather', [hs, g.constInt64([0], [])], { axis: 1 }), `${md}.iou_prediction_head`, cfg.iouHeadDepth);
      const maskTokens = g.op('Transpose', [g.op('Slice', [hs, g.constInt64([1]), g.constInt64([1 + x.m]), g.constInt64([1])])], { perm: [1, 0, 2] }); // [M,B,C]
      const hyperKeys = Array.from({ length: x.m }, (_, i) => `${md}.output_hypernetworks_mlps.${i}`);
      const hyper = g.op('Transpose', [s.stackedMlps(maskTokens, hyperKeys, cfg.hypernetDepth)], { perm: [1, 0, 2] }); // [B,M,C/8]
      return { iou, hyper, m: x.m };
    },
  });
}

/** What differs between SAM's and SAM 2's prompt side; the TwoWayTransformer between is the same. */
export interface PromptSideSpec {
  graphName: string;
  cfg: DecoderConfig;
  /** The transformer MLP's two Linears under `layers.i.`: mlp.lin1 / mlp.lin2 (SAM), mlp.layers.0 / mlp.layers.1 (SAM 2). */
  mlp: readonly [string, string];
  /** point_coords [B,N,2], point_labels [B,N] → the transformer's tokens [B,T,C]. */
  tokens: (d: DecoderGraph, pointCoords: TensorRef, pointLabels: TensorRef, batchShape: TensorRef) => TensorRef;
  /** hs [B,T,C] → iou_predictions [B,M], hyper_in [B,M,C/8]. */
  heads: (d: DecoderGraph, hs: TensorRef, s: SplitGraph) => { iou: TensorRef; hyper: TensorRef; m: number };
}

/** The prompt side of SAM's or SAM 2's split decoder. */
export function buildSplitPromptSide(sd: StateDict, prefix: string, factorized: boolean, spec: PromptSideSpec): GraphBuilder {
  const cfg = spec.cfg;
  const g = new GraphBuilder(spec.graphName);
  const d = new DecoderGraph(g, sd, prefix);
  const s = new SplitGraph(d, cfg);
  const x = s.x;
  const b: Dim = 'batch';

  const shapes = imageSideShapes(x);
  const src = g.input('src', 'float32', shapes.src);
  const pos = g.input('pos_src', 'float32', shapes.pos_src);
  const k0T = g.input('l0_t2i_k', 'float32', shapes.l0_t2i_k);
  const v0 = g.input('l0_t2i_v', 'float32', shapes.l0_t2i_v);
  const q0 = g.input('l0_i2t_q', 'float32', shapes.l0_i2t_q);
  const pointCoords = g.input('point_coords', 'float32', [b, 'num_points', 2]);
  const pointLabels = g.input('point_labels', 'float32', [b, 'num_points']);

  const batchShape = g.op('Shape', [pointCoords], { start: 0, end: 1 });
  const tokens = spec.tokens(d, pointCoords, pointLabels, batchShape);
  const bt = g.op('Shape', [tokens], { start: 0, end: 2 }); // [B, T]

  // TwoWayTransformer
  const queryPe = tokens;
  let queries = tokens;
  let keys = src; // [4096,C] in layer 0 (broadcast), [B,4096,C] after
  let keysPe: TensorRef = '';
  const s0 = `${TRANSFORMER}.layers.0.self_attn`;
  let [sq, sk, sv] = s.fusedLinear(queries, [`${s0}.q_proj`, `${s0}.k_proj`, `${s0}.v_proj`]);
  let finalQ: TensorRef = '';
  for (let i = 0; i < cfg.depth; i++) {
    const layer = `${TRANSFORMER}.layers.${i}`;
    // self attention (layer 0: no PE, no residual); projections come from the previous layer
    const selfOut = s.tokenAttention(sq, sk, sv, `${layer}.self_attn`);
    queries = d.layerNorm(i === 0 ? selfOut : g.op('Add', [queries, selfOut]), `${layer}.norm1`);

    // tokens → image
    const t2i = `${layer}.cross_attn_token_to_image`;
    const q = s.scale(d.linear(g.op('Add', [queries, queryPe]), `${t2i}.q_proj`), x.ch);
    const t2iOut =
      i === 0
        ? s.tokenToImagePrecomputed(q, k0T, v0, bt, t2i)
        : factorized
          ? s.tokenToImageFactorized(q, keys, keysPe, t2i)
          : s.tokenToImageDirect(q, keys, keysPe, t2i);
    queries = d.layerNorm(g.op('Add', [queries, t2iOut]), `${layer}.norm2`);

    // MLPBlock
    const mlpOut = d.linear(g.op('Relu', [d.linear(queries, `${layer}.${spec.mlp[0]}`)]), `${layer}.${spec.mlp[1]}`);
    queries = d.layerNorm(g.op('Add', [queries, mlpOut]), `${layer}.norm3`);

    // image → tokens; its k reads queries + query_pe like the next self-attention's q and k (or
    // the final attention's q), its v reads queries like the next self-attention's v
    const i2t = `${layer}.cross_attn_image_to_token`;
    const next = i + 1 < cfg.depth ? `${TRANSFORMER}.layers.${i + 1}.self_attn` : undefined;
    const [ik, ...qkNext] = s.fusedLinear(
      g.op('Add', [queries, queryPe]),
      next ? [`${i2t}.k_proj`, `${next}.q_proj`, `${next}.k_proj`] : [`${i2t}.k_proj`, `${TRANSFORMER}.final_attn_token_to_image.q_proj`],
    );
    const [iv, ...vNext] = s.fusedLinear(queries, next ? [`${i2t}.v_proj`, `${next}.v_proj`] : [`${i2t}.v_proj`]);
    const ks = s.scale(ik, x.ch);
    const i2tOut =
      i === 0
        ? factorized
          ? s.imageToTokenPrecomputed(q0, ks, iv, i2t)
          : s.imageToTokenDirect(undefined, q0, ks, iv, i2t)
        : factorized
          ? s.imageToTokenFactorized(keysPe, ks, iv, i2t)
          : s.imageToTokenDirect(keysPe, undefined, ks, iv, i2t);
    const residual = g.op('Add', [keys, i2tOut]);
    // the last norm4 writes the output tensor itself (an Identity would copy [B,4096,C])
    keys = next
      ? d.layerNorm(residual, `${layer}.norm4`)
      : s.namedLayerNorm(residual, `${layer}.norm4`, 'transformer_src');
    keysPe = g.op('Add', [keys, pos]);
    if (next) [sq, sk, sv] = [qkNext[0], qkNext[1], vNext[0]];
    else finalQ = qkNext[0];
  }
  const fin = `${TRANSFORMER}.final_attn_token_to_image`;
  const qf = s.scale(finalQ, x.ch);
  const finOut = factorized ? s.tokenToImageFactorized(qf, keys, keysPe, fin) : s.tokenToImageDirect(qf, keys, keysPe, fin);
  const hs = d.layerNorm(g.op('Add', [queries, finOut]), `${TRANSFORMER}.norm_final_attn`);

  const { iou, hyper, m } = spec.heads(d, hs, s);
  g.output(iou, 'iou_predictions', 'float32', [b, m]);
  g.output(keys, 'transformer_src', 'float32', [b, HW, x.c]);
  g.output(hyper, 'hyper_in', 'float32', [b, m, x.c / 8]);
  return g;
}

/**
 * Stage 2: transformer_src [B,4096,C] and hyper_in [B,M,C/8] → low_res_masks [B,M,256,256]:
 * output_upscaling on channels-last rows and the mask product, exactly as sam-decoder.ts's
 * predictMasks does it.
 */
export function buildSamDecoderMaskSide(sd: StateDict, prefix = ''): GraphBuilder {
  const cfg = decoderConfigFromStateDict(sd, prefix);
  const g = new GraphBuilder('sam_decoder_mask_side');
  const d = new DecoderGraph(g, sd, prefix);
  const { c, m } = dimsOf(cfg);
  const md = 'mask_decoder';
  const b: Dim = 'batch';

  const keys = g.input('transformer_src', 'float32', [b, HW, c]);
  const hyper = g.input('hyper_in', 'float32', [b, m, c / 8]);
  // [B·64², C] → [B·64²·4, C/4] (rows (b,y,x,i,j)) → [B·64²·4, (k,l,C/8)]
  const up0 = d.patchConvTranspose(g.op('Reshape', [keys, g.constInt64([-1, c])]), `${md}.output_upscaling.0`);
  let up = g.op('Reshape', [up0, g.constInt64([-1, c / 4])]);
  up = d.gelu(d.layerNorm(up, `${md}.output_upscaling.1`, LN2D_EPS));
  up = d.gelu(d.patchConvTranspose(up, `${md}.output_upscaling.3`));
  const upscaled = g.op('Reshape', [up, g.constInt64([-1, LOW_RES * LOW_RES, c / 8])]); // [B, P=(y,x,i,j,k,l), C/8]
  const blocks = g.op('MatMul', [hyper, g.op('Transpose', [upscaled], { perm: [0, 2, 1] })]);
  const grid = g.op('Reshape', [blocks, g.constInt64([-1, EMBED_HW, EMBED_HW, 2, 2, 2, 2])]);
  const rowMajor = g.op('Transpose', [grid], { perm: [0, 1, 3, 5, 2, 4, 6] });
  const masks = g.node('Reshape', [rowMajor, g.constInt64([-1, m, LOW_RES, LOW_RES])], {}, { outputs: ['low_res_masks'] })[0];
  g.output(masks, 'low_res_masks', 'float32', [b, m, LOW_RES, LOW_RES]);
  return g;
}

/** All three graphs of the split decoder. */
export function buildSamDecoderSplit(sd: StateDict, opts: SplitDecoderOptions = {}, prefix = ''): SplitDecoderGraphs {
  return {
    image: buildSamDecoderImageSide(sd, prefix),
    prompt: buildSamDecoderPromptSide(sd, opts, prefix),
    masks: buildSamDecoderMaskSide(sd, prefix),
  };
}
