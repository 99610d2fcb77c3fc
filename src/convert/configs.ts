/**
 * Architecture configurations of the official SAM checkpoints, and recognising which one a state
 * dict holds from its tensor shapes (so a wrong `--type` is refused before anything is written).
 *
 * Values follow segment_anything/build_sam.py (`build_sam_vit_h/l/b` → `_build_sam`) and
 * MobileSAM's build_sam.py (`build_sam_vit_t`).
 */
import { modelError } from '../util/errors.js';
import type { StateDict } from './checkpoint.js';

export type SamModelType = 'vit_b' | 'vit_l' | 'vit_h' | 'vit_t';

export const SAM_MODEL_TYPES: readonly SamModelType[] = ['vit_b', 'vit_l', 'vit_h', 'vit_t'];

/** Values of `sam models convert --quantize` (src/convert/quantize.ts). */
export const QUANTIZATIONS = ['int8'] as const;
export type Quantization = (typeof QUANTIZATIONS)[number];

/** ImageEncoderViT constructor arguments (segment_anything/modeling/image_encoder.py). */
export interface VitConfig {
  embedDim: number;
  depth: number;
  numHeads: number;
  /** Blocks with global attention (window size 0); all others use windowed attention. */
  globalAttnIndexes: number[];
  /** 14 in every official config. */
  windowSize: number;
  /** 16 in every official config. */
  patchSize: number;
  /** 1024 in every official config (64×64 tokens). */
  imgSize: number;
  /** 4 in every official config (MLP hidden = embedDim * mlpRatio). */
  mlpRatio: number;
  /** Neck output channels, 256 (the prompt/mask decoder's transformer width). */
  outChans: number;
  /** true in every official config. */
  qkvBias: boolean;
  /** true in every official config (decomposed relative positions in every block). */
  useRelPos: boolean;
}

const COMMON = {
  windowSize: 14,
  patchSize: 16,
  imgSize: 1024,
  mlpRatio: 4,
  outChans: 256,
  qkvBias: true,
  useRelPos: true,
} as const;

export const VIT_CONFIGS: Readonly<Record<'vit_b' | 'vit_l' | 'vit_h', Readonly<VitConfig>>> = {
  vit_b: { ...COMMON, embedDim: 768, depth: 12, numHeads: 12, globalAttnIndexes: [2, 5, 8, 11] },
  vit_l: { ...COMMON, embedDim: 1024, depth: 24, numHeads: 16, globalAttnIndexes: [5, 11, 17, 23] },
  vit_h: { ...COMMON, embedDim: 1280, depth: 32, numHeads: 16, globalAttnIndexes: [7, 15, 23, 31] },
};

/** The snake_case config as written by the golden-data generator (convert-golden.json `vit_small_config`). */
export interface VitConfigJson {
  embed_dim: number;
  depth: number;
  num_heads: number;
  global_attn_indexes: number[];
  window_size: number;
  patch_size: number;
  img_size: number;
  mlp_ratio: number;
  out_chans: number;
  qkv_bias: boolean;
  use_rel_pos: boolean;
}

export function vitConfigFromGolden(json: VitConfigJson): VitConfig {
  return {
    embedDim: json.embed_dim,
    depth: json.depth,
    numHeads: json.num_heads,
    globalAttnIndexes: [...json.global_attn_indexes],
    windowSize: json.window_size,
    patchSize: json.patch_size,
    imgSize: json.img_size,
    mlpRatio: json.mlp_ratio,
    outChans: json.out_chans,
    qkvBias: json.qkv_bias,
    useRelPos: json.use_rel_pos,
  };
}

/** Key prefixes under which an image encoder may sit: a full SAM state dict, or an encoder alone. */
const ENCODER_PREFIXES = ['image_encoder.', ''] as const;

/** What the state dict's shapes say about its image encoder. */
interface EncoderShape {
  /** 'vit' for ImageEncoderViT, 'tiny_vit' for MobileSAM's TinyViT; undefined when neither is found. */
  family: 'vit' | 'tiny_vit' | undefined;
  /** ViT only: patch embedding width (patch_embed.proj.weight [embedDim,3,16,16]). */
  embedDim?: number;
  /** ViT only: number of `blocks.<i>` in the state dict. */
  depth?: number;
}

function encoderShape(sd: StateDict): EncoderShape {
  for (const prefix of ENCODER_PREFIXES) {
    if (sd.has(`${prefix}patch_embed.seq.0.c.weight`)) return { family: 'tiny_vit' };
    const proj = sd.get(`${prefix}patch_embed.proj.weight`);
    if (proj) {
      let depth = 0;
      while (sd.has(`${prefix}blocks.${depth}.norm1.weight`)) depth++;
      return { family: 'vit', embedDim: proj.shape[0], depth };
    }
  }
  return { family: undefined };
}

function describe(shape: EncoderShape): string {
  if (shape.family === 'tiny_vit') return "a TinyViT encoder (MobileSAM's patch_embed.seq)";
  if (shape.family === 'vit') return `a ViT encoder ${shape.embedDim} wide with ${shape.depth} blocks`;
  return 'no recognisable image encoder (neither image_encoder.patch_embed.proj.weight nor image_encoder.patch_embed.seq.0.c.weight)';
}

/** The SAM model type whose encoder shapes the state dict has, or undefined for none of them. */
export function detectModelType(sd: StateDict): SamModelType | undefined {
  const shape = encoderShape(sd);
  if (shape.family === 'tiny_vit') return 'vit_t';
  if (shape.family !== 'vit') return undefined;
  for (const type of ['vit_b', 'vit_l', 'vit_h'] as const) {
    const cfg = VIT_CONFIGS[type];
    if (shape.embedDim === cfg.embedDim && shape.depth === cfg.depth) return type;
  }
  return undefined;
}

/**
 * Throws a model error, before anything is written, when the state dict is not a checkpoint of
 * `type`. `source` names the checkpoint in the message (a file name).
 */
export function checkConfigMatches(sd: StateDict, type: SamModelType, source = 'the checkpoint'): void {
  const detected = detectModelType(sd);
  if (detected === type) return;
  const shape = encoderShape(sd);
  if (detected !== undefined) {
    const why =
      detected === 'vit_t'
        ? "TinyViT patch embedding (MobileSAM's patch_embed.seq)"
        : `patch embedding ${shape.embedDim} wide, ${shape.depth} blocks`;
    throw modelError(`checkpoint ${source} is ${detected} (${why}), not ${type}; pass --type ${detected}`);
  }
  const expected =
    type === 'vit_t'
      ? "a TinyViT encoder (MobileSAM's image_encoder.patch_embed.seq.0.c.weight)"
      : `a ViT encoder ${VIT_CONFIGS[type].embedDim} wide with ${VIT_CONFIGS[type].depth} blocks`;
  throw modelError(
    `checkpoint ${source} is not a ${type} checkpoint: ${type} has ${expected}, it has ${describe(shape)}; ` +
      `it matches none of ${SAM_MODEL_TYPES.join(', ')}`,
  );
}
