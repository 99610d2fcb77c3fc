/**
 * PyTorch SAM checkpoint → model folder: encoder.onnx (+ its weights in encoder.onnx.data), decoder.onnx (the official single-prompt
 * signature), decoder_batched.onnx (dynamic prompt batch, low-res masks only), the split decoder
 * decoder_image/prompt/masks.onnx (sam-decoder-split.ts, for automatic mask generation) and
 * manifest.json with every file's sha256. Everything is written into a temp folder next to `outDir` and renamed
 * into place at the end, so a failed or interrupted conversion leaves no half-written model.
 */
import { readFile, readdir, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { INT8_MODEL_ID_SUFFIX } from '../core/constants.js';
import { SamError, modelError } from '../util/errors.js';
import { loadStateDict, type StateDict } from './checkpoint.js';
import { SAM_MODEL_TYPES, VIT_CONFIGS, checkConfigMatches, detectModelType, type Quantization, type SamModelType } from './configs.js';
import { sha256File } from '../util/hash.js';
import { packageVersion } from '../util/package.js';
import { produceDirAtomic, removeStaleTemps } from '../util/atomic.js';
import { serializeModel, serializeWithExternalData, type GraphBuilder, type ModelProto } from './onnx-builder.js';
import { buildSamDecoder } from './sam-decoder.js';
import { buildSamDecoderImageSide, buildSamDecoderMaskSide, buildSamDecoderPromptSide } from './sam-decoder-split.js';
import { buildTinyVitEncoder } from './tinyvit-encoder.js';
import { buildVitEncoder } from './vit-encoder.js';
import { quantizeLinearsInt8, type QuantizeReport } from './quantize.js';
import { SAM2_CONFIGS, checkSam2TypeMatches, detectSam2Type, isSam2ModelType, type Sam2ModelType } from './sam2-configs.js';
import { buildSam2EncoderGraph } from './hiera-encoder.js';
import { buildSam2DecoderGraph, buildSam2DecoderSplit } from './sam2-decoder.js';

/** Any type `sam models convert` takes: SAM / MobileSAM, or SAM 2. */
export type AnyModelType = SamModelType | Sam2ModelType;

export const MODEL_FORMAT = 'sam-onnx/1';

/**
 * Version of the graphs this converter writes. A folder converted from the same checkpoint with
 * the same options by a converter with a lower version (or none) is upgraded in place: 1 added
 * the split decoder, 2 the MultiHeadAttention encoder with external weights, 3 SAM 2's split
 * decoder.
 */
export const GRAPH_VERSION = 3;

export const FILES = {
  /** SAM 2: the single-mask decoder beside the multimask decoder.onnx. */
  singleMaskDecoder: 'decoder_single.onnx',
  encoder: 'encoder.onnx',
  encoderData: 'encoder.onnx.data',
  decoder: 'decoder.onnx',
  batchedDecoder: 'decoder_batched.onnx',
  splitDecoder: { image: 'decoder_image.onnx', prompt: 'decoder_prompt.onnx', masks: 'decoder_masks.onnx' },
  /** SAM 2: the split decoder's single-mask prompt side (mask token 0). */
  sam2PromptSingle: 'decoder_prompt_single.onnx',
} as const;

/** manifest.json of a converted model (a superset of the engine's ModelManifest). */
export interface ConvertedManifest {
  format: typeof MODEL_FORMAT;
  id: string;
  type: AnyModelType;
  /** 'sam2' for SAM 2 models; absent for SAM / MobileSAM. */
  family?: 'sam2';
  encoder: string;
  decoder: string;
  /** SAM 2: the single-mask decoder (decoder is then the multimask one). */
  singleMaskDecoder?: string;
  /** SAM 2: the multimask decoder split for automatic mask generation (src/engine/sam2-split-decoder.ts). */
  sam2SplitDecoder?: { image: string; prompt: string; masks: string; promptSingle?: string };
  decoderBatched?: false;
  /** Decoder with a dynamic prompt batch and no in-graph upscaling, for automatic mask generation. */
  batchedDecoder?: string;
  /** The split decoder (image side, prompt side, mask side), preferred by automatic mask generation. */
  splitDecoder?: { image: string; prompt: string; masks: string };
  /** 'int8': the encoder's Linears are dynamically quantized (src/convert/quantize.ts). */
  quantization?: Quantization;
  description: string;
  files: Record<string, { sha256: string; bytes: number }>;
  source: { checkpoint: string; sha256: string; bytes: number };
  converter: { name: string; version: string; graphVersion: number };
}

export interface PhaseTime {
  phase: string;
  seconds: number;
}

export interface ConvertProgress {
  phase: string;
  state: 'start' | 'done';
  /** Set when state is 'done'. */
  seconds?: number;
}

export interface ConvertOptions {
  onProgress?: (event: ConvertProgress) => void;
  /**
   * Replace an existing model folder at outDir. Without it, a folder converted from the same
   * checkpoint by an older version (no split decoder) is upgraded; any other folder is refused.
   */
  force?: boolean;
  /** The checkpoint's sha256 when the caller already knows it (a verified download). */
  checkpointSha256?: string;
  /** Models whose initializers exceed this many bytes store them in `<file>.data` (protobuf's 2 GiB limit). */
  externalDataThreshold?: number;
  /**
   * vit_t only: 'zeros' reproduces MobileSAM's build_sam_vit_t without a later .eval(), which
   * runs TinyViT with zero attention biases (README "Design notes"); default 'checkpoint'.
   */
  attentionBiases?: 'checkpoint' | 'zeros';
  /** 'int8': quantize the encoder's Linears (opt-in; the model gets its own id). */
  quantize?: Quantization;
  /**
   * 'reference': the encoder graph of GRAPH_VERSION 1 (plain MatMul/Softmax attention, weights
   * inline below protobuf's limit), for the encoder bench's before/after in one run. Not a CLI
   * option: the numbers are the same, only slower.
   */
  encoderGraph?: 'current' | 'reference';
}

export interface ConvertResult {
  outDir: string;
  type: AnyModelType;
  manifest: ConvertedManifest;
  /** outDir held an older conversion of the same checkpoint, now replaced by a complete one. */
  upgraded: boolean;
  /** Set when `quantize` was given. */
  quantized?: QuantizeReport;
  phases: PhaseTime[];
  seconds: number;
}

const ZERO_BIASES_SUFFIX = '-zero-attention-biases';

/** Below protobuf's 2 GiB message limit with room for the graph itself. */
const EXTERNAL_DATA_THRESHOLD = 1.5 * 1024 ** 3;

async function sha256OfFile(path: string): Promise<{ sha256: string; bytes: number }> {
  const [sha256, info] = await Promise.all([sha256File(path), stat(path)]);
  return { sha256, bytes: info.size };
}

function initializerBytes(model: ModelProto): number {
  let total = 0;
  for (const t of model.graph?.initializer ?? []) total += t.rawData?.length ?? 0;
  return total;
}

/**
 * The builders throw plain Errors for missing or misshapen state-dict tensors: a problem of the
 * checkpoint, reported as a model error. RangeErrors (allocation failures) stay internal.
 */
function asModelError(err: unknown, checkpoint: string, what: string): unknown {
  if (err instanceof SamError || err instanceof RangeError || !(err instanceof Error)) return err;
  return modelError(`${checkpoint}: cannot build the ${what} (${err.message.split('\n')[0]}); is it an official SAM or MobileSAM checkpoint?`, err);
}

async function folderHasEntries(dir: string): Promise<boolean> {
  const entries = await readdir(dir).catch(() => undefined);
  return entries !== undefined && entries.length > 0;
}

/** Runs phases, reporting each through `onProgress` and recording its time. */
class PhaseTimer {
  readonly phases: PhaseTime[] = [];

  constructor(private readonly onProgress?: (event: ConvertProgress) => void) {}

  async timed<T>(phase: string, fn: () => Promise<T> | T): Promise<T> {
    this.onProgress?.({ phase, state: 'start' });
    const t0 = performance.now();
    const out = await fn();
    const seconds = (performance.now() - t0) / 1000;
    this.phases.push({ phase, seconds });
    this.onProgress?.({ phase, state: 'done', seconds });
    return out;
  }
}

export async function convertCheckpoint(
  checkpointPath: string,
  type: AnyModelType | undefined,
  outDir: string,
  opts: ConvertOptions = {},
): Promise<ConvertResult> {
  const started = performance.now();
  const timer = new PhaseTimer(opts.onProgress);
  const ckpt = await checkCheckpointFile(checkpointPath);
  const { out, upgradeFrom, upgradeId } = await checkOutDir(outDir, opts.force ?? false);
  let checkpointSha256 = opts.checkpointSha256;
  if (upgradeFrom !== undefined) {
    checkpointSha256 ??= (await timer.timed('hash checkpoint', () => sha256OfFile(ckpt.path))).sha256;
    // Same checkpoint and same options (the id records them): same model id.
    const oldSuffix = (upgradeId ?? '').replace(/^[a-z0-9_]+-[0-9a-f]{12}/, '');
    const sameOptions = oldSuffix === idSuffix(opts.attentionBiases === 'zeros', opts.quantize);
    if (checkpointSha256 !== upgradeFrom || !sameOptions) {
      throw new SamError('output', `--out ${outDir} holds a model converted from another checkpoint (or with other options); pass --force to replace it, or choose another folder`);
    }
  }
  const { sd, source, modelType } = await readCheckpoint(ckpt, type, { ...opts, checkpointSha256 }, timer);
  if (isSam2ModelType(modelType)) {
    await removeStaleTemps(dirname(out), { recursive: false, prefix: `.${basename(out)}.` });
    let manifest: ConvertedManifest | undefined;
    await produceDirAtomic(out, async (tmp) => {
      await writeSam2Graphs(tmp, sd, modelType, ckpt.name, timer);
      const files = await timer.timed('checksums', () => folderChecksums(tmp));
      manifest = sam2Manifest(modelType, ckpt.name, source, files);
      await writeFile(join(tmp, 'manifest.json'), `${JSON.stringify(manifest, null, 2)}\n`);
    });
    if (!manifest) throw new Error('internal: conversion finished without a manifest');
    return { outDir: out, type: modelType, manifest, upgraded: upgradeFrom !== undefined, phases: timer.phases, seconds: (performance.now() - started) / 1000 };
  }

  // Leftovers of a killed conversion into the same folder.
  await removeStaleTemps(dirname(out), { recursive: false, prefix: `.${basename(out)}.` });
  let manifest: ConvertedManifest | undefined;
  let quantized: QuantizeReport | undefined;
  // Written into a sibling temp folder (same file system) that is renamed into place at the end.
  await produceDirAtomic(out, async (tmp) => {
    quantized = await writeGraphs(tmp, sd, modelType, ckpt.name, opts, timer);
    const files = await timer.timed('checksums', () => folderChecksums(tmp));
    manifest = modelManifest(modelType, ckpt.name, source, files, opts.attentionBiases === 'zeros', opts.quantize);
    await writeFile(join(tmp, 'manifest.json'), `${JSON.stringify(manifest, null, 2)}\n`);
  });
  if (!manifest) throw new Error('internal: conversion finished without a manifest');
  return { outDir: out, type: modelType, manifest, upgraded: upgradeFrom !== undefined, quantized, phases: timer.phases, seconds: (performance.now() - started) / 1000 };
}

interface CheckpointFile {
  path: string;
  name: string;
  bytes: number;
}

async function checkCheckpointFile(checkpointPath: string): Promise<CheckpointFile> {
  const path = resolve(checkpointPath);
  const info = await stat(path).catch(() => undefined);
  if (!info?.isFile()) throw new SamError('input', `checkpoint ${checkpointPath} does not exist or is not a file; pass the .pth/.pt/.safetensors file`);
  return { path, name: basename(path), bytes: info.size };
}

/**
 * The absolute output folder, once it is known to be new, empty, or a model that `force`
 * replaces; `upgradeFrom`: the folder is an older conversion (lower GRAPH_VERSION) of the checkpoint
 * with this sha256, which the conversion may replace without `force` if the checkpoint matches.
 */
async function checkOutDir(outDir: string, force: boolean): Promise<{ out: string; upgradeFrom?: string; upgradeId?: string }> {
  const out = resolve(outDir);
  const outInfo = await stat(out).catch(() => undefined);
  if (outInfo && !outInfo.isDirectory()) throw new SamError('output', `--out ${outDir} is a file; pass a folder for the model`);
  if (await folderHasEntries(out)) {
    // --force replaces a previous model folder, never an unrelated folder the user pointed at.
    const manifestText = await readFile(join(out, 'manifest.json'), 'utf8').catch(() => undefined);
    const isModel = manifestText !== undefined;
    if (isModel && !force) {
      const old = parseOldManifest(manifestText);
      const oldVersion = old?.converter?.graphVersion ?? (old?.splitDecoder === undefined ? 0 : 1);
      if (old && oldVersion < GRAPH_VERSION && typeof old.source?.sha256 === 'string' && typeof old.id === 'string') {
        return { out, upgradeFrom: old.source.sha256, upgradeId: old.id };
      }
    }
    if (!force || !isModel) {
      const fix = isModel ? 'pass --force to replace it, or choose another folder' : 'choose an empty or new folder';
      throw new SamError('output', `--out ${outDir} already exists and is not empty; ${fix}`);
    }
  }
  return { out };
}

function parseOldManifest(text: string): Partial<ConvertedManifest> | undefined {
  try {
    const m: unknown = JSON.parse(text);
    return typeof m === 'object' && m !== null && (m as { format?: unknown }).format === MODEL_FORMAT ? (m as Partial<ConvertedManifest>) : undefined;
  } catch {
    return undefined;
  }
}

interface SourceChecksum {
  sha256: string;
  bytes: number;
}

/** The state dict, the checkpoint's checksum (hashed alongside the read unless given) and its type. */
async function readCheckpoint(
  ckpt: CheckpointFile,
  type: AnyModelType | undefined,
  opts: ConvertOptions,
  timer: PhaseTimer,
): Promise<{ sd: StateDict; source: SourceChecksum; modelType: AnyModelType }> {
  const [sd, source] = await Promise.all([
    timer.timed('read checkpoint', () => loadStateDict(ckpt.path)),
    opts.checkpointSha256
      ? Promise.resolve({ sha256: opts.checkpointSha256, bytes: ckpt.bytes })
      : timer.timed('hash checkpoint', () => sha256OfFile(ckpt.path)),
  ]);
  // SAM 2 first: its checkpoints hold no SAM 1 encoder, and a SAM 1 --type on one deserves its own message.
  const sam2 = detectSam2Type(sd).type;
  if (type !== undefined && isSam2ModelType(type)) {
    checkSam2TypeMatches(sd, type, ckpt.name);
    if (opts.attentionBiases === 'zeros' || opts.quantize) throw new SamError('usage', `--attention-biases and --quantize apply to SAM and MobileSAM checkpoints; ${ckpt.name} is SAM 2: drop them`);
    return { sd, source, modelType: type };
  }
  if (sam2 !== undefined) {
    if (type !== undefined) throw modelError(`checkpoint ${ckpt.name} is a SAM 2 checkpoint (${sam2}), not ${type}; pass --type ${sam2} or drop --type`);
    if (opts.attentionBiases === 'zeros' || opts.quantize) throw new SamError('usage', `--attention-biases and --quantize apply to SAM and MobileSAM checkpoints; ${ckpt.name} is SAM 2: drop them`);
    return { sd, source, modelType: sam2 };
  }
  const modelType = resolveType(sd, type, ckpt.name);
  if (opts.attentionBiases === 'zeros' && modelType !== 'vit_t') {
    throw new SamError('usage', `--attention-biases applies to vit_t (MobileSAM) checkpoints only; ${ckpt.name} is ${modelType}: drop the option`);
  }
  return { sd, source, modelType };
}

/** encoder.onnx, decoder.onnx, decoder_batched.onnx and the split decoder into `tmp`. */
async function writeGraphs(
  tmp: string,
  sd: StateDict,
  modelType: SamModelType,
  ckptName: string,
  opts: ConvertOptions,
  timer: PhaseTimer,
): Promise<QuantizeReport | undefined> {
  const threshold = opts.externalDataThreshold ?? EXTERNAL_DATA_THRESHOLD;
  // Build and write one graph at a time, so each builder's initializers can be collected
  // before the next graph is built (vit_h's encoder alone is 2.5 GB).
  let quantized: QuantizeReport | undefined;
  const graph = async (what: string, file: string, build: () => GraphBuilder, docString: string): Promise<void> => {
    const builder = await timer.timed(`build ${what}`, () => {
      try {
        return build();
      } catch (err) {
        throw asModelError(err, ckptName, what);
      }
    });
    let model = builder.toModel({ producerName: 'sam-cli convert', producerVersion: packageVersion(), docString });
    if (file === FILES.encoder && opts.quantize === 'int8') {
      const q = await timer.timed('quantize encoder', () => quantizeLinearsInt8(model));
      model = q.model;
      quantized = q.report;
    }
    const inline = file !== FILES.encoder || opts.encoderGraph === 'reference';
    await timer.timed(`write ${what}`, () => writeGraph(model, tmp, file, inline ? threshold : 0));
  };
  // The encoder's weights always go to encoder.onnx.data: onnxruntime memory-maps external data
  // instead of copying it out of the parsed protobuf (vit_b, measured: session start 0.8 s
  // instead of 1.8 s, peak RSS of one image 1.19 GB instead of 1.52 GB).
  await graph(
    'encoder',
    FILES.encoder,
    () => {
      const attention = opts.encoderGraph === 'reference' ? 'reference' : 'fused';
      return modelType === 'vit_t'
        ? buildTinyVitEncoder(sd, 'image_encoder.', { attentionBiases: opts.attentionBiases, attention })
        : buildVitEncoder(sd, VIT_CONFIGS[modelType], 'image_encoder.', { attention });
    },
    `SAM ${modelType} image encoder from ${ckptName}`,
  );
  await graph('decoder', FILES.decoder, () => buildSamDecoder(sd, { batched: false, upscale: true }), `SAM ${modelType} decoder from ${ckptName}`);
  // No in-graph upscaling: automatic mask generation reads only low_res_masks, and upscaled
  // masks would cost B×M×1024×1024 floats per call.
  await graph(
    'batched decoder',
    FILES.batchedDecoder,
    () => buildSamDecoder(sd, { batched: true, upscale: false }),
    `SAM ${modelType} batched decoder (low-res masks only) from ${ckptName}`,
  );
  // The split decoder for automatic mask generation (prompts without mask input).
  const split = FILES.splitDecoder;
  await graph('decoder image side', split.image, () => buildSamDecoderImageSide(sd), `SAM ${modelType} split decoder, image side (once per image) from ${ckptName}`);
  await graph('decoder prompt side', split.prompt, () => buildSamDecoderPromptSide(sd), `SAM ${modelType} split decoder, prompt side (IoU; image-side inputs) from ${ckptName}`);
  await graph('decoder mask side', split.masks, () => buildSamDecoderMaskSide(sd), `SAM ${modelType} split decoder, mask side (low-res masks) from ${ckptName}`);
  return quantized;
}

/** `dir/file`; initializers beyond `threshold` bytes go to `<file>.data` beside it. */
async function writeGraph(model: ModelProto, dir: string, file: string, threshold: number): Promise<void> {
  if (initializerBytes(model) > threshold) await serializeWithExternalData(model, join(dir, file), `${file}.data`);
  else await writeFile(join(dir, file), serializeModel(model));
}

/** sha256 and size of every file in `dir`, by name in sorted order. */
async function folderChecksums(dir: string): Promise<ConvertedManifest['files']> {
  const names = (await readdir(dir)).sort();
  const entries: ConvertedManifest['files'] = {};
  for (const name of names) entries[name] = await sha256OfFile(join(dir, name));
  return entries;
}

/** What the model id appends for conversion options that change the encoder's numbers. */
function idSuffix(zeroBiases: boolean, quantize: Quantization | undefined): string {
  return `${zeroBiases ? ZERO_BIASES_SUFFIX : ''}${quantize === 'int8' ? INT8_MODEL_ID_SUFFIX : ''}`;
}

function modelManifest(
  modelType: SamModelType,
  ckptName: string,
  source: SourceChecksum,
  files: ConvertedManifest['files'],
  zeroBiases: boolean,
  quantize: Quantization | undefined,
): ConvertedManifest {
  const notes = [zeroBiases ? 'TinyViT attention biases zeroed' : '', quantize === 'int8' ? 'encoder Linears quantized to int8' : ''].filter((n) => n !== '');
  return {
    format: MODEL_FORMAT,
    // A different encoder from the same checkpoint must not share embeddings: its own id.
    id: `${modelType}-${source.sha256.slice(0, 12)}${idSuffix(zeroBiases, quantize)}`,
    type: modelType,
    encoder: FILES.encoder,
    decoder: FILES.decoder,
    decoderBatched: false,
    batchedDecoder: FILES.batchedDecoder,
    splitDecoder: { ...FILES.splitDecoder },
    ...(quantize ? { quantization: quantize } : {}),
    description: `SAM ${modelType} converted from ${ckptName} by sam models convert${notes.length > 0 ? ` (${notes.join('; ')})` : ''}`,
    files,
    source: { checkpoint: ckptName, sha256: source.sha256, bytes: source.bytes },
    converter: { name: 'sam-cli', version: packageVersion(), graphVersion: GRAPH_VERSION },
  };
}

/** SAM 2: encoder.onnx (image_embed + high-res features), decoder.onnx (3 multimask outputs), decoder_single.onnx (mask token 0), and the multimask decoder split in three. */
async function writeSam2Graphs(tmp: string, sd: StateDict, type: Sam2ModelType, ckptName: string, timer: PhaseTimer): Promise<void> {
  const meta = { producerName: 'sam-cli convert', producerVersion: packageVersion() };
  const one = async (what: string, file: string, build: () => GraphBuilder): Promise<void> => {
    const builder = await timer.timed(`build ${what}`, () => {
      try {
        return build();
      } catch (err) {
        throw asModelError(err, ckptName, what);
      }
    });
    await timer.timed(`write ${what}`, () => writeFile(join(tmp, file), serializeModel(builder.toModel({ ...meta, docString: `SAM 2 ${type} ${what} from ${ckptName}` }))));
  };
  await one('encoder', FILES.encoder, () => buildSam2EncoderGraph(sd, SAM2_CONFIGS[type]));
  await one('decoder', FILES.decoder, () => buildSam2DecoderGraph(sd, { multimask: true }));
  await one('single-mask decoder', FILES.singleMaskDecoder, () => buildSam2DecoderGraph(sd, { multimask: false }));
  // Automatic mask generation's multimask pass: image side once per crop, masks only for the
  // prompts whose IoU passes pred_iou_thresh (the plain graph's masks, test/convert-sam2-decoder).
  // The image and mask sides serve both outputs; box-to-mask (sam segment --prompts) also runs the
  // single-mask prompt side.
  let split: ReturnType<typeof buildSam2DecoderSplit> | undefined;
  const splitOf = (): ReturnType<typeof buildSam2DecoderSplit> => (split ??= buildSam2DecoderSplit(sd, { multimask: true }));
  for (const side of ['image', 'prompt', 'masks'] as const) await one(`split decoder (${side} side)`, FILES.splitDecoder[side], () => splitOf()[side]);
  await one('split decoder (single-mask prompt side)', FILES.sam2PromptSingle, () => buildSam2DecoderSplit(sd, { multimask: false }).prompt);
}

function sam2Manifest(type: Sam2ModelType, ckptName: string, source: SourceChecksum, files: ConvertedManifest['files']): ConvertedManifest {
  return {
    format: MODEL_FORMAT,
    id: `${type}-${source.sha256.slice(0, 12)}`,
    type,
    family: 'sam2',
    encoder: FILES.encoder,
    decoder: FILES.decoder,
    singleMaskDecoder: FILES.singleMaskDecoder,
    sam2SplitDecoder: { ...FILES.splitDecoder, promptSingle: FILES.sam2PromptSingle },
    description: `SAM 2 ${type} converted from ${ckptName} by sam models convert`,
    files,
    source: { checkpoint: ckptName, sha256: source.sha256, bytes: source.bytes },
    converter: { name: 'sam-cli', version: packageVersion(), graphVersion: GRAPH_VERSION },
  };
}

function resolveType(sd: StateDict, type: SamModelType | undefined, ckptName: string): SamModelType {
  if (type !== undefined) {
    checkConfigMatches(sd, type, ckptName);
    return type;
  }
  const detected = detectModelType(sd);
  if (detected === undefined) {
    throw modelError(`checkpoint ${ckptName} matches none of ${SAM_MODEL_TYPES.join(', ')} by its tensor shapes; is it a SAM or MobileSAM checkpoint? Pass --type to see what differs`);
  }
  return detected;
}
