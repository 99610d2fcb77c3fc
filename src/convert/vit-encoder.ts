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
import type { CheckpointTensor, StateDict } from './checkpoint.js';
import type { VitConfig } from './configs.js';
import { attr, GraphBuilder, type TensorRef } from './onnx-builder.js';

/** LayerNorm (norm_layer = partial(nn.LayerNorm, eps=1e-6)) and LayerNorm2d epsilon. */
const LN_EPS = 1e-6;

/**
 * Builds the encoder graph: input `image` float32 [1,3,imgSize,imgSize], output
 * `image_embeddings` float32 [1,outChans,N,N] with N = imgSize / patchSize.
 * Throws a model error when a tensor is missing or has the wrong shape for `cfg`.
 */
export function buildVitEncoder(sd: StateDict, cfg: VitConfig, prefix = 'image_encoder.'): GraphBuilder {
  validateConfig(cfg);
  const g = new GraphBuilder('sam_image_encoder_vit');
  const b = new VitBuilder(g, sd, cfg, prefix);
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
class VitBuilder {
  private readonly shapes = new Map<string, TensorRef>();
  private readonly N: number;
  private readonly C: number;
  private readonly headDim: number;

  constructor(
    private readonly g: GraphBuilder,
    private readonly sd: StateDict,
    private readonly cfg: VitConfig,
    private readonly prefix: string,
  ) {
    this.N = cfg.imgSize / cfg.patchSize;
    this.C = cfg.embedDim;
    this.headDim = cfg.embedDim / cfg.numHeads;
  }

  // --- state dict access -------------------------------------------------------------------

  private tensor(key: string, shape: readonly number[]): CheckpointTensor & { data: Float32Array } {
    const full = this.prefix + key;
    const t = this.sd.get(full);
    if (!t) throw modelError(`checkpoint has no tensor ${full} (needed by the ViT image encoder)`);
    if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
      throw modelError(`checkpoint tensor ${full} has shape [${t.shape.join(',')}], expected [${shape.join(',')}] for this ViT config`);
    }
    if (!(t.data instanceof Float32Array)) throw modelError(`checkpoint tensor ${full} is ${t.dtype}, expected a floating-point tensor`);
    return t as CheckpointTensor & { data: Float32Array };
  }

  /** A state-dict tensor as an initializer named by its key, optionally with other (same-size) dims. */
  weight(key: string, shape: readonly number[], dims: readonly number[] = shape): TensorRef {
    return this.g.initializer(this.prefix + key, this.tensor(key, shape).data, dims);
  }

  private shape(dims: readonly number[]): TensorRef {
    const key = dims.join(',');
    let ref = this.shapes.get(key);
    if (ref === undefined) {
      ref = this.g.constInt64(dims, [dims.length], 'shape');
      this.shapes.set(key, ref);
    }
    return ref;
  }

  private reshape(x: TensorRef, dims: readonly number[]): TensorRef {
    return this.g.op('Reshape', [x, this.shape(dims)]);
  }

  private transpose(x: TensorRef, perm: readonly number[]): TensorRef {
    return this.g.op('Transpose', [x], { perm });
  }

  /** nn.Linear on 2-D tokens: x [T, in] · weightᵀ + bias. */
  private linear(x: TensorRef, weight: TensorRef, bias?: TensorRef): TensorRef {
    return this.g.op('Gemm', bias === undefined ? [x, weight] : [x, weight, bias], { transB: 1 });
  }

  /** nn.LayerNorm over the last axis (eps 1e-6). */
  private layerNorm(x: TensorRef, key: string, C: number): TensorRef {
    return this.g.op('LayerNormalization', [x, this.weight(`${key}.weight`, [C]), this.weight(`${key}.bias`, [C])], {
      axis: -1,
      epsilon: attr.float(LN_EPS),
    });
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
    const { C, N, g } = this;
    const key = `blocks.${i}`;
    const shortcut = x;
    let h = this.layerNorm(x, `${key}.norm1`, C); // [N*N, C]
    if (windowSize > 0) {
      // window_partition: zero-pad the normalized tokens to a multiple of the window (64 → 70),
      // [Hp, Wp, C] → [Hp/ws, ws, Wp/ws, ws, C] → [nWh, nWw, ws, ws, C] → [nW*ws*ws, C].
      const pad = (windowSize - (N % windowSize)) % windowSize;
      const Np = N + pad;
      const nWs = Np / windowSize;
      let w = this.reshape(h, [N, N, C]);
      if (pad > 0) w = g.op('Pad', [w, g.constInt64([0, 0, 0, pad, pad, 0], [6], 'pads')]);
      w = this.transpose(this.reshape(w, [nWs, windowSize, nWs, windowSize, C]), [0, 2, 1, 3, 4]);
      w = this.reshape(w, [nWs * nWs * windowSize * windowSize, C]);
      w = this.attention(`${key}.attn`, w, nWs * nWs, windowSize);
      // window_unpartition: back to [Hp, Wp, C], crop the padding, tokens [N*N, C].
      w = this.transpose(this.reshape(w, [nWs, nWs, windowSize, windowSize, C]), [0, 2, 1, 3, 4]);
      w = this.reshape(w, [Np, Np, C]);
      if (pad > 0) w = g.op('Slice', [w, g.constInt64([0, 0]), g.constInt64([N, N]), g.constInt64([0, 1])]);
      h = this.reshape(w, [N * N, C]);
    } else {
      h = this.attention(`${key}.attn`, h, 1, N);
    }
    x = g.op('Add', [shortcut, h]);
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
   * Attention with decomposed relative positions on nW windows of S×S tokens:
   * x [nW*S*S, C] (window-major, then h, w) → [nW*S*S, C].
   */
  private attention(key: string, x: TensorRef, nW: number, S: number): TensorRef {
    const { C, g } = this;
    const nH = this.cfg.numHeads;
    const hd = this.headDim;
    const L = S * S;
    const scale = hd ** -0.5;

    const qkvW = this.tensor(`${key}.qkv.weight`, [3 * C, C]).data;
    const qkvB = this.cfg.qkvBias ? this.tensor(`${key}.qkv.bias`, [3 * C]).data : new Float32Array(3 * C);
    const part = (j: number, factor: number, name: string): TensorRef[] => {
      const w = qkvW.slice(j * C * C, (j + 1) * C * C);
      const bias = qkvB.slice(j * C, (j + 1) * C);
      if (factor !== 1) {
        for (let n = 0; n < w.length; n++) w[n] *= factor;
        for (let n = 0; n < bias.length; n++) bias[n] *= factor;
      }
      const p = `${this.prefix}${key}.qkv.${name}`;
      return [g.initializer(`${p}.weight`, w, [C, C]), g.initializer(`${p}.bias`, bias, [C])];
    };
    const [wq, bq] = part(0, 1, 'q');
    const [wk, bk] = part(1, scale, 'k_scaled');
    const [wv, bv] = part(2, 1, 'v');

    const q5 = this.reshape(this.linear(x, wq, bq), [nW, S, S, nH, hd]); // [nW, qh, qw, nH, hd]
    const q = this.transpose(q5, [0, 3, 1, 2, 4]); // [nW, nH, qh, qw, hd]
    const kT = this.transpose(this.reshape(this.linear(x, wk, bk), [nW, L, nH, hd]), [0, 2, 3, 1]); // [nW, nH, hd, L]
    const v = this.transpose(this.reshape(this.linear(x, wv, bv), [nW, L, nH, hd]), [0, 2, 1, 3]); // [nW, nH, L, hd]

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
    const merged = this.reshape(this.transpose(out, [0, 2, 1, 3]), [nW * L, C]); // heads back to channels
    return this.linear(merged, this.weight(`${key}.proj.weight`, [C, C]), this.weight(`${key}.proj.bias`, [C]));
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
