/**
 * The SAM 2 / SAM 2.1 image encoder (Hiera trunk + FPN neck + the two high-resolution
 * projections of the mask decoder + no_mem_embed) as an ONNX graph built from an official state
 * dict: sam2/modeling/backbones/{hieradet,image_encoder}.py and SAM2Base.forward_image /
 * SAM2ImagePredictor.set_image, with the same numerics.
 *
 *   image [1,3,1024,1024] → patch_embed (conv 7×7 / 4, pad 3) → + pos_embed → Hiera blocks
 *   → stage outputs (stride 4, 8, 16, 32) → FPN laterals (1×1 convs to 256) with the nearest ×2
 *   top-down term on the stride-16 level only, stride 32 dropped (scalp 1)
 *   → image_embed       [1,256,64,64]   = stride-16 level + no_mem_embed
 *     high_res_feats_0  [1,32,256,256]  = sam_mask_decoder.conv_s0(stride-4 level)
 *     high_res_feats_1  [1,64,128,128]  = sam_mask_decoder.conv_s1(stride-8 level)
 * (the contract of samexporter's export_sam2.py encoder).
 *
 * Layout: between blocks the tokens are a 2-D tensor [H*W, C] (row-major h, w; batch fixed at 1),
 * so every Linear is a Gemm with transB=1 against the state-dict weight and every LayerNorm is one
 * LayerNormalization (opset 17). Windowed attention is reshape/transpose of the tokens into
 * [windows*ws*ws, 3C] and onnxruntime's com.microsoft MultiHeadAttention batched over windows
 * (queries and keys may differ in length, which q-pooling needs).
 *
 * Deviations from the PyTorch code that keep the same function:
 * - `_get_pos_embed` is evaluated at build time: bicubic upsampling of pos_embed (PyTorch's
 *   align_corners=False, a = -0.75, border-clamped taps) plus the tiled pos_embed_window, one
 *   initializer [1, C, H, W] added to the patch embedding's output.
 * - Window padding: the qkv Linear runs on the real tokens without its bias, the zero padding is
 *   added after it and then the bias, so a padded token's q, k, v are the bias, exactly
 *   Linear(0) in the reference (padded keys take part in the attention there too).
 * - Query pooling (MaxPool2d 2×2 on each window's queries) is a ReduceMax over the 2×2 cells of
 *   the windowed queries; the projected shortcut is pooled the same way on the whole map.
 * - FPN 1×1 convs are Gemms; those feeding an NCHW output are written W·Xᵀ so that no transpose
 *   of the result is needed. no_mem_embed ([1,1,256], one value per channel: the reference adds
 *   it to the [HW, B, C] flattened features) is folded into the stride-16 lateral's bias.
 * - By default sam_mask_decoder.conv_s0 ∘ neck.convs.3 and conv_s1 ∘ neck.convs.2 (two 1×1 convs
 *   with nothing between them) are folded at build time into one 1×1 conv each (computed in
 *   float64): 0.4 GMAC instead of 3.2 (of tiny's ~141), and no [65536, 256] intermediate;
 *   `foldHighResConvs: false` keeps the two convs.
 */
import { modelError } from '../util/errors.js';
import { EncoderGraph } from './encoder-graph.js';
import type { StateDict } from './checkpoint.js';
import { hieraBlocks, hieraStageEnds, type HieraBlockSpec, type Sam2Config } from './sam2-configs.js';
import { attr, GraphBuilder, type ModelOptions, type TensorRef } from './onnx-builder.js';

export interface Sam2EncoderOptions {
  /**
   * 'fused' (default): attention as onnxruntime's MultiHeadAttention (no [heads, L, L] tensor).
   * 'reference': plain MatMul / Softmax / MatMul, the readable statement of the reference.
   */
  attention?: 'fused' | 'reference';
  /** Fold conv_s0 / conv_s1 into the FPN laterals they follow (default true); see the module comment. */
  foldHighResConvs?: boolean;
  /** Passed to the serialized ModelProto (producer, metadata). */
  model?: ModelOptions;
}

/** onnxruntime's contrib operator domain (MultiHeadAttention). */
const MS_DOMAIN = 'com.microsoft';

const TRUNK = 'image_encoder.trunk.';
const NECK = 'image_encoder.neck.';

/** Output names and shapes of the encoder contract. */
export const SAM2_ENCODER_OUTPUTS = ['image_embed', 'high_res_feats_0', 'high_res_feats_1'] as const;

/** Builds the encoder and serializes it: ONNX model bytes (tiny 127.6 MiB, large ~847 MiB: under protobuf's 2 GiB). */
export function buildSam2Encoder(sd: StateDict, cfg: Sam2Config, opts: Sam2EncoderOptions = {}): Buffer {
  return buildSam2EncoderGraph(sd, cfg, opts).serialize({ producerName: 'sam-cli convert', ...opts.model });
}

/**
 * Builds the encoder graph: input `image` float32 [1,3,S,S] (S = cfg.imageSize), outputs
 * `image_embed` [1,256,S/16,S/16], `high_res_feats_0` [1,32,S/4,S/4], `high_res_feats_1`
 * [1,64,S/8,S/8]. Throws a model error when a tensor is missing or has the wrong shape for `cfg`.
 */
export function buildSam2EncoderGraph(sd: StateDict, cfg: Sam2Config, opts: Sam2EncoderOptions = {}): GraphBuilder {
  validateConfig(cfg);
  checkSam2EncoderTensors(sd, cfg);
  const g = new GraphBuilder(`sam2_image_encoder_${cfg.size}`);
  const b = new HieraBuilder(g, sd, cfg, opts.attention ?? 'fused');
  const S = cfg.imageSize;
  const image = g.input('image', 'float32', [1, 3, S, S]);

  let { x, H, W } = b.patchEmbed(image); // tokens [H*W, C]
  const blocks = hieraBlocks(cfg.trunk);
  const stageEnds = hieraStageEnds(cfg.trunk);
  const levels: { x: TensorRef; H: number; W: number; C: number }[] = [];
  for (const spec of blocks) {
    ({ x, H, W } = b.block(spec, x, H, W));
    if (stageEnds.includes(spec.i)) levels.push({ x, H, W, C: spec.dimOut });
  }
  b.neck(levels, opts.foldHighResConvs ?? true);
  return g;
}

function validateConfig(cfg: Sam2Config): void {
  const t = cfg.trunk;
  const problems: string[] = [];
  if (t.stages.length !== 4 || t.windowSpec.length !== 4) problems.push('Hiera needs 4 stages and 4 window sizes');
  if (t.qStride !== 2) problems.push(`q_stride ${t.qStride} (only 2×2 query pooling is supported)`);
  if (cfg.imageSize % (t.patchStride * 8) !== 0) problems.push(`image size ${cfg.imageSize} is not a multiple of ${t.patchStride * 8}`);
  const blocks = hieraBlocks(t);
  for (const blk of blocks) {
    if (blk.dimOut % blk.heads !== 0) problems.push(`block ${blk.i}: width ${blk.dimOut} is not a multiple of ${blk.heads} heads`);
    if (blk.qPool && blk.windowSize % 2 !== 0) problems.push(`block ${blk.i}: query pooling needs an even window size, not ${blk.windowSize}`);
  }
  const channels = hieraStageEnds(t).map((e) => blocks[e].dimOut).reverse();
  if (channels.join(',') !== cfg.neck.backboneChannelList.join(',')) {
    problems.push(`trunk channels [${channels}] do not match the neck's backbone_channel_list [${cfg.neck.backboneChannelList}]`);
  }
  if (cfg.neck.scalp !== 1 || cfg.neck.fpnTopDownLevels.join(',') !== '2,3' || cfg.neck.fuseType !== 'sum' || cfg.neck.fpnInterpModel !== 'nearest') {
    problems.push('only the official FPN (scalp 1, top-down levels [2,3], nearest, sum) is supported');
  }
  if (cfg.neck.dModel !== 256 || !cfg.directlyAddNoMemEmbed || !cfg.useHighResFeaturesInSam) {
    problems.push('only d_model 256 with directly_add_no_mem_embed and use_high_res_features_in_sam is supported');
  }
  if (problems.length > 0) throw modelError(`unsupported SAM 2 encoder config ${cfg.type}: ${problems.join('; ')}`);
}

/**
 * Every state-dict tensor the image encoder of `cfg` reads, with its shape (keys of the official
 * SAM 2 state dict: image_encoder.trunk.*, image_encoder.neck.*, sam_mask_decoder.conv_s0/s1.*,
 * no_mem_embed).
 */
export function sam2EncoderTensorShapes(cfg: Sam2Config): Map<string, number[]> {
  const t = cfg.trunk;
  const m = new Map<string, number[]>();
  const [ph, pw] = t.windowPosEmbedBkgSpatialSize;
  m.set(`${TRUNK}pos_embed`, [1, t.embedDim, ph, pw]);
  m.set(`${TRUNK}pos_embed_window`, [1, t.embedDim, t.windowSpec[0], t.windowSpec[0]]);
  m.set(`${TRUNK}patch_embed.proj.weight`, [t.embedDim, 3, t.patchKernel, t.patchKernel]);
  m.set(`${TRUNK}patch_embed.proj.bias`, [t.embedDim]);
  for (const b of hieraBlocks(t)) {
    const k = `${TRUNK}blocks.${b.i}`;
    const hidden = Math.trunc(b.dimOut * t.mlpRatio);
    m.set(`${k}.norm1.weight`, [b.dim]);
    m.set(`${k}.norm1.bias`, [b.dim]);
    m.set(`${k}.attn.qkv.weight`, [3 * b.dimOut, b.dim]);
    m.set(`${k}.attn.qkv.bias`, [3 * b.dimOut]);
    m.set(`${k}.attn.proj.weight`, [b.dimOut, b.dimOut]);
    m.set(`${k}.attn.proj.bias`, [b.dimOut]);
    m.set(`${k}.norm2.weight`, [b.dimOut]);
    m.set(`${k}.norm2.bias`, [b.dimOut]);
    m.set(`${k}.mlp.layers.0.weight`, [hidden, b.dimOut]);
    m.set(`${k}.mlp.layers.0.bias`, [hidden]);
    m.set(`${k}.mlp.layers.1.weight`, [b.dimOut, hidden]);
    m.set(`${k}.mlp.layers.1.bias`, [b.dimOut]);
    if (b.dim !== b.dimOut) {
      m.set(`${k}.proj.weight`, [b.dimOut, b.dim]);
      m.set(`${k}.proj.bias`, [b.dimOut]);
    }
  }
  const d = cfg.neck.dModel;
  cfg.neck.backboneChannelList.forEach((C, j) => {
    m.set(`${NECK}convs.${j}.conv.weight`, [d, C, 1, 1]);
    m.set(`${NECK}convs.${j}.conv.bias`, [d]);
  });
  m.set('sam_mask_decoder.conv_s0.weight', [d / 8, d, 1, 1]);
  m.set('sam_mask_decoder.conv_s0.bias', [d / 8]);
  m.set('sam_mask_decoder.conv_s1.weight', [d / 4, d, 1, 1]);
  m.set('sam_mask_decoder.conv_s1.bias', [d / 4]);
  m.set('no_mem_embed', [1, 1, d]);
  return m;
}

/**
 * Throws a model error, before any graph is built, at the first tensor (in state-dict order) that
 * is missing (saying how many more are) or has another shape than `cfg` needs.
 */
export function checkSam2EncoderTensors(sd: StateDict, cfg: Sam2Config): void {
  const shapes = sam2EncoderTensorShapes(cfg);
  for (const [key, shape] of shapes) {
    const t = sd.get(key);
    if (!t) {
      const missing = [...shapes.keys()].filter((k) => !sd.has(k)).length;
      const more = missing > 1 ? ` and ${missing - 1} more` : '';
      throw modelError(`checkpoint has no tensor ${key}${more} (needed by the ${cfg.type} image encoder); is the checkpoint complete?`);
    }
    if (t.shape.length !== shape.length || t.shape.some((v, i) => v !== shape[i])) {
      throw modelError(`checkpoint tensor ${key} has shape [${t.shape.join(',')}], expected [${shape.join(',')}] for ${cfg.type}`);
    }
  }
}

/** Graph-building helpers bound to one state dict and config; method names follow the PyTorch modules. */
class HieraBuilder extends EncoderGraph {
  constructor(
    g: GraphBuilder,
    sd: StateDict,
    private readonly cfg: Sam2Config,
    private readonly attentionKind: 'fused' | 'reference',
  ) {
    super(g, sd, '', { neededBy: `the ${cfg.type} image encoder`, shapeFor: cfg.type, missingHint: '; is the checkpoint complete?' });
  }

  // --- trunk -------------------------------------------------------------------------------

  /** PatchEmbed + `_get_pos_embed`: conv 7×7/4 pad 3, + the precomputed position embedding, → tokens. */
  patchEmbed(image: TensorRef): { x: TensorRef; H: number; W: number } {
    const t = this.cfg.trunk;
    const C = t.embedDim;
    const k = t.patchKernel;
    const H = Math.floor((this.cfg.imageSize + 2 * t.patchPadding - k) / t.patchStride) + 1;
    const conv = this.g.op(
      'Conv',
      [image, this.weight(`${TRUNK}patch_embed.proj.weight`, [C, 3, k, k]), this.weight(`${TRUNK}patch_embed.proj.bias`, [C])],
      { kernel_shape: [k, k], strides: [t.patchStride, t.patchStride], pads: [t.patchPadding, t.patchPadding, t.patchPadding, t.patchPadding] },
    ); // [1, C, H, W]
    const pos = this.g.initializer(`${TRUNK}pos_embed.resized`, this.positionEmbedding(H, H), [1, C, H, H]);
    const x = this.transpose(this.reshape(this.g.op('Add', [conv, pos]), [C, H * H]), [1, 0]);
    return { x, H, W: H };
  }

  /** Hiera._get_pos_embed((h, w)) as NCHW data [C, h, w]. */
  private positionEmbedding(h: number, w: number): Float32Array {
    const t = this.cfg.trunk;
    const C = t.embedDim;
    const [ph, pw] = t.windowPosEmbedBkgSpatialSize;
    const ws = t.windowSpec[0];
    const pos = this.tensor(`${TRUNK}pos_embed`, [1, C, ph, pw]).data;
    const win = this.tensor(`${TRUNK}pos_embed_window`, [1, C, ws, ws]).data;
    if (h % ws !== 0 || w % ws !== 0) {
      throw modelError(`unsupported SAM 2 encoder config ${this.cfg.type}: pos_embed_window ${ws}×${ws} does not tile ${h}×${w}`);
    }
    const out = bicubicResize(pos, C, ph, pw, h, w);
    for (let c = 0; c < C; c++) {
      for (let y = 0; y < h; y++) {
        const row = (c * h + y) * w;
        const wrow = (c * ws + (y % ws)) * ws;
        for (let x = 0; x < w; x++) out[row + x] = Math.fround(out[row + x] + win[wrow + (x % ws)]);
      }
    }
    return out;
  }

  /**
   * MultiScaleBlock: x [H*W, dim] → [H'*W', dimOut] (H' = H/2 with query pooling).
   *   h = norm1(x); shortcut = pool(proj(h)) when the width changes, else x;
   *   x = shortcut + attn(window_partition(h)); x = x + mlp(norm2(x)).
   */
  block(spec: HieraBlockSpec, x: TensorRef, H: number, W: number): { x: TensorRef; H: number; W: number } {
    const { g } = this;
    const key = `${TRUNK}blocks.${spec.i}`;
    const h = this.layerNorm(x, `${key}.norm1`, spec.dim);
    const Ho = spec.qPool ? H / 2 : H;
    const Wo = spec.qPool ? W / 2 : W;
    if (spec.qPool && (H % 2 !== 0 || W % 2 !== 0)) {
      throw modelError(`unsupported SAM 2 encoder config ${this.cfg.type}: block ${spec.i} pools an odd ${H}×${W} map`);
    }
    let shortcut = x;
    if (spec.dim !== spec.dimOut) {
      shortcut = this.linear(h, this.weight(`${key}.proj.weight`, [spec.dimOut, spec.dim]), this.weight(`${key}.proj.bias`, [spec.dimOut]));
      if (spec.qPool) shortcut = this.pool2x2(shortcut, 1, H, W, spec.dimOut);
    }
    x = g.op('Add', [shortcut, this.attention(`${key}.attn`, h, H, W, spec)]);
    const mlp = this.mlp(`${key}.mlp`, this.layerNorm(x, `${key}.norm2`, spec.dimOut), spec.dimOut);
    x = g.node('Add', [x, mlp], {}, { outputs: [`${key}.out`] })[0];
    return { x, H: Ho, W: Wo };
  }

  /** MLP(num_layers=2): layers.1(GELU(layers.0(x))), exact erf GELU as nn.GELU(). */
  private mlp(key: string, x: TensorRef, C: number): TensorRef {
    const { g } = this;
    const hidden = Math.trunc(C * this.cfg.trunk.mlpRatio);
    const h = this.linear(x, this.weight(`${key}.layers.0.weight`, [hidden, C]), this.weight(`${key}.layers.0.bias`, [hidden]));
    // 0.5·x·(1 + erf(x/√2)): the pattern ORT fuses into its Gelu kernel.
    const erf = g.op('Erf', [g.op('Div', [h, g.constFloat([Math.SQRT2], [])])]);
    const gelu = g.op('Mul', [g.op('Mul', [h, g.op('Add', [erf, g.constFloat([1], [])])]), g.constFloat([0.5], [])]);
    return this.linear(gelu, this.weight(`${key}.layers.1.weight`, [C, hidden]), this.weight(`${key}.layers.1.bias`, [C]));
  }

  /**
   * MaxPool2d(2, 2) of tokens laid out as B maps of h×w (row-major), [B*h*w, C] → [B*(h/2)*(w/2), C].
   * h and w must be even (they are in every official config).
   */
  private pool2x2(x: TensorRef, B: number, h: number, w: number, C: number): TensorRef {
    const r = this.reshape(x, [B * (h / 2), 2, w / 2, 2, C]);
    return this.reshape(this.g.op('ReduceMax', [r], { axes: [1, 3], keepdims: 0 }), [B * (h / 2) * (w / 2), C]);
  }

  /**
   * window_partition → MultiScaleAttention (with query pooling) → window_unpartition, h [H*W, dim]
   * → [H'*W', dimOut], proj included. windowSize 0 is global attention over the whole map.
   */
  private attention(key: string, h: TensorRef, H: number, W: number, spec: HieraBlockSpec): TensorRef {
    const { g } = this;
    const D = spec.dimOut;
    const ws = spec.windowSize;
    const weight = this.weight(`${key}.qkv.weight`, [3 * D, spec.dim]);
    const bias = this.weight(`${key}.qkv.bias`, [3 * D]);
    let qkv: TensorRef;
    let B: number; // windows
    let sh: number; // window rows (the whole map for global attention)
    let sw: number;
    let nWh = 1;
    let nWw = 1;
    if (ws > 0) {
      const padH = (ws - (H % ws)) % ws;
      const padW = (ws - (W % ws)) % ws;
      nWh = (H + padH) / ws;
      nWw = (W + padW) / ws;
      B = nWh * nWw;
      sh = ws;
      sw = ws;
      if (padH > 0 || padW > 0) {
        // Padded tokens are zeros before the Linear: their q, k, v are the bias.
        let t = this.reshape(this.linear(h, weight), [H, W, 3 * D]);
        t = g.op('Pad', [t, g.constInt64([0, 0, 0, padH, padW, 0], [6], 'pads')]);
        qkv = g.op('Add', [this.partition(t, nWh, nWw, ws, 3 * D), bias]);
      } else {
        qkv = this.partition(this.linear(h, weight, bias), nWh, nWw, ws, 3 * D);
      }
    } else {
      qkv = this.linear(h, weight, bias);
      B = 1;
      sh = H;
      sw = W;
    }
    let [q, k, v] = g.node('Split', [qkv], { axis: 1 }, { outputs: 3 }); // each [B*sh*sw, D]
    let qh = sh;
    let qw = sw;
    if (spec.qPool) {
      q = this.pool2x2(q, B, sh, sw, D);
      qh = sh / 2;
      qw = sw / 2;
    }
    let out = this.attentionCore(q, k, v, B, qh * qw, sh * sw, D, spec.heads); // [B*qh*qw, D]
    const Ho = spec.qPool ? H / 2 : H;
    const Wo = spec.qPool ? W / 2 : W;
    if (ws > 0) {
      // window_unpartition at the pooled window size, padding recomputed from the output map.
      const wo = spec.qPool ? ws / 2 : ws;
      const padH = (wo - (Ho % wo)) % wo;
      const padW = (wo - (Wo % wo)) % wo;
      if ((Ho + padH) / wo !== nWh || (Wo + padW) / wo !== nWw) {
        throw modelError(`unsupported SAM 2 encoder config ${this.cfg.type}: block windows do not line up after query pooling`);
      }
      out = this.transpose(this.reshape(out, [nWh, nWw, wo, wo, D]), [0, 2, 1, 3, 4]);
      out = this.reshape(out, [Ho + padH, Wo + padW, D]);
      if (padH > 0 || padW > 0) out = g.op('Slice', [out, g.constInt64([0, 0]), g.constInt64([Ho, Wo]), g.constInt64([0, 1])]);
      out = this.reshape(out, [Ho * Wo, D]);
    }
    return this.linear(out, this.weight(`${key}.proj.weight`, [D, D]), this.weight(`${key}.proj.bias`, [D]));
  }

  /** [Hp, Wp, C] (or tokens of it) → windows [nWh*nWw*ws*ws, C]. */
  private partition(x: TensorRef, nWh: number, nWw: number, ws: number, C: number): TensorRef {
    const t = this.transpose(this.reshape(x, [nWh, ws, nWw, ws, C]), [0, 2, 1, 3, 4]);
    return this.reshape(t, [nWh * nWw * ws * ws, C]);
  }

  /** softmax(q kᵀ / √hd) v per window and head: q [B*Lq, D], k, v [B*Lk, D] → [B*Lq, D]. */
  private attentionCore(q: TensorRef, k: TensorRef, v: TensorRef, B: number, Lq: number, Lk: number, D: number, nH: number): TensorRef {
    const { g } = this;
    const hd = D / nH;
    if (this.attentionKind === 'fused') {
      const [o] = g.node(
        'MultiHeadAttention',
        [this.reshape(q, [B, Lq, D]), this.reshape(k, [B, Lk, D]), this.reshape(v, [B, Lk, D])],
        { num_heads: nH, scale: attr.float(1 / Math.sqrt(hd)) },
        { domain: MS_DOMAIN },
      ); // [B, Lq, D]
      return this.reshape(o, [B * Lq, D]);
    }
    const qT = this.transpose(this.reshape(q, [B, Lq, nH, hd]), [0, 2, 1, 3]); // [B, nH, Lq, hd]
    const kT = this.transpose(this.reshape(k, [B, Lk, nH, hd]), [0, 2, 3, 1]); // [B, nH, hd, Lk]
    const vT = this.transpose(this.reshape(v, [B, Lk, nH, hd]), [0, 2, 1, 3]); // [B, nH, Lk, hd]
    const scores = g.op('Mul', [g.op('MatMul', [qT, kT]), g.constFloat([1 / Math.sqrt(hd)], [])]);
    const o = g.op('MatMul', [g.op('Softmax', [scores], { axis: -1 }), vT]); // [B, nH, Lq, hd]
    return this.reshape(this.transpose(o, [0, 2, 1, 3]), [B * Lq, D]);
  }

  // --- neck, no_mem_embed, conv_s0 / conv_s1 ----------------------------------------------

  /**
   * FpnNeck (scalp 1) + forward_image's conv_s0 / conv_s1 + no_mem_embed, from the four stage
   * outputs (stride 4 … 32, tokens [H*W, C]); declares the three graph outputs.
   */
  neck(levels: { x: TensorRef; H: number; W: number; C: number }[], fold: boolean): void {
    const { g } = this;
    const d = this.cfg.neck.dModel;
    const n = levels.length - 1; // 3
    // neck.convs[n - i] is the lateral of level i (convs.0 ↔ stride 32).
    const lateral = (i: number) => {
      const { C } = levels[i];
      const key = `${NECK}convs.${n - i}.conv`;
      return { w: this.tensor(`${key}.weight`, [d, C, 1, 1]).data, b: this.tensor(`${key}.bias`, [d]).data, key };
    };
    /** W·Xᵀ + b: a 1×1 conv of tokens X [H*W, C] straight to NCHW [1, O, H, W]. */
    const convToNchw = (x: TensorRef, w: TensorRef, b: TensorRef, O: number, H: number, W: number) =>
      this.reshape(g.op('Gemm', [w, x, b], { transB: 1 }), [1, O, H, W]);

    // Stride 32 lateral (only feeds the top-down term), channels-first [d, h3*w3].
    const l3 = levels[3];
    const lat3 = lateral(3);
    const top = g.op('Gemm', [g.initializer(`${lat3.key}.weight`, lat3.w, [d, l3.C]), l3.x, g.initializer(`${lat3.key}.bias`, lat3.b, [d, 1])], { transB: 1 });
    // Nearest ×2 upsampling: every value to a 2×2 cell.
    const up = this.reshape(g.op('Expand', [this.reshape(top, [d, l3.H, 1, l3.W, 1]), this.shape([d, l3.H, 2, l3.W, 2])]), [d, 4 * l3.H * l3.W]);

    // Stride 16: lateral + top-down + no_mem_embed (folded into the bias).
    const l2 = levels[2];
    const lat2 = lateral(2);
    const noMem = this.tensor('no_mem_embed', [1, 1, d]).data;
    const b2 = Float32Array.from(lat2.b, (v, c) => v + noMem[c]);
    if (l2.H !== 2 * l3.H || l2.W !== 2 * l3.W) throw modelError(`unsupported SAM 2 encoder config ${this.cfg.type}: FPN levels are not ×2 apart`);
    const mid = g.op('Gemm', [g.initializer(`${lat2.key}.weight`, lat2.w, [d, l2.C]), l2.x, g.initializer(`${lat2.key}.bias_plus_no_mem_embed`, b2, [d, 1])], { transB: 1 });
    g.output(this.reshape(g.op('Add', [mid, up]), [1, d, l2.H, l2.W]), 'image_embed', 'float32', [1, d, l2.H, l2.W]);

    // Strides 4 and 8: lateral only, then the mask decoder's projections.
    const outs: [number, string, string][] = [
      [0, 'sam_mask_decoder.conv_s0', 'high_res_feats_0'],
      [1, 'sam_mask_decoder.conv_s1', 'high_res_feats_1'],
    ];
    for (const [i, sKey, name] of outs) {
      const lv = levels[i];
      const lat = lateral(i);
      const O = d / (i === 0 ? 8 : 4);
      const ws = this.tensor(`${sKey}.weight`, [O, d, 1, 1]).data;
      const bs = this.tensor(`${sKey}.bias`, [O]).data;
      let y: TensorRef;
      if (fold) {
        const wf = new Float32Array(O * lv.C);
        const bf = new Float32Array(O);
        const acc = new Float64Array(lv.C);
        for (let o = 0; o < O; o++) {
          acc.fill(0);
          let bsum = bs[o];
          for (let c = 0; c < d; c++) {
            const s = ws[o * d + c];
            bsum += s * lat.b[c];
            const row = c * lv.C;
            for (let j = 0; j < lv.C; j++) acc[j] += s * lat.w[row + j];
          }
          for (let j = 0; j < lv.C; j++) wf[o * lv.C + j] = acc[j];
          bf[o] = bsum;
        }
        y = convToNchw(lv.x, g.initializer(`${sKey}.weight_folded`, wf, [O, lv.C]), g.initializer(`${sKey}.bias_folded`, bf, [O, 1]), O, lv.H, lv.W);
      } else {
        const feat = this.linear(lv.x, g.initializer(`${lat.key}.weight`, lat.w, [d, lv.C]), g.initializer(`${lat.key}.bias`, lat.b, [d]));
        y = convToNchw(feat, g.initializer(`${sKey}.weight`, ws, [O, d]), g.initializer(`${sKey}.bias`, bs, [O, 1]), O, lv.H, lv.W);
      }
      g.output(y, name, 'float32', [1, O, lv.H, lv.W]);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Build-time helpers (exported for tests)

/** PyTorch's cubic convolution kernel weights for fraction t (a = -0.75), taps at -1, 0, 1, 2. */
function cubicWeights(t: number): [number, number, number, number] {
  const A = -0.75;
  const near = (x: number) => ((A + 2) * x - (A + 3)) * x * x + 1; // |x| <= 1
  const far = (x: number) => ((A * x - 5 * A) * x + 8 * A) * x - 4 * A; // 1 < |x| < 2
  return [far(t + 1), near(t), near(1 - t), far(2 - t)];
}

/**
 * F.interpolate(x, size=(outH, outW), mode='bicubic', align_corners=False) of C planes
 * [C, inH, inW] → [C, outH, outW], computed in float64 and rounded once: source coordinate
 * (dst + 0.5)·in/out − 0.5 (not clamped), 4 taps of the a = −0.75 kernel whose indices are clamped
 * to the border (upsample_bicubic2d's access pattern).
 */
export function bicubicResize(src: Float32Array, C: number, inH: number, inW: number, outH: number, outW: number): Float32Array {
  if (src.length !== C * inH * inW) throw new Error(`bicubicResize: ${src.length} values for [${C},${inH},${inW}]`);
  const taps = (inSize: number, outSize: number) => {
    const scale = inSize / outSize;
    return Array.from({ length: outSize }, (_, o) => {
      const real = scale * (o + 0.5) - 0.5;
      const i0 = Math.floor(real);
      const w = cubicWeights(real - i0);
      const idx = [-1, 0, 1, 2].map((d) => Math.min(Math.max(i0 + d, 0), inSize - 1));
      return { idx, w };
    });
  };
  const ty = taps(inH, outH);
  const tx = taps(inW, outW);
  const out = new Float32Array(C * outH * outW);
  for (let c = 0; c < C; c++) {
    const plane = c * inH * inW;
    for (let y = 0; y < outH; y++) {
      const { idx: iy, w: wy } = ty[y];
      for (let x = 0; x < outW; x++) {
        const { idx: ix, w: wx } = tx[x];
        let s = 0;
        for (let a = 0; a < 4; a++) {
          const row = plane + iy[a] * inW;
          let r = 0;
          for (let b2 = 0; b2 < 4; b2++) r += wx[b2] * src[row + ix[b2]];
          s += wy[a] * r;
        }
        out[(c * outH + y) * outW + x] = s;
      }
    }
  }
  return out;
}

/**
 * Multiply-accumulates of one encoder run (convs, Linears and both attention products), for
 * reports: the trunk at the config's image size, the FPN and the high-res projections as built
 * (folded by default).
 */
export function sam2EncoderMacs(cfg: Sam2Config, foldHighResConvs = true): number {
  const t = cfg.trunk;
  const H0 = Math.floor((cfg.imageSize + 2 * t.patchPadding - t.patchKernel) / t.patchStride) + 1;
  let macs = H0 * H0 * t.embedDim * 3 * t.patchKernel * t.patchKernel;
  let H = H0;
  const levels: { H: number; C: number }[] = [];
  const ends = hieraStageEnds(t);
  for (const b of hieraBlocks(t)) {
    const T = H * H;
    const Ho = b.qPool ? H / 2 : H;
    const To = Ho * Ho;
    macs += T * b.dim * 3 * b.dimOut; // qkv
    if (b.dim !== b.dimOut) macs += T * b.dim * b.dimOut; // shortcut proj
    const lk = b.windowSize > 0 ? b.windowSize * b.windowSize : T;
    const windows = b.windowSize > 0 ? Math.ceil(H / b.windowSize) ** 2 : 1;
    const lq = b.windowSize > 0 ? (b.qPool ? (b.windowSize / 2) ** 2 : lk) : To;
    macs += windows * lq * lk * b.dimOut * 2; // q·kᵀ and ·v
    macs += To * b.dimOut * b.dimOut; // proj
    macs += 2 * To * b.dimOut * Math.trunc(b.dimOut * t.mlpRatio); // MLP
    H = Ho;
    if (ends.includes(b.i)) levels.push({ H, C: b.dimOut });
  }
  const d = cfg.neck.dModel;
  macs += levels[3].H ** 2 * levels[3].C * d + levels[2].H ** 2 * levels[2].C * d;
  for (const [i, O] of [[0, d / 8], [1, d / 4]] as const) {
    const T = levels[i].H ** 2;
    macs += foldHighResConvs ? T * levels[i].C * O : T * levels[i].C * d + T * d * O;
  }
  return macs;
}
