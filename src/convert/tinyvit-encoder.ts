/**
 * MobileSAM's TinyViT image encoder (model type vit_t) as an ONNX graph built from a state dict.
 *
 * Mirrors `mobile_sam/modeling/tiny_vit_sam.py` in eval mode:
 *   patch_embed (two stride-2 Conv2d_BN)            [1,3,1024,1024] → [1,64,256,256]
 *   layers.0  ConvLayer: MBConv × 2 + PatchMerging   → [1,128,128,128]
 *   layers.1  BasicLayer: TinyViTBlock × 2 + merge   → [1,160,64,64]
 *   layers.2  BasicLayer: TinyViTBlock × 6 + merge   → [1,320,64,64] (stride 1, see patchMerging)
 *   layers.3  BasicLayer: TinyViTBlock × 2           → [1,320,64,64]
 *   neck      Conv 1×1 → LayerNorm2d → Conv 3×3 → LayerNorm2d → [1,256,64,64]
 *
 * Build-time folding (exact up to float rounding): every Conv2d_BN becomes one Conv with bias
 * (BatchNorm in eval mode, eps 1e-5); the attention scale is folded into the query projection;
 * `attention_biases[:, attention_bias_idxs]` is gathered into a static [heads, N, N] initializer.
 *
 * Attention biases and MobileSAM's `build_sam_vit_t`: in eval mode `Attention` adds `self.ab`, a
 * copy of the gathered biases cached when `.eval()` runs. `build_sam_vit_t(checkpoint)` calls
 * `.eval()` *before* `load_state_dict`, so unless the caller calls `.eval()` again (MobileSAM's
 * README and demo do) the cached copy keeps the zero initial value and the checkpoint's biases
 * are ignored. `attentionBiases: 'zeros'` reproduces that path (the golden embedding was made
 * with it); the default `'checkpoint'` uses the trained biases, as the model was trained.
 *
 * The token stream of the attention stages is kept channels-last ([1,H,W,C]) so that LayerNorm
 * and the Linear layers act on the last axis; it is transposed to NCHW only around convolutions.
 * GELU is the exact erf form in the pattern onnxruntime fuses into its Gelu kernel.
 */
import type { CheckpointTensor, StateDict } from './checkpoint.js';
import { GraphBuilder, attr, type TensorRef } from './onnx-builder.js';

/** TinyViT hyper-parameters (the arguments of `TinyViT.__init__` that shape the graph). */
export interface TinyVitConfig {
  readonly imgSize: number;
  readonly inChans: number;
  readonly embedDims: readonly number[];
  readonly depths: readonly number[];
  readonly numHeads: readonly number[];
  readonly windowSizes: readonly number[];
  readonly mlpRatio: number;
  readonly mbconvExpandRatio: number;
  readonly localConvSize: number;
  /** Output channels of the neck (the SAM embedding width). */
  readonly neckDim: number;
}

/** MobileSAM's `build_sam_vit_t` configuration. */
export const VIT_T_CONFIG: TinyVitConfig = {
  imgSize: 1024,
  inChans: 3,
  embedDims: [64, 128, 160, 320],
  depths: [2, 2, 6, 2],
  numHeads: [2, 4, 5, 10],
  windowSizes: [7, 7, 14, 7],
  mlpRatio: 4,
  mbconvExpandRatio: 4,
  localConvSize: 3,
  neckDim: 256,
};

/** Options of {@link buildTinyVitEncoder}. */
export interface TinyVitEncoderOptions {
  /** Architecture the state dict must match (default {@link VIT_T_CONFIG}). */
  readonly config?: TinyVitConfig;
  /**
   * `'checkpoint'` (default): add the checkpoint's `attention_biases`; `'zeros'`: drop them, as
   * `build_sam_vit_t(checkpoint)` without a later `.eval()` does (see the module comment).
   */
  readonly attentionBiases?: 'checkpoint' | 'zeros';
  /**
   * 'fused' (default): window attention as onnxruntime's MultiHeadAttention. 'reference': the
   * graph before it (MatMul, Add, Softmax, MatMul), kept for the bench's A/B.
   */
  readonly attention?: 'fused' | 'reference';
}

const BN_EPS = 1e-5; // nn.BatchNorm2d default
const LN_EPS = 1e-5; // nn.LayerNorm default
const LN2D_EPS = 1e-6; // LayerNorm2d in the neck

/** NCHW ↔ NHWC permutations. */
const TO_NHWC = [0, 2, 3, 1];
const TO_NCHW = [0, 3, 1, 2];

/**
 * The relative-position index table of `Attention.__init__` for a window of `ws × ws` tokens:
 * offsets (|Δrow|, |Δcol|) numbered in order of first appearance, returned as [N*N] row-major.
 */
export function attentionBiasIdxs(ws: number): { idxs: Int32Array; numOffsets: number } {
  const points: [number, number][] = [];
  for (let r = 0; r < ws; r++) for (let c = 0; c < ws; c++) points.push([r, c]);
  const n = points.length;
  const offsets = new Map<string, number>();
  const idxs = new Int32Array(n * n);
  let i = 0;
  for (const p1 of points) {
    for (const p2 of points) {
      const key = `${Math.abs(p1[0] - p2[0])},${Math.abs(p1[1] - p2[1])}`;
      let id = offsets.get(key);
      if (id === undefined) {
        id = offsets.size;
        offsets.set(key, id);
      }
      idxs[i++] = id;
    }
  }
  return { idxs, numOffsets: offsets.size };
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

/** Builds the encoder graph; one instance per build. */
class TinyVitBuilder {
  readonly g: GraphBuilder;
  private readonly int64Consts = new Map<string, TensorRef>();
  private readonly floatConsts = new Map<number, TensorRef>();

  constructor(
    private readonly sd: StateDict,
    private readonly prefix: string,
    readonly cfg: TinyVitConfig,
    private readonly useAttentionBiases: boolean,
    private readonly attentionKind: 'fused' | 'reference',
  ) {
    this.g = new GraphBuilder('tinyvit_image_encoder');
  }

  /** The float32 values of `prefix + key`, checked against the expected shape. */
  private weight(key: string, shape: readonly number[]): Float32Array {
    const full = this.prefix + key;
    const t: CheckpointTensor | undefined = this.sd.get(full);
    if (t === undefined) throw new Error(`TinyViT encoder: missing tensor ${full} in the checkpoint`);
    if (!(t.data instanceof Float32Array)) {
      throw new Error(`TinyViT encoder: tensor ${full} has dtype ${t.dtype}, expected a floating-point tensor`);
    }
    if (!sameShape(t.shape, shape)) {
      throw new Error(
        `TinyViT encoder: tensor ${full} has shape [${t.shape.join(',')}], expected [${shape.join(',')}] ` +
          '(is the checkpoint a MobileSAM vit_t model?)',
      );
    }
    return t.data;
  }

  /** A state-dict tensor stored unchanged, under its state-dict name. */
  private param(key: string, shape: readonly number[]): TensorRef {
    return this.g.initializer(this.prefix + key, this.weight(key, shape), shape);
  }

  private ints(values: readonly number[]): TensorRef {
    const k = values.join(',');
    let ref = this.int64Consts.get(k);
    if (ref === undefined) {
      ref = this.g.constInt64(values);
      this.int64Consts.set(k, ref);
    }
    return ref;
  }

  private scalar(value: number): TensorRef {
    let ref = this.floatConsts.get(value);
    if (ref === undefined) {
      ref = this.g.constFloat([value], []);
      this.floatConsts.set(value, ref);
    }
    return ref;
  }

  reshape(x: TensorRef, shape: readonly number[]): TensorRef {
    return this.g.op('Reshape', [x, this.ints(shape)]);
  }

  transpose(x: TensorRef, perm: readonly number[]): TensorRef {
    return this.g.op('Transpose', [x], { perm: [...perm] });
  }

  /** nn.GELU (exact): x · ½ · (1 + erf(x / √2)). */
  gelu(x: TensorRef): TensorRef {
    const e = this.g.op('Erf', [this.g.op('Div', [x, this.scalar(Math.SQRT2)])]);
    return this.g.op('Mul', [this.g.op('Mul', [x, this.g.op('Add', [e, this.scalar(1)])]), this.scalar(0.5)]);
  }

  /** nn.LayerNorm / LayerNorm2d over the last axis of a channels-last tensor. */
  layerNorm(x: TensorRef, key: string, dim: number, eps: number): TensorRef {
    const w = this.param(`${key}.weight`, [dim]);
    const b = this.param(`${key}.bias`, [dim]);
    return this.g.op('LayerNormalization', [x, w, b], { axis: -1, epsilon: attr.float(eps) });
  }

  /** nn.Linear on the last axis: x @ Wᵀ + b, with Wᵀ [in,out] stored as `<key>.weight_t`. */
  linear(x: TensorRef, key: string, inDim: number, outDim: number): TensorRef {
    const w = this.weight(`${key}.weight`, [outDim, inDim]);
    const b = this.param(`${key}.bias`, [outDim]);
    const wt = this.g.initializer(`${this.prefix}${key}.weight_t`, transpose2d(w, outDim, inDim), [inDim, outDim]);
    return this.g.op('Add', [this.g.op('MatMul', [x, wt]), b]);
  }

  /**
   * Conv2d_BN (conv without bias + BatchNorm2d, eval mode) as one Conv with the BatchNorm folded
   * in: w' = w·γ/√(var+eps), b' = β − mean·γ/√(var+eps). Input and output NCHW.
   */
  conv2dBN(
    x: TensorRef,
    key: string,
    inCh: number,
    outCh: number,
    ks: number,
    opts: { stride?: number; pad?: number; groups?: number } = {},
  ): TensorRef {
    const stride = opts.stride ?? 1;
    const pad = opts.pad ?? 0;
    const groups = opts.groups ?? 1;
    const wShape = [outCh, inCh / groups, ks, ks];
    const w = this.weight(`${key}.c.weight`, wShape);
    const gamma = this.weight(`${key}.bn.weight`, [outCh]);
    const beta = this.weight(`${key}.bn.bias`, [outCh]);
    const mean = this.weight(`${key}.bn.running_mean`, [outCh]);
    const variance = this.weight(`${key}.bn.running_var`, [outCh]);
    const per = w.length / outCh;
    const fusedW = new Float32Array(w.length);
    const fusedB = new Float32Array(outCh);
    for (let o = 0; o < outCh; o++) {
      const scale = gamma[o] / Math.sqrt(variance[o] + BN_EPS);
      for (let i = 0; i < per; i++) fusedW[o * per + i] = w[o * per + i] * scale;
      fusedB[o] = beta[o] - mean[o] * scale;
    }
    const wRef = this.g.initializer(`${this.prefix}${key}.fused.weight`, fusedW, wShape);
    const bRef = this.g.initializer(`${this.prefix}${key}.fused.bias`, fusedB, [outCh]);
    return this.g.op('Conv', [x, wRef, bRef], {
      kernel_shape: [ks, ks],
      strides: [stride, stride],
      pads: [pad, pad, pad, pad],
      group: groups,
    });
  }

  /** PatchEmbed: [1,in,S,S] → [1,embed,S/4,S/4] (NCHW). */
  patchEmbed(x: TensorRef): TensorRef {
    const n = this.cfg.embedDims[0];
    const h = this.conv2dBN(x, 'patch_embed.seq.0', this.cfg.inChans, n / 2, 3, { stride: 2, pad: 1 });
    return this.conv2dBN(this.gelu(h), 'patch_embed.seq.2', n / 2, n, 3, { stride: 2, pad: 1 });
  }

  /** MBConv (inverted residual, NCHW in and out). */
  mbConv(x: TensorRef, key: string, dim: number): TensorRef {
    const hidden = Math.trunc(dim * this.cfg.mbconvExpandRatio);
    let h = this.gelu(this.conv2dBN(x, `${key}.conv1`, dim, hidden, 1));
    h = this.gelu(this.conv2dBN(h, `${key}.conv2`, hidden, hidden, 3, { pad: 1, groups: hidden }));
    h = this.conv2dBN(h, `${key}.conv3`, hidden, dim, 1);
    return this.gelu(this.g.op('Add', [h, x]));
  }

  /**
   * PatchMerging, NCHW [1,dim,H,W] → [1,outDim,H',W']. MobileSAM keeps the last stages at 64×64:
   * the depthwise conv has stride 1 when out_dim is 320, 448 or 576, else 2.
   */
  patchMerging(x: TensorRef, key: string, dim: number, outDim: number, res: number): { x: TensorRef; res: number } {
    const stride = outDim === 320 || outDim === 448 || outDim === 576 ? 1 : 2;
    let h = this.gelu(this.conv2dBN(x, `${key}.conv1`, dim, outDim, 1));
    h = this.gelu(this.conv2dBN(h, `${key}.conv2`, outDim, outDim, 3, { stride, pad: 1, groups: outDim }));
    h = this.conv2dBN(h, `${key}.conv3`, outDim, outDim, 1);
    // Conv 3×3, pad 1: out = floor((res + 2 − 3) / stride) + 1.
    return { x: h, res: Math.floor((res - 1) / stride) + 1 };
  }

  /**
   * Attention on windows: x [B,N,C] → [B,N,C] with N = ws², head dim C/heads, attn_ratio 1.
   * The checkpoint's qkv rows are laid out per head as [q(kd), k(kd), v(kd)]; they are regrouped
   * at build time into three [C,C] projections whose output columns are head-major.
   */
  attention(x: TensorRef, key: string, batch: number, dim: number, heads: number, ws: number): TensorRef {
    const n = ws * ws;
    const kd = dim / heads;
    const scale = kd ** -0.5;
    const h = this.layerNorm(x, `${key}.norm`, dim, LN_EPS);

    const qkvW = this.weight(`${key}.qkv.weight`, [3 * dim, dim]);
    const qkvB = this.weight(`${key}.qkv.bias`, [3 * dim]);
    const project = (part: 0 | 1 | 2, name: string, factor: number): TensorRef => {
      // Wᵀ [dim, dim]: column head·kd + j takes qkv row head·3kd + part·kd + j.
      const wt = new Float32Array(dim * dim);
      const b = new Float32Array(dim);
      for (let head = 0; head < heads; head++) {
        for (let j = 0; j < kd; j++) {
          const row = head * 3 * kd + part * kd + j;
          const col = head * kd + j;
          for (let i = 0; i < dim; i++) wt[i * dim + col] = qkvW[row * dim + i] * factor;
          b[col] = qkvB[row] * factor;
        }
      }
      const wRef = this.g.initializer(`${this.prefix}${key}.qkv.${name}_weight_t`, wt, [dim, dim]);
      const bRef = this.g.initializer(`${this.prefix}${key}.qkv.${name}_bias`, b, [dim]);
      return this.g.op('Add', [this.g.op('MatMul', [h, wRef]), bRef]);
    };
    // (q·kᵀ)·scale == (q·scale)·kᵀ: the scale is folded into the query projection, so
    // MultiHeadAttention runs with scale 1. Its CPU kernel takes q, k, v as [B,N,heads·kd]
    // (head-major columns, as projected) and adds attention_bias [1,heads,N,N] to every window's
    // scores; without biases it is flash attention.
    const q = project(0, 'q', scale); // [B,N,C]
    const k = project(1, 'k', 1);
    const v = project(2, 'v', 1);

    // attention_biases [heads, offsets] gathered by attention_bias_idxs [N,N] → [1,heads,N,N];
    // the shape is checked even when the biases are dropped.
    const { idxs, numOffsets } = attentionBiasIdxs(ws);
    const biases = this.weight(`${key}.attention_biases`, [heads, numOffsets]);
    let ab = '';
    if (this.useAttentionBiases) {
      const data = new Float32Array(heads * n * n);
      for (let head = 0; head < heads; head++) {
        for (let i = 0; i < n * n; i++) data[head * n * n + i] = biases[head * numOffsets + idxs[i]];
      }
      ab = this.g.initializer(`${this.prefix}${key}.ab`, data, [1, heads, n, n]);
    }
    const merged =
      this.attentionKind === 'reference'
        ? this.referenceAttention(q, k, v, ab, batch, n, heads, kd)
        : // inputs: query, key, value, bias, key_padding_mask, attention_bias
          this.g.node('MultiHeadAttention', [q, k, v, '', '', ab], { num_heads: heads, scale: attr.float(1) }, { domain: 'com.microsoft' })[0]; // [B,N,C]
    return this.linear(merged, `${key}.proj`, dim, dim);
  }

  /** The graph before MultiHeadAttention: q, k, v [B,N,C], ab [1,h,N,N] or '' → [B,N,C]. */
  private referenceAttention(qIn: TensorRef, kIn: TensorRef, vIn: TensorRef, ab: TensorRef, batch: number, n: number, heads: number, kd: number): TensorRef {
    const q = this.transpose(this.reshape(qIn, [batch, n, heads, kd]), [0, 2, 1, 3]); // [B,h,N,kd]
    const k = this.transpose(this.reshape(kIn, [batch, n, heads, kd]), [0, 2, 3, 1]); // [B,h,kd,N]
    const v = this.transpose(this.reshape(vIn, [batch, n, heads, kd]), [0, 2, 1, 3]); // [B,h,N,kd]
    let scores = this.g.op('MatMul', [q, k]); // [B,h,N,N]
    if (ab !== '') scores = this.g.op('Add', [scores, ab]);
    const o = this.g.op('MatMul', [this.g.op('Softmax', [scores], { axis: -1 }), v]); // [B,h,N,kd]
    return this.reshape(this.transpose(o, [0, 2, 1, 3]), [batch, n, heads * kd]); // [B,N,C]
  }

  /** TinyViTBlock on a channels-last [1,res,res,dim] stream. */
  tinyVitBlock(x: TensorRef, key: string, dim: number, res: number, heads: number, ws: number): TensorRef {
    // Window partition; the bottom/right zero padding takes part in attention as in the reference.
    const pad = (ws - (res % ws)) % ws;
    const pRes = res + pad;
    const nw = pRes / ws;
    const padded = pad > 0 ? this.g.op('Pad', [x, this.ints([0, 0, 0, 0, 0, pad, pad, 0])]) : x; // [1,pRes,pRes,C]
    const windows = this.reshape(
      this.transpose(this.reshape(padded, [nw, ws, nw, ws, dim]), [0, 2, 1, 3, 4]),
      [nw * nw, ws * ws, dim],
    ); // [nW², ws², C]
    const attn = this.attention(windows, `${key}.attn`, nw * nw, dim, heads, ws);
    // Window reverse: [nW², ws², C] → [1,pRes,pRes,C] → crop to [1,res,res,C].
    let y = this.reshape(this.transpose(this.reshape(attn, [nw, nw, ws, ws, dim]), [0, 2, 1, 3, 4]), [1, pRes, pRes, dim]);
    if (pad > 0) y = this.g.op('Slice', [y, this.ints([0, 0]), this.ints([res, res]), this.ints([1, 2])]);
    x = this.g.op('Add', [x, y]);

    // local_conv: depthwise Conv2d_BN on NCHW, no residual.
    const ks = this.cfg.localConvSize;
    x = this.transpose(
      this.conv2dBN(this.transpose(x, TO_NCHW), `${key}.local_conv`, dim, dim, ks, { pad: ks >> 1, groups: dim }),
      TO_NHWC,
    );

    // Mlp: LayerNorm → fc1 → GELU → fc2, residual.
    const hidden = Math.trunc(dim * this.cfg.mlpRatio);
    let m = this.layerNorm(x, `${key}.mlp.norm`, dim, LN_EPS);
    m = this.linear(this.gelu(this.linear(m, `${key}.mlp.fc1`, dim, hidden)), `${key}.mlp.fc2`, hidden, dim);
    return this.g.op('Add', [x, m]);
  }

  /** LayerNorm2d on NCHW: normalize over channels via channels-last. */
  layerNorm2d(x: TensorRef, key: string, dim: number): TensorRef {
    return this.transpose(this.layerNorm(this.transpose(x, TO_NHWC), key, dim, LN2D_EPS), TO_NCHW);
  }

  build(): GraphBuilder {
    const { cfg, g } = this;
    const dims = cfg.embedDims;
    const last = dims.length - 1;
    const image = g.input('image', 'float32', [1, cfg.inChans, cfg.imgSize, cfg.imgSize]);

    // [1,64,256,256] NCHW
    let x = this.patchEmbed(image);
    let res = cfg.imgSize / 4;

    // layers.0: ConvLayer (NCHW), then PatchMerging to channels-last tokens.
    for (let i = 0; i < cfg.depths[0]; i++) x = this.mbConv(x, `layers.0.blocks.${i}`, dims[0]);
    let merged = this.patchMerging(x, 'layers.0.downsample', dims[0], dims[Math.min(1, last)], res);
    x = this.transpose(merged.x, TO_NHWC);
    res = merged.res;

    // layers.1..: BasicLayer on [1,res,res,dim]; all but the last end with PatchMerging.
    for (let l = 1; l <= last; l++) {
      for (let i = 0; i < cfg.depths[l]; i++) {
        x = this.tinyVitBlock(x, `layers.${l}.blocks.${i}`, dims[l], res, cfg.numHeads[l], cfg.windowSizes[l]);
      }
      if (l < last) {
        merged = this.patchMerging(this.transpose(x, TO_NCHW), `layers.${l}.downsample`, dims[l], dims[l + 1], res);
        x = this.transpose(merged.x, TO_NHWC);
        res = merged.res;
      }
    }
    // The reference views the tokens as [1,64,64,C]: SAM's embedding grid.
    if (res !== 64) throw new Error(`TinyViT encoder: final resolution ${res}, expected 64 (img_size 1024)`);

    // neck.0: Conv 1×1 without bias == per-pixel Linear on channels-last [1,64,64,C] → [..,256].
    const nd = cfg.neckDim;
    const w0 = this.weight('neck.0.weight', [nd, dims[last], 1, 1]);
    const w0t = g.initializer(`${this.prefix}neck.0.weight_t`, transpose2d(w0, nd, dims[last]), [dims[last], nd]);
    x = this.layerNorm(g.op('MatMul', [x, w0t]), 'neck.1', nd, LN2D_EPS);
    // neck.2: Conv 3×3, pad 1, no bias, on NCHW [1,256,64,64]; neck.3: LayerNorm2d.
    const w2 = this.param('neck.2.weight', [nd, nd, 3, 3]);
    x = g.op('Conv', [this.transpose(x, TO_NCHW), w2], { kernel_shape: [3, 3], pads: [1, 1, 1, 1] });
    x = this.layerNorm2d(x, 'neck.3', nd);
    g.output(x, 'image_embeddings', 'float32', [1, nd, res, res]);
    return g;
  }
}

/** [rows, cols] row-major → [cols, rows] row-major. */
function transpose2d(a: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(a.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = a[r * cols + c];
  return out;
}

/**
 * The TinyViT image encoder of a MobileSAM checkpoint: input `image` float32 [1,3,1024,1024]
 * (normalized, padded), output `image_embeddings` float32 [1,256,64,64]. Every tensor read is
 * checked against the config, so a checkpoint of another architecture fails with a clear error.
 */
export function buildTinyVitEncoder(
  sd: StateDict,
  prefix = 'image_encoder.',
  options: TinyVitEncoderOptions = {},
): GraphBuilder {
  const useBiases = (options.attentionBiases ?? 'checkpoint') === 'checkpoint';
  return new TinyVitBuilder(sd, prefix, options.config ?? VIT_T_CONFIG, useBiases, options.attention ?? 'fused').build();
}
