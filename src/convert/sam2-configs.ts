/**
 * Architecture configurations of the official SAM 2 / SAM 2.1 image encoders (Hiera trunk + FPN
 * neck), and recognising which one a state dict holds from its tensor shapes, so that a wrong
 * `--type` is refused before anything is written.
 *
 * Values follow facebookresearch/sam2 `sam2/configs/sam2.1/sam2.1_hiera_{t,s,b+,l}.yaml` and
 * `sam2/configs/sam2/sam2_hiera_{t,s,b+,l}.yaml` (image_encoder.trunk / image_encoder.neck), with
 * the `Hiera.__init__` defaults for what a config leaves out (base_plus sets only embed_dim and
 * num_heads). SAM 2.0 and 2.1 share every image-encoder setting; they differ in video-only tensors
 * (2.1 adds `no_obj_embed_spatial` and `obj_ptr_tpos_proj`), which is how the version is told apart.
 */
import { modelError } from '../util/errors.js';
import type { StateDict } from './checkpoint.js';

export type Sam2Size = 'tiny' | 'small' | 'base_plus' | 'large';
export type Sam2Version = '2.0' | '2.1';

export const SAM2_MODEL_TYPES = [
  'sam2.1_hiera_tiny',
  'sam2.1_hiera_small',
  'sam2.1_hiera_base_plus',
  'sam2.1_hiera_large',
  'sam2_hiera_tiny',
  'sam2_hiera_small',
  'sam2_hiera_base_plus',
  'sam2_hiera_large',
] as const;
export type Sam2ModelType = (typeof SAM2_MODEL_TYPES)[number];

export function isSam2ModelType(s: string): s is Sam2ModelType {
  return (SAM2_MODEL_TYPES as readonly string[]).includes(s);
}

/** `Hiera` constructor arguments (sam2/modeling/backbones/hieradet.py). */
export interface HieraConfig {
  /** Width of the first stage (patch embedding output channels). */
  embedDim: number;
  /** Heads of the first stage. */
  numHeads: number;
  /** Blocks per stage (4 stages). */
  stages: readonly number[];
  /** Blocks with global attention (window size 0). */
  globalAttBlocks: readonly number[];
  /** Window size per stage; the first block of a stage still uses the previous stage's. */
  windowSpec: readonly number[];
  /** Number of stage transitions with 2×2 query pooling (3 in every official config). */
  qPool: number;
  /** Query pooling stride (2×2 in every official config). */
  qStride: number;
  /** Width / heads multipliers at each stage transition (2 in every official config). */
  dimMul: number;
  headMul: number;
  /** MLP hidden = dim_out * mlpRatio (4). */
  mlpRatio: number;
  /** pos_embed spatial size [h, w]: 7×7 for tiny / small / large, 14×14 for base_plus. */
  windowPosEmbedBkgSpatialSize: readonly [number, number];
  /** Patch embedding: 7×7 conv, stride 4, padding 3. */
  patchKernel: number;
  patchStride: number;
  patchPadding: number;
}

/** `FpnNeck` + `ImageEncoder` arguments (sam2/modeling/backbones/image_encoder.py). */
export interface FpnConfig {
  /** Output channels of every lateral 1×1 conv (256). */
  dModel: number;
  /** Trunk channels from the lowest resolution (stride 32) to the highest (stride 4). */
  backboneChannelList: readonly number[];
  /** Levels (0 = stride 4 … 3 = stride 32) that get the top-down term. */
  fpnTopDownLevels: readonly number[];
  fpnInterpModel: 'nearest';
  fuseType: 'sum';
  /** Lowest-resolution levels dropped from the output (1: the stride-32 level). */
  scalp: number;
}

export interface Sam2Config {
  type: Sam2ModelType;
  version: Sam2Version;
  size: Sam2Size;
  trunk: HieraConfig;
  neck: FpnConfig;
  /** Input side (1024). */
  imageSize: number;
  /** image_embed = stride-16 level + no_mem_embed (true in every official config). */
  directlyAddNoMemEmbed: boolean;
  /** high_res_feats = sam_mask_decoder.conv_s0 / conv_s1 of levels 0 / 1 (true in every official config). */
  useHighResFeaturesInSam: boolean;
}

/** Hiera.__init__ defaults. */
const HIERA_DEFAULTS = {
  qPool: 3,
  qStride: 2,
  dimMul: 2,
  headMul: 2,
  mlpRatio: 4,
  stages: [2, 3, 16, 3],
  globalAttBlocks: [12, 16, 20],
  windowSpec: [8, 4, 14, 7],
  windowPosEmbedBkgSpatialSize: [14, 14] as const,
  patchKernel: 7,
  patchStride: 4,
  patchPadding: 3,
} as const;

const TRUNKS: Readonly<Record<Sam2Size, HieraConfig>> = {
  tiny: { ...HIERA_DEFAULTS, embedDim: 96, numHeads: 1, stages: [1, 2, 7, 2], globalAttBlocks: [5, 7, 9], windowPosEmbedBkgSpatialSize: [7, 7] },
  small: { ...HIERA_DEFAULTS, embedDim: 96, numHeads: 1, stages: [1, 2, 11, 2], globalAttBlocks: [7, 10, 13], windowPosEmbedBkgSpatialSize: [7, 7] },
  base_plus: { ...HIERA_DEFAULTS, embedDim: 112, numHeads: 2 },
  large: {
    ...HIERA_DEFAULTS,
    embedDim: 144,
    numHeads: 2,
    stages: [2, 6, 36, 4],
    globalAttBlocks: [23, 33, 43],
    windowPosEmbedBkgSpatialSize: [7, 7],
    windowSpec: [8, 4, 16, 8],
  },
};

function neckFor(embedDim: number): FpnConfig {
  return {
    dModel: 256,
    backboneChannelList: [8, 4, 2, 1].map((m) => embedDim * m),
    fpnTopDownLevels: [2, 3],
    fpnInterpModel: 'nearest',
    fuseType: 'sum',
    scalp: 1,
  };
}

function parseType(type: Sam2ModelType): { version: Sam2Version; size: Sam2Size } {
  const m = /^sam2(\.1)?_hiera_(tiny|small|base_plus|large)$/.exec(type);
  if (!m) throw new Error(`not a SAM 2 type: ${type}`);
  return { version: m[1] ? '2.1' : '2.0', size: m[2] as Sam2Size };
}

function typeOf(version: Sam2Version, size: Sam2Size): Sam2ModelType {
  return `${version === '2.1' ? 'sam2.1' : 'sam2'}_hiera_${size}` as Sam2ModelType;
}

export const SAM2_CONFIGS: Readonly<Record<Sam2ModelType, Readonly<Sam2Config>>> = Object.fromEntries(
  SAM2_MODEL_TYPES.map((type) => {
    const { version, size } = parseType(type);
    const trunk = TRUNKS[size];
    const cfg: Sam2Config = {
      type,
      version,
      size,
      trunk,
      neck: neckFor(trunk.embedDim),
      imageSize: 1024,
      directlyAddNoMemEmbed: true,
      useHighResFeaturesInSam: true,
    };
    return [type, cfg];
  }),
) as Record<Sam2ModelType, Sam2Config>;

/** One MultiScaleBlock as Hiera.__init__ builds it. */
export interface HieraBlockSpec {
  i: number;
  dim: number;
  dimOut: number;
  heads: number;
  /** 0 for global attention. */
  windowSize: number;
  /** 2×2 max-pooling of the queries (and of the projected shortcut). */
  qPool: boolean;
}

/** The blocks of a Hiera trunk, with the same bookkeeping as Hiera.__init__. */
export function hieraBlocks(cfg: HieraConfig): HieraBlockSpec[] {
  const depth = cfg.stages.reduce((a, b) => a + b, 0);
  const stageEnds = hieraStageEnds(cfg);
  const qPoolBlocks = stageEnds.slice(0, -1).map((e) => e + 1).slice(0, cfg.qPool);
  const blocks: HieraBlockSpec[] = [];
  let dim = cfg.embedDim;
  let heads = cfg.numHeads;
  let stage = 1;
  for (let i = 0; i < depth; i++) {
    let dimOut = dim;
    // The window size lags by a block: the first block of a stage uses the previous stage's.
    let windowSize = cfg.windowSpec[stage - 1];
    if (cfg.globalAttBlocks.includes(i)) windowSize = 0;
    if (stageEnds.includes(i - 1)) {
      dimOut = Math.trunc(dim * cfg.dimMul);
      heads = Math.trunc(heads * cfg.headMul);
      stage++;
    }
    blocks.push({ i, dim, dimOut, heads, windowSize, qPool: qPoolBlocks.includes(i) });
    dim = dimOut;
  }
  return blocks;
}

/** Index of the last block of each stage (the trunk's outputs are taken after these). */
export function hieraStageEnds(cfg: HieraConfig): number[] {
  const ends: number[] = [];
  let sum = 0;
  for (const s of cfg.stages) {
    sum += s;
    ends.push(sum - 1);
  }
  return ends;
}

// ---------------------------------------------------------------------------------------------
// Type detection

const TRUNK_PREFIX = 'image_encoder.trunk.';

/** What a state dict's shapes say about its SAM 2 image encoder. */
export interface Sam2Shape {
  /** patch_embed.proj.weight [embedDim, 3, 7, 7]. */
  embedDim?: number;
  /** Number of consecutive `blocks.<i>` (by norm1.weight). */
  depth?: number;
  /** pos_embed [1, C, h, w] → [h, w]. */
  posEmbed?: [number, number];
  /** '2.1' when the SAM 2.1-only tensors are there, '2.0' when video modules are but those are not, undefined for image-only dicts. */
  version?: Sam2Version;
}

export function sam2Shape(sd: StateDict): Sam2Shape {
  const shape: Sam2Shape = {};
  const proj = sd.get(`${TRUNK_PREFIX}patch_embed.proj.weight`);
  if (proj) shape.embedDim = proj.shape[0];
  let depth = 0;
  while (sd.has(`${TRUNK_PREFIX}blocks.${depth}.norm1.weight`)) depth++;
  if (depth > 0 || proj) shape.depth = depth;
  const pos = sd.get(`${TRUNK_PREFIX}pos_embed`);
  if (pos && pos.shape.length === 4) shape.posEmbed = [pos.shape[2], pos.shape[3]];
  if (sd.has('no_obj_embed_spatial') || sd.has('obj_ptr_tpos_proj.weight')) shape.version = '2.1';
  else if ([...sd.keys()].some((k) => k.startsWith('memory_encoder.') || k.startsWith('memory_attention.'))) shape.version = '2.0';
  return shape;
}

function describeShape(s: Sam2Shape): string {
  if (s.embedDim === undefined) return 'no Hiera image encoder';
  const pos = s.posEmbed ? `, pos_embed ${s.posEmbed.join('×')}` : ', no pos_embed';
  return `a Hiera encoder ${s.embedDim} wide with ${s.depth} blocks${pos}`;
}

function describeConfig(cfg: Sam2Config): string {
  const depth = cfg.trunk.stages.reduce((a, b) => a + b, 0);
  return `a Hiera encoder ${cfg.trunk.embedDim} wide with ${depth} blocks, pos_embed ${cfg.trunk.windowPosEmbedBkgSpatialSize.join('×')}`;
}

/** Why a state dict is no SAM 2 checkpoint, when it is something else we can name. */
function notSam2(sd: StateDict): string | undefined {
  const v1 = sd.get('image_encoder.patch_embed.proj.weight') ?? sd.get('patch_embed.proj.weight');
  if (v1) return `it is a SAM 1 ViT checkpoint (image_encoder.patch_embed.proj.weight [${v1.shape.join(',')}]); convert it with --type vit_b, vit_l or vit_h`;
  if (sd.has('image_encoder.patch_embed.seq.0.c.weight') || sd.has('patch_embed.seq.0.c.weight')) {
    return 'it is a MobileSAM (TinyViT) checkpoint; convert it with --type vit_t';
  }
  if (sd.has('trunk.patch_embed.proj.weight')) {
    return 'it holds a bare image encoder (keys trunk.*); sam needs the whole SAM 2 model state dict (keys image_encoder.trunk.*, sam_mask_decoder.*, no_mem_embed)';
  }
  return undefined;
}

export type Sam2Detection =
  | { type: Sam2ModelType; config: Readonly<Sam2Config>; reason?: undefined }
  | { type: undefined; config?: undefined; reason: string };

/**
 * Which SAM 2 type a state dict holds, from its shapes, or why it is none. An image-only state
 * dict (no video modules, so no version marker) is reported as the SAM 2.1 type of its size: the
 * two versions' image paths are identical.
 */
export function detectSam2Type(sd: StateDict): Sam2Detection {
  const shape = sam2Shape(sd);
  if (shape.embedDim === undefined) {
    return { type: undefined, reason: notSam2(sd) ?? `it has no ${TRUNK_PREFIX}patch_embed.proj.weight, so no SAM 2 image encoder` };
  }
  for (const size of ['tiny', 'small', 'base_plus', 'large'] as const) {
    const type = typeOf(shape.version ?? '2.1', size);
    const cfg = SAM2_CONFIGS[type];
    const depth = cfg.trunk.stages.reduce((a, b) => a + b, 0);
    const [ph, pw] = cfg.trunk.windowPosEmbedBkgSpatialSize;
    if (shape.embedDim === cfg.trunk.embedDim && shape.depth === depth && shape.posEmbed?.[0] === ph && shape.posEmbed?.[1] === pw) {
      return { type, config: cfg };
    }
  }
  return {
    type: undefined,
    reason:
      `it has ${describeShape(shape)}, which matches none of ` +
      (['tiny', 'small', 'base_plus', 'large'] as const).map((s) => `${s} (${describeConfig(SAM2_CONFIGS[typeOf('2.1', s)])})`).join(', ') +
      '; is the checkpoint complete?',
  };
}

/**
 * Throws a model error, before anything is written, when the state dict is not a checkpoint of
 * `type`; returns that type's config otherwise. `source` names the checkpoint (a file name).
 * A version mismatch (a SAM 2.0 file given a sam2.1_* type or the reverse) is refused too, unless
 * the state dict is image-only and so carries no version marker.
 */
export function checkSam2TypeMatches(sd: StateDict, type: Sam2ModelType, source = 'the checkpoint'): Readonly<Sam2Config> {
  const want = SAM2_CONFIGS[type];
  const detected = detectSam2Type(sd);
  if (detected.type === undefined) {
    throw modelError(`checkpoint ${source} is not a ${type} checkpoint: ${type} has ${describeConfig(want)}, but ${detected.reason}`);
  }
  if (detected.type === type) return want;
  const got = detected.config;
  if (got.size === want.size && sam2Shape(sd).version === undefined) return want; // image-only: either version fits
  const why =
    got.size === want.size
      ? got.version === '2.1'
        ? 'it has the SAM 2.1-only tensors no_obj_embed_spatial / obj_ptr_tpos_proj'
        : 'it has video modules but not the SAM 2.1-only tensor no_obj_embed_spatial'
      : describeShape(sam2Shape(sd));
  throw modelError(`checkpoint ${source} is ${detected.type} (${why}), not ${type}; pass --type ${detected.type}`);
}
