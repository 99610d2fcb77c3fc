/**
 * SAM's plain-ViT image encoder (vit_b / vit_l / vit_h) as an ONNX graph built from a state dict:
 * segment_anything/modeling/image_encoder.py `ImageEncoderViT`, with the same numerics.
 *
 *   image [1,3,1024,1024] → patch_embed (conv 16×16 / 16) → + pos_embed → blocks → neck
 *   → image_embeddings [1,256,64,64]
 *
 * Layout: between blocks the tokens are a 2-D tensor [N*N, C] (N = 64 tokens per side, row-major
 * h, w; batch is fixed at 1 by the encoder contract), so every Linear is a Gemm against the
 * state-dict weight with transB=1 (ORT pre-packs constant B) and every LayerNorm is one
 * LayerNormalization (opset 17) over the last axis.
 *
 * Deviations from the PyTorch code that keep the same function:
 * - qkv.weight [3C,C] / qkv.bias [3C] are split at build time into q, k and v Linears (rows
 *   [0,C), [C,2C), [2C,3C)), and the attention scale head_dim^-0.5 is folded into k's weight and
 *   bias: (q*scale)·kᵀ = q·(scale*k)ᵀ, while the relative-position terms use the unscaled q as in
 *   `add_decomposed_rel_pos`.
 * - `get_rel_pos` is evaluated at build time: its index (q - k + S - 1) is static, so the gathered
 *   tables are initializers [S, head_dim, S] and the graph only does MatMuls (no Einsum/Gather).
 *   Only tables that already have 2*S-1 rows (every official checkpoint) are accepted; the
 *   F.interpolate branch for other sizes is refused.
 * - The neck's 1×1 conv (no bias) is a Gemm on the tokens, LayerNorm2d is LayerNormalization on
 *   channels-last tokens; only the 3×3 conv runs on NCHW.
 */
import { modelError } from '../util/errors.js';
import { EncoderGraph } from './encoder-graph.js';
import type { StateDict } from './checkpoint.js';
import type { VitConfig } from './configs.js';
import { attr, GraphBuilder, type TensorRef } from './onnx-builder.js';

export interface VitEncoderOptions {
  /**
   * 'fused' (default): attention as onnxruntime's MultiHeadAttention with the relative positions
   * folded into q·k (see `attention`), no [heads, L, L] tensor in the graph. 'reference': the
   * graph before it (plain MatMul/Add/Softmax, [heads, L, L] scores), kept for the bench's A/B
   * and as the readable statement of the reference.
   */
  attention?: 'fused' | 'reference';
}

/** onnxruntime's contrib operator domain (MultiHeadAttention). */
const MS_DOMAIN = 'com.microsoft';

/**
 * Query rows (of N = 64 tokens each) per MultiHeadAttention call in a global block. Measured on
 * the whole vit_b encoder (2 cores, AVX2, paired runs): 1 row 5% slower than 2, 4 rows 10%
 * slower; the bias of a 2-row chunk is 12 heads × 128 × 4096 floats = 25 MB.
 */
const GLOBAL_QUERY_ROWS = 2;

/**
 * Builds the encoder graph: input `image` float32 [1,3,imgSize,imgSize], output
 * `image_embeddings` float32 [1,outChans,N,N] with N = imgSize / patchSize.
 * Throws a model error when a tensor is missing or has the wrong shape for `cfg`.
 */
export function buildVitEncoder(sd: StateDict, cfg: VitConfig, prefix = 'image_encoder.', opts: VitEncoderOptions = {}): GraphBuilder {
  validateConfig(cfg);
  const g = new GraphBuilder('sam_image_encoder_vit');
  const b = new VitBuilder(g, sd, cfg, prefix, opts.attention ?? 'fused');
  const N = cfg.imgSize / cfg.patchSize;
  const C = cfg.embedDim;

  const image = g.input('image', 'float32', [1, 3, cfg.imgSize, cfg.imgSize]);
  let x = b.patchEmbed(image); // [N*N, C]
  x = g.op('Add', [x, b.weight('pos_embed', [1, N, N, C], [N * N, C])]);
  for (let i = 0; i < cfg.depth; i++) {
    const windowSize = cfg.globalAttnIndexes.includes(i) ? 0 : cfg.windowSize;
    x = b.block(i, x, windowSize);
  }
  const embeddings = b.neck(x); // [1, outChans, N, N]
  g.output(embeddings, 'image_embeddings', 'float32', [1, cfg.outChans, N, N]);
  return g;
}

function validateConfig(cfg: VitConfig): void {
  const problems: string[] = [];
  if (cfg.imgSize % cfg.patchSize !== 0) problems.push(`imgSize ${cfg.imgSize} is not a multiple of patchSize ${cfg.patchSize}`);
  if (cfg.embedDim % cfg.numHeads !== 0) problems.push(`embedDim ${cfg.embedDim} is not a multiple of numHeads ${cfg.numHeads}`);
  if (!Number.isInteger(cfg.embedDim * cfg.mlpRatio)) problems.push(`embedDim * mlpRatio is not an integer`);
  if (!cfg.useRelPos) problems.push('useRelPos false is not supported (every SAM encoder uses relative positions)');
  if (cfg.windowSize <= 0) problems.push('windowSize must be positive');
  if (problems.length > 0) throw modelError(`unsupported ViT encoder config: ${problems.join('; ')}`);
}

/** Graph-building helpers bound to one state dict and config; method names follow the PyTorch modules. */
class VitBuilder extends EncoderGraph {
  private readonly oneHots = new Set<string>();
  private readonly N: number;
  private readonly C: number;
  private readonly headDim: number;

  constructor(
    g: GraphBuilder,
    sd: StateDict,
    private readonly cfg: VitConfig,
    prefix: string,
    private readonly attentionKind: 'fused' | 'reference',
  ) {
    super(g, sd, prefix, { neededBy: 'the ViT image encoder', shapeFor: 'this ViT config' });
    this.N = cfg.imgSize / cfg.patchSize;
    this.C = cfg.embedDim;
    this.headDim = cfg.embedDim / cfg.numHeads;
  }

  // --- modules ----------------------------------------------------------------------------

  /** PatchEmbed: conv k=s=patchSize, then B C H W → tokens [N*N, C]. */
  patchEmbed(image: TensorRef): TensorRef {
    const { C, N } = this;
    const P = this.cfg.patchSize;
    const conv = this.g.op(
      'Conv',
      [image, this.weight('patch_embed.proj.weight', [C, 3, P, P]), this.weight('patch_embed.proj.bias', [C])],
      { kernel_shape: [P, P], strides: [P, P], pads: [0, 0, 0, 0] },
    ); // [1, C, N, N]
    return this.transpose(this.reshape(conv, [C, N * N]), [1, 0]);
  }

  /** Block: x + attn(norm1(x)) (windowed unless windowSize is 0), then x + mlp(norm2(x)). */
  block(i: number, x: TensorRef, windowSize: number): TensorRef {
    const { C, g } = this;
    const key = `blocks.${i}`;
    const h = this.layerNorm(x, `${key}.norm1`, C); // [N*N, C]
    const attn =
      this.attentionKind === 'reference'
        ? this.referenceBlockAttention(`${key}.attn`, h, windowSize)
        : windowSize > 0
          ? this.windowedAttention(`${key}.attn`, h, windowSize)
          : this.globalAttention(`${key}.attn`, h);
    x = g.op('Add', [x, attn]);
    const mlp = this.mlp(`${key}.mlp`, this.layerNorm(x, `${key}.norm2`, C));
    return g.node('Add', [x, mlp], {}, { outputs: [`${this.prefix}${key}.out`] })[0];
  }

  /** MLPBlock: lin2(GELU(lin1(x))), exact erf GELU as nn.GELU(). */
  private mlp(key: string, x: TensorRef): TensorRef {
    const { C, g } = this;
    const hidden = C * this.cfg.mlpRatio;
    const h = this.linear(x, this.weight(`${key}.lin1.weight`, [hidden, C]), this.weight(`${key}.lin1.bias`, [hidden]));
    // 0.5·x·(1 + erf(x/√2)): the pattern ORT fuses into its Gelu kernel.
    const erf = g.op('Erf', [g.op('Div', [h, g.constFloat([Math.SQRT2], [])])]);
    const gelu = g.op('Mul', [g.op('Mul', [h, g.op('Add', [erf, g.constFloat([1], [])])]), g.constFloat([0.5], [])]);
    return this.linear(gelu, this.weight(`${key}.lin2.weight`, [C, hidden]), this.weight(`${key}.lin2.bias`, [C]));
  }

  /**
   * Windowed attention (window_partition → Attention → window_unpartition), tokens [N*N, C] →
   * [N*N, C]. The qkv Linear runs on the N*N real tokens and the zero padding (64 → 70) is added
   * after it: a padded token's q, k, v are then the bias, exactly Linear(0) in the reference. The
   * proj Linear runs after the crop (it is per token), so neither Linear multiplies padding.
   */
  private windowedAttention(key: string, h: TensorRef, ws: number): TensorRef {
    const { C, N, g } = this;
    const pad = (ws - (N % ws)) % ws;
    const Np = N + pad;
    const nWs = Np / ws;
    const { weight, bias } = this.qkvWeights(key);
    // [N*N, 3C] → [Hp, Wp, 3C] → [nWh, ws, nWw, ws, 3C] → [nWh, nWw, ws, ws, 3C] → [nW*ws*ws, 3C]
    let w = this.reshape(this.linear(h, weight), [N, N, 3 * C]);
    if (pad > 0) w = g.op('Pad', [w, g.constInt64([0, 0, 0, pad, pad, 0], [6], 'pads')]);
    w = this.reshape(this.transpose(this.reshape(w, [nWs, ws, nWs, ws, 3 * C]), [0, 2, 1, 3, 4]), [nWs * nWs * ws * ws, 3 * C]);
    const [q, k, v] = g.node('Split', [g.op('Add', [w, bias])], { axis: 1 }, { outputs: 3 });
    let out = this.fusedAttention(key, q, k, v, nWs * nWs, ws); // [nW*ws*ws, C]
    // window_unpartition: back to [Hp, Wp, C], crop the padding, tokens [N*N, C].
    out = this.reshape(this.transpose(this.reshape(out, [nWs, nWs, ws, ws, C]), [0, 2, 1, 3, 4]), [Np, Np, C]);
    if (pad > 0) out = g.op('Slice', [out, g.constInt64([0, 0]), g.constInt64([N, N]), g.constInt64([0, 1])]);
    return this.proj(key, this.reshape(out, [N * N, C]));
  }

  /**
   * Global attention over all L = N*N tokens, [L, C] → [L, C]: onnxruntime's MultiHeadAttention
   * on GLOBAL_QUERY_ROWS rows of queries at a time, each with its own relative-position bias
   * [1, nH, rows*N, L] = rel_h + rel_w broadcast. No [nH, L, L] tensor exists (805 MB for vit_b,
   * 1.07 GB for vit_h); the bias of one chunk (25 MB for vit_b) stays in the L3 cache.
   */
  private globalAttention(key: string, h: TensorRef): TensorRef {
    const { C, N: S, g } = this;
    const nH = this.cfg.numHeads;
    const hd = this.headDim;
    const L = S * S;
    const R = GLOBAL_QUERY_ROWS;
    const chunks = S / R;
    const { weight, bias } = this.qkvWeights(key);
    const [q, k, v] = g.node('Split', [this.linear(h, weight, bias)], { axis: 1 }, { outputs: 3 }); // each [L, C]
    // rel_h[qh, qw, n, kh] = Σ_c q[qh, qw, n, c]·Rh[qh, c, kh]: a MatMul batched over qh.
    const relH = g.op('MatMul', [this.reshape(q, [S, S * nH, hd]), this.relPos(`${key}.rel_pos_h`, S)]); // [qh, qw*nH, kh]
    // rel_w[qh, qw, n, kw] = Σ_c q[qh, qw, n, c]·Rw[qw, c, kw]: batched over qw.
    const qByW = this.reshape(this.transpose(this.reshape(q, [S, S, C]), [1, 0, 2]), [S, S * nH, hd]); // [qw, qh*nH, c]
    const relW = g.op('MatMul', [qByW, this.relPos(`${key}.rel_pos_w`, S)]); // [qw, qh*nH, kw]
    // Per chunk of R query rows: [1, nH, R*qw, kh, 1] and [1, nH, R*qw, 1, kw].
    const relHc = this.transpose(this.reshape(relH, [chunks, R, S, nH, S]), [0, 3, 1, 2, 4]); // [chunk, nH, r, qw, kh]
    const relWc = this.transpose(this.reshape(relW, [S, chunks, R, nH, S]), [1, 3, 2, 0, 4]); // [chunk, nH, r, qw, kw]
    const hs = g.node('Split', [this.reshape(relHc, [chunks, nH, R * S, S, 1])], { axis: 0 }, { outputs: chunks });
    const wsR = g.node('Split', [this.reshape(relWc, [chunks, nH, R * S, 1, S])], { axis: 0 }, { outputs: chunks });
    const qs = g.node('Split', [this.reshape(q, [chunks, R * S, C])], { axis: 0 }, { outputs: chunks }); // each [1, R*S, C]
    // Keys and values once in the kernel's [1, nH, L, hd] layout, shared by every chunk.
    const kB = this.transpose(this.reshape(k, [1, L, nH, hd]), [0, 2, 1, 3]);
    const vB = this.transpose(this.reshape(v, [1, L, nH, hd]), [0, 2, 1, 3]);
    const outs: TensorRef[] = [];
    for (let c = 0; c < chunks; c++) {
      const attnBias = this.reshape(g.op('Add', [hs[c], wsR[c]]), [1, nH, R * S, L]);
      // inputs: query, key, value, bias, key_padding_mask, attention_bias; k carries the scale.
      const [o] = g.node('MultiHeadAttention', [qs[c], kB, vB, '', '', attnBias], { num_heads: nH, scale: attr.float(1) }, { domain: MS_DOMAIN });
      outs.push(o); // [1, R*S, C]
    }
    return this.proj(key, this.reshape(g.op('Concat', outs, { axis: 0 }), [L, C]));
  }

  private proj(key: string, x: TensorRef): TensorRef {
    const { C } = this;
    return this.linear(x, this.weight(`${key}.proj.weight`, [C, C]), this.weight(`${key}.proj.bias`, [C]));
  }

  /**
   * The qkv Linear's weight [3C, C] and bias [3C] as initializers, with the attention scale
   * head_dim^-0.5 folded into k's rows: (q*scale)·kᵀ = q·(scale*k)ᵀ.
   */
  private qkvWeights(key: string): { weight: TensorRef; bias: TensorRef } {
    const { C, g } = this;
    const { w, b } = this.qkvScaled(key);
    const p = `${this.prefix}${key}.qkv`;
    return { weight: g.initializer(`${p}.weight_k_scaled`, w, [3 * C, C]), bias: g.initializer(`${p}.bias_k_scaled`, b, [3 * C]) };
  }

  /** qkv.weight [3C, C] and qkv.bias [3C] (zeros without qkv_bias), k's rows times head_dim^-0.5. */
  private qkvScaled(key: string): { w: Float32Array; b: Float32Array } {
    const { C } = this;
    const scale = this.headDim ** -0.5;
    const w = this.tensor(`${key}.qkv.weight`, [3 * C, C]).data.slice();
    const b = this.cfg.qkvBias ? this.tensor(`${key}.qkv.bias`, [3 * C]).data.slice() : new Float32Array(3 * C);
    for (let n = C * C; n < 2 * C * C; n++) w[n] *= scale;
    for (let n = C; n < 2 * C; n++) b[n] *= scale;
    return { w, b };
  }

  /**
   * add_decomposed_rel_pos folded into the q·k product, so that onnxruntime's MultiHeadAttention
   * (its CPU kernel is flash attention: blocks of scores in L2, never [nH, L, L]) computes it:
   *
   *   attn[q, k] = q·k_scaled + rel_h[q, kh(k)] + rel_w[q, kw(k)]
   *              = [q, rel_h[q, :], rel_w[q, :]] · [k_scaled, onehot(kh(k)), onehot(kw(k))]
   *
   * so each head's query grows to hd + 2S values and each key to hd + 2S (the one-hots are
   * constants), and MultiHeadAttention runs with scale 1. The extra multiply-adds (2S per score)
   * cost less than the [nH, L, L] Adds, Softmax and memory they replace.
   * q, k, v [nW*L, C] → [nW*L, C] (heads merged, as the proj Linear wants).
   */
  private fusedAttention(key: string, q: TensorRef, k: TensorRef, v: TensorRef, nW: number, S: number): TensorRef {
    const { C, g } = this;
    const nH = this.cfg.numHeads;
    const hd = this.headDim;
    const L = S * S;
    // rel_h[w, qh, qw, n, kh] = Σ_c q[w, qh, qw, n, c]·Rh[qh, c, kh]: a MatMul batched over qh.
    const relH = g.op('MatMul', [this.reshape(q, [nW, S, S * nH, hd]), this.relPos(`${key}.rel_pos_h`, S)]); // [nW, qh, qw*nH, kh]
    // rel_w[w, qh, qw, n, kw] = Σ_c q[w, qh, qw, n, c]·Rw[qw, c, kw]: batched over qw.
    const qByW = this.reshape(this.transpose(this.reshape(q, [nW, S, S, C]), [0, 2, 1, 3]), [nW, S, S * nH, hd]); // [nW, qw, qh*nH, c]
    const relWByW = g.op('MatMul', [qByW, this.relPos(`${key}.rel_pos_w`, S)]); // [nW, qw, qh*nH, kw]
    const relW = this.transpose(this.reshape(relWByW, [nW, S, S, nH * S]), [0, 2, 1, 3]); // [nW, qh, qw, nH*kw]
    const qAug = g.op('Concat', [this.reshape(q, [nW * L, nH, hd]), this.reshape(relH, [nW * L, nH, S]), this.reshape(relW, [nW * L, nH, S])], { axis: -1 });
    const kAug = g.op('Concat', [this.reshape(k, [nW, L, nH, hd]), g.op('Expand', [this.keyOneHots(S), this.shape([nW, L, nH, 2 * S])])], { axis: -1 });
    const D = nH * (hd + 2 * S);
    const [out] = g.node(
      'MultiHeadAttention',
      [this.reshape(qAug, [nW, L, D]), this.reshape(kAug, [nW, L, D]), this.reshape(v, [nW, L, C])],
      { num_heads: nH, scale: attr.float(1) },
      { domain: MS_DOMAIN },
    ); // [nW, L, C]
    return this.reshape(out, [nW * L, C]);
  }

  /** [1, L, 1, 2S] constant: key token kh*S + kw → one-hot of kh (first S) and of kw (last S). */
  private keyOneHots(S: number): TensorRef {
    const name = `${this.prefix}rel_pos_key_onehots_${S}`;
    if (!this.oneHots.has(name)) {
      const data = new Float32Array(S * S * 2 * S);
      for (let kh = 0; kh < S; kh++) {
        for (let kw = 0; kw < S; kw++) {
          const row = (kh * S + kw) * 2 * S;
          data[row + kh] = 1;
          data[row + S + kw] = 1;
        }
      }
      this.g.initializer(name, data, [1, S * S, 1, 2 * S]);
      this.oneHots.add(name);
    }
    return name;
  }

  /**
   * The reference formulation, the encoder graph before MultiHeadAttention (kept for the bench's
   * A/B): window_partition on the normalized tokens, q/k/v Linears on the padded windows,
   * [nW, nH, L, L] scores + broadcast rel_h/rel_w, Softmax, ·v, proj, window_unpartition.
   */
  private referenceBlockAttention(key: string, h: TensorRef, windowSize: number): TensorRef {
    const { C, N, g } = this;
    if (windowSize === 0) return this.referenceAttention(key, h, 1, N);
    const pad = (windowSize - (N % windowSize)) % windowSize;
    const Np = N + pad;
    const nWs = Np / windowSize;
    let w = this.reshape(h, [N, N, C]);
    if (pad > 0) w = g.op('Pad', [w, g.constInt64([0, 0, 0, pad, pad, 0], [6], 'pads')]);
    w = this.transpose(this.reshape(w, [nWs, windowSize, nWs, windowSize, C]), [0, 2, 1, 3, 4]);
    w = this.reshape(w, [nWs * nWs * windowSize * windowSize, C]);
    w = this.referenceAttention(key, w, nWs * nWs, windowSize);
    w = this.transpose(this.reshape(w, [nWs, nWs, windowSize, windowSize, C]), [0, 2, 1, 3, 4]);
    w = this.reshape(w, [Np, Np, C]);
    if (pad > 0) w = g.op('Slice', [w, g.constInt64([0, 0]), g.constInt64([N, N]), g.constInt64([0, 1])]);
    return this.reshape(w, [N * N, C]);
  }

  /** Reference attention on nW windows of S×S tokens, x [nW*S*S, C] → [nW*S*S, C] (proj included). */
  private referenceAttention(key: string, x: TensorRef, nW: number, S: number): TensorRef {
    const { C, g } = this;
    const nH = this.cfg.numHeads;
    const hd = this.headDim;
    const L = S * S;
    // Three Linears, one per row block of qkv.weight (the graph as it was).
    const { w, b } = this.qkvScaled(key);
    const [qTok, kTok, vTok] = ['q', 'k_scaled', 'v'].map((name, j) => {
      const p = `${this.prefix}${key}.qkv.${name}`;
      const wj = g.initializer(`${p}.weight`, w.slice(j * C * C, (j + 1) * C * C), [C, C]);
      return this.linear(x, wj, g.initializer(`${p}.bias`, b.slice(j * C, (j + 1) * C), [C]));
    });
    const q5 = this.reshape(qTok, [nW, S, S, nH, hd]); // [nW, qh, qw, nH, hd]
    const q = this.transpose(q5, [0, 3, 1, 2, 4]); // [nW, nH, qh, qw, hd]
    const kT = this.transpose(this.reshape(kTok, [nW, L, nH, hd]), [0, 2, 3, 1]); // [nW, nH, hd, L]
    const v = this.transpose(this.reshape(vTok, [nW, L, nH, hd]), [0, 2, 1, 3]); // [nW, nH, L, hd]

    let attn = g.op('MatMul', [this.reshape(q, [nW, nH, L, hd]), kT]); // [nW, nH, L, L]

    // add_decomposed_rel_pos: rel_h[.., qh, qw, kh] = q[qh, qw]·Rh[qh, kh], rel_w[.., qh, qw, kw] = q[qh, qw]·Rw[qw, kw].
    const RhT = this.relPos(`${key}.rel_pos_h`, S); // [qh, hd, kh]
    const RwT = this.relPos(`${key}.rel_pos_w`, S); // [qw, hd, kw]
    const relH = g.op('MatMul', [q, RhT]); // batch [nW, nH, qh] broadcast against [qh] → [nW, nH, qh, qw, kh]
    const qByW = this.transpose(q5, [0, 3, 2, 1, 4]); // [nW, nH, qw, qh, hd]
    const relW = this.transpose(g.op('MatMul', [qByW, RwT]), [0, 1, 3, 2, 4]); // [nW, nH, qh, qw, kw]
    attn = this.reshape(attn, [nW, nH, S, S, S, S]);
    attn = g.op('Add', [attn, this.reshape(relH, [nW, nH, S, S, S, 1])]);
    attn = g.op('Add', [attn, this.reshape(relW, [nW, nH, S, S, 1, S])]);
    attn = g.op('Softmax', [this.reshape(attn, [nW, nH, L, L])], { axis: -1 });

    const out = g.op('MatMul', [attn, v]); // [nW, nH, L, hd]
    return this.proj(key, this.reshape(this.transpose(out, [0, 2, 1, 3]), [nW * L, C])); // heads back to channels
  }

  /**
   * get_rel_pos(S, S, rel_pos) permuted for MatMul: table[q, c, k] = rel_pos[q - k + S - 1, c],
   * an initializer [S, head_dim, S] named `<key>.gathered`.
   */
  private relPos(key: string, S: number): TensorRef {
    const hd = this.headDim;
    const full = this.prefix + key;
    const t = this.sd.get(full);
    if (!t) throw modelError(`checkpoint has no tensor ${full} (needed by the ViT image encoder)`);
    const rows = 2 * S - 1;
    if (t.shape.length !== 2 || t.shape[1] !== hd) {
      throw modelError(`checkpoint tensor ${full} has shape [${t.shape.join(',')}], expected [${rows},${hd}]`);
    }
    if (t.shape[0] !== rows) {
      throw modelError(
        `checkpoint tensor ${full} has ${t.shape[0]} relative positions, expected ${rows} for a ${S}×${S} attention window; ` +
          'interpolating relative position tables (get_rel_pos with F.interpolate) is not supported',
      );
    }
    const rel = this.tensor(key, [rows, hd]).data;
    const table = new Float32Array(S * hd * S);
    for (let q = 0; q < S; q++) {
      for (let k = 0; k < S; k++) {
        const r = (q - k + S - 1) * hd;
        for (let c = 0; c < hd; c++) table[(q * hd + c) * S + k] = rel[r + c];
      }
    }
    return this.g.initializer(`${full}.gathered`, table, [S, hd, S]);
  }

  /**
   * neck: conv 1×1 (no bias) → LayerNorm2d → conv 3×3 pad 1 (no bias) → LayerNorm2d,
   * tokens [N*N, C] → [1, outChans, N, N].
   */
  neck(x: TensorRef): TensorRef {
    const { C, N, g } = this;
    const O = this.cfg.outChans;
    let h = this.linear(x, this.weight('neck.0.weight', [O, C, 1, 1], [O, C])); // [N*N, O]
    h = this.layerNorm(h, 'neck.1', O);
    h = this.transpose(this.reshape(h, [1, N, N, O]), [0, 3, 1, 2]); // [1, O, N, N]
    h = g.op('Conv', [h, this.weight('neck.2.weight', [O, O, 3, 3])], { kernel_shape: [3, 3], pads: [1, 1, 1, 1] });
    h = this.layerNorm(this.transpose(h, [0, 2, 3, 1]), 'neck.3', O); // channels-last [1, N, N, O]
    return this.transpose(h, [0, 3, 1, 2]);
  }
}
