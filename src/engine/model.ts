import { EMBEDDING_DIMS, LOW_RES_LENGTH, LOW_RES_SIDE } from '../core/constants.js';
import { readFile, readdir, stat } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { basename, join, resolve } from 'node:path';
import * as ort from 'onnxruntime-node';
import { modelError } from '../util/errors.js';
import { sha256File } from '../util/hash.js';
import { SplitDecoderSession, type SplitDecoderFiles } from './split-decoder.js';
import { Sam2SplitDecoderSession, type Sam2SplitDecoderFiles } from './sam2-split-decoder.js';
import { SAM2_HIGH_RES_DIMS, type ModelFamily } from '../io/embedding-file.js';

/** `manifest.json` in a model folder. `sam models convert` writes it; users may write it by hand. */
export interface ModelManifest {
  format: 'sam-onnx/1';
  /** Stable identifier stored in embedding files, so embeddings of another model are refused. */
  id: string;
  type?: string;
  encoder: string;
  decoder: string;
  /** True when the decoder takes a dynamic prompt batch: point_coords [B, N, 2]. */
  decoderBatched?: boolean;
  /**
   * A second decoder with a dynamic prompt batch (written by `sam models convert`), preferred for
   * automatic mask generation. It may lack the in-graph upscaling (no orig_im_size / masks).
   */
  batchedDecoder?: string;
  /**
   * The split decoder (src/engine/split-decoder.ts), preferred for automatic mask generation:
   * image side once per crop, IoU for every prompt, masks only for those that pass the filter.
   */
  splitDecoder?: SplitDecoderFiles;
  /** 'int8' when `sam models convert --quantize int8` quantized the encoder. */
  quantization?: string;
  /** 'sam2' for SAM 2 models (their embeddings and prompts differ); absent: 'sam'. */
  family?: ModelFamily;
  /** SAM 2: the single-mask decoder (mask token 0); `decoder` is then the multimask one (tokens 1..3). */
  singleMaskDecoder?: string;
  /** SAM 2: the multimask decoder split in three (src/engine/sam2-split-decoder.ts), preferred for automatic mask generation. */
  sam2SplitDecoder?: Sam2SplitDecoderFiles;
  description?: string;
}

export interface SessionOptions {
  /** Intra-op threads per ORT session; default: all cores. */
  threads?: number;
}

type Dims = ReadonlyArray<number | string>;

/** Expected I/O of the official export (scripts/export_onnx_model.py) and the common encoder export. */
const ENCODER_INPUTS: Record<string, Dims> = { image: [1, 3, 1024, 1024] };
const ENCODER_OUTPUTS: Record<string, Dims> = { image_embeddings: EMBEDDING_DIMS };
/** SAM 2's encoder (ours and samexporter's export_sam2.py): image_embed with no_mem_embed added, and the high-res features after conv_s0/conv_s1. */
const SAM2_ENCODER_OUTPUTS: Record<string, Dims> = {
  image_embed: EMBEDDING_DIMS,
  high_res_feats_0: SAM2_HIGH_RES_DIMS[0],
  high_res_feats_1: SAM2_HIGH_RES_DIMS[1],
};
const DECODER_INPUTS: Record<string, Dims> = {
  image_embeddings: EMBEDDING_DIMS,
  point_coords: ['B', 'N', 2],
  point_labels: ['B', 'N'],
  mask_input: ['B', 1, LOW_RES_SIDE, LOW_RES_SIDE],
  has_mask_input: ['B'],
  orig_im_size: [2],
};
const DECODER_OUTPUTS: Record<string, Dims> = {
  masks: ['B', 'M', 'H', 'W'],
  iou_predictions: ['B', 'M'],
  low_res_masks: ['B', 'M', LOW_RES_SIDE, LOW_RES_SIDE],
};

/** The batched decoder may end at low_res_masks: orig_im_size and masks are optional. */
const BATCHED_DECODER_INPUTS: Record<string, Dims> = Object.fromEntries(Object.entries(DECODER_INPUTS).filter(([n]) => n !== 'orig_im_size'));
const BATCHED_DECODER_OUTPUTS: Record<string, Dims> = Object.fromEntries(Object.entries(DECODER_OUTPUTS).filter(([n]) => n !== 'masks'));

function shapeOf(meta: readonly ort.InferenceSession.ValueMetadata[], name: string): Dims | undefined {
  const m = meta.find((v) => v.name === name);
  return m && m.isTensor ? m.shape : undefined;
}

const fmtDims = (d: Dims): string => `[${d.join(',')}]`;

/**
 * Check a session against the contract: every expected name present, and every static dimension
 * the model declares equal to the expected one (symbolic dimensions on either side match anything).
 */
function checkContract(
  what: string,
  file: string,
  session: ort.InferenceSession,
  inputs: Record<string, Dims>,
  outputs: Record<string, Dims>,
): void {
  const fix = 'use an export with the official SAM signature (see README "Models"), or fix manifest.json';
  for (const [kind, expected, names, meta] of [
    ['input', inputs, session.inputNames, session.inputMetadata],
    ['output', outputs, session.outputNames, session.outputMetadata],
  ] as const) {
    const missing = Object.keys(expected).filter((n) => !names.includes(n));
    if (missing.length > 0) {
      throw modelError(
        `${file}: not a SAM ${what}: expected ${kind}s ${Object.keys(expected).join(', ')} but found ${names.join(', ') || 'none'} (missing ${missing.join(', ')}); ${fix}`,
      );
    }
    for (const [name, want] of Object.entries(expected)) {
      const got = shapeOf(meta, name);
      if (!got || got.length === 0) continue;
      const fits =
        got.length === want.length &&
        got.every((g, i) => typeof g !== 'number' || g < 0 || typeof want[i] !== 'number' || g === want[i]);
      if (!fits) {
        throw modelError(`${file}: SAM ${what} ${kind} '${name}' should have shape ${fmtDims(want)} but has ${fmtDims(got)}; ${fix}`);
      }
    }
  }
}

/**
 * ORT CPU session: all cores by default (SessionOptions.threads), sequential execution, full
 * graph optimization.
 * `memArena: false` for the encoder: ORT's CPU arena keeps the peak of a session's intermediates
 * for the life of the process (~230 MiB for vit_t at one image); the encoder runs once per crop,
 * so giving that memory back costs little and keeps `sam auto`'s resident set bounded.
 */
async function createSession(file: string, options: SessionOptions, memArena = true, spinning = false): Promise<ort.InferenceSession> {
  try {
    return await ort.InferenceSession.create(file, ortSessionOptions(options, memArena, spinning));
  } catch (err) {
    const reason = String((err as Error).message ?? err).split('\n')[0];
    throw modelError(`${file}: onnxruntime cannot load it (${reason}); re-export or re-download the model file`, err);
  }
}

/** The onnxruntime options of every model session (the bench profiles with the same ones). */
export function ortSessionOptions(options: SessionOptions = {}, memArena = true, spinning = false): ort.InferenceSession.SessionOptions {
  return {
    enableCpuMemArena: memArena,
    intraOpNumThreads: options.threads ?? availableParallelism(),
    interOpNumThreads: 1,
    executionMode: 'sequential',
    graphOptimizationLevel: 'all',
    logSeverityLevel: 3,
    // Idle intra-op threads sleep instead of spinning: with `sam auto`'s engine worker they
    // share the cores with post-processing (measured: 25% less CPU, 11% less wall on the
    // fixture scenes; vit_t alone: 12% less CPU, wall unchanged).
    // The encoder's threads spin (`spinning`): its ~600 short nodes per call (MultiHeadAttention
    // chunks) made waking them cost 3.4% of vit_b's call (paired runs, CPU time the same).
    extra: { session: { intra_op: { allow_spinning: spinning ? '1' : '0' } } },
  };
}

/**
 * The image encoder: image [1,3,1024,1024] → image_embeddings [1,256,64,64] (SAM), or → image_embed
 * [1,256,64,64] + high_res_feats_0 [1,32,256,256] + high_res_feats_1 [1,64,128,128] (SAM 2).
 */
export class EncoderSession {
  constructor(
    readonly file: string,
    readonly session: ort.InferenceSession,
    readonly family: ModelFamily = 'sam',
  ) {}

  /** SAM 2's three features of one preprocessed image. */
  async runSam2(image: Float32Array): Promise<{ embeddings: Float32Array; highResFeats: [Float32Array, Float32Array] }> {
    const out = await this.session.run({ image: new ort.Tensor('float32', image, [1, 3, 1024, 1024]) }, Object.keys(SAM2_ENCODER_OUTPUTS));
    for (const [name, dims] of Object.entries(SAM2_ENCODER_OUTPUTS)) {
      if (out[name].dims.join(',') !== dims.join(',')) {
        throw modelError(`${this.file}: ${name} should have shape ${fmtDims(dims)} but the model produced ${fmtDims(out[name].dims)}; use a SAM 2 encoder export with outputs image_embed, high_res_feats_0, high_res_feats_1`);
      }
    }
    return { embeddings: out.image_embed.data as Float32Array, highResFeats: [out.high_res_feats_0.data as Float32Array, out.high_res_feats_1.data as Float32Array] };
  }

  async run(image: Float32Array): Promise<Float32Array> {
    const out = await this.session.run({ image: new ort.Tensor('float32', image, [1, 3, 1024, 1024]) }, ['image_embeddings']);
    const emb = out.image_embeddings;
    const dims = emb.dims;
    if (dims.length !== 4 || dims[0] !== 1 || dims[1] !== 256 || dims[2] !== 64 || dims[3] !== 64) {
      throw modelError(`${this.file}: image_embeddings should have shape [1,256,64,64] but the model produced ${fmtDims(dims)}; use an encoder export with the official SAM signature`);
    }
    return emb.data as Float32Array;
  }
}

export type DecoderOutputName = 'masks' | 'iou_predictions' | 'low_res_masks';

export interface DecoderFeeds {
  /** [1, 256, 64, 64] */
  embeddings: ort.Tensor;
  /** [B, N, 2] in the 1024 frame. */
  pointCoords: Float32Array;
  /** [B, N] */
  pointLabels: Float32Array;
  batch: number;
  numPoints: number;
  /** [B, 1, 256, 256] low-res logits of a previous prediction, or undefined for none. */
  maskInput?: Float32Array;
  /** [h, w] the decoder upscales `masks` to. */
  origSize: [number, number];
}

export interface DecoderResult {
  /** [B, M, h, w] logits at origSize (only when requested). */
  masks?: Float32Array;
  /** [B, M] */
  iouPredictions: Float32Array;
  /** [B, M, 256, 256] (only when requested). */
  lowResMasks?: Float32Array;
  numMasks: number;
}

/** The prompt encoder + mask decoder with the official export signature, batched or not. */
export class DecoderSession {
  private readonly zeroMasks = new Map<number, ort.Tensor>();
  constructor(
    readonly file: string,
    readonly session: ort.InferenceSession,
    /** point_coords has a dynamic batch dimension: B prompts per call. */
    readonly batched: boolean,
  ) {}

  /** Number of masks per prompt (4 for the default export, 1 for --return-single-mask), when declared. */
  get declaredNumMasks(): number | undefined {
    const m = shapeOf(this.session.outputMetadata, 'iou_predictions')?.[1];
    return typeof m === 'number' && m > 0 ? m : undefined;
  }

  private zeroMaskInput(batch: number): ort.Tensor {
    let t = this.zeroMasks.get(batch);
    if (!t) {
      t = new ort.Tensor('float32', new Float32Array(batch * LOW_RES_LENGTH), [batch, 1, LOW_RES_SIDE, LOW_RES_SIDE]);
      this.zeroMasks.set(batch, t);
    }
    return t;
  }

  /**
   * One decoder call. ORT computes every output of the graph whatever is fetched, so a caller that
   * only needs low-res masks passes a tiny origSize to make the in-graph upscaling cheap.
   */
  async run(feeds: DecoderFeeds, outputs: readonly DecoderOutputName[]): Promise<DecoderResult> {
    const { batch: b, numPoints: n } = feeds;
    if (b !== 1 && !this.batched) throw new Error('internal: batch > 1 on a single-prompt decoder');
    const hasMask = feeds.maskInput !== undefined;
    const ortFeeds: Record<string, ort.Tensor> = {
      image_embeddings: feeds.embeddings,
      point_coords: new ort.Tensor('float32', feeds.pointCoords, [b, n, 2]),
      point_labels: new ort.Tensor('float32', feeds.pointLabels, [b, n]),
      mask_input: hasMask ? new ort.Tensor('float32', feeds.maskInput!, [b, 1, LOW_RES_SIDE, LOW_RES_SIDE]) : this.zeroMaskInput(b),
      has_mask_input: new ort.Tensor('float32', new Float32Array(b).fill(hasMask ? 1 : 0), [b]),
    };
    // A decoder without in-graph upscaling has no orig_im_size input, and ORT refuses unknown feeds.
    if (this.session.inputNames.includes('orig_im_size')) ortFeeds.orig_im_size = new ort.Tensor('float32', Float32Array.from(feeds.origSize), [2]);
    const fetch = new Set<DecoderOutputName>(['iou_predictions', ...outputs]);
    const out = await this.session.run(ortFeeds, [...fetch]);
    const iou = out.iou_predictions;
    return {
      iouPredictions: iou.data as Float32Array,
      numMasks: iou.dims[1],
      masks: out.masks?.data as Float32Array | undefined,
      lowResMasks: out.low_res_masks?.data as Float32Array | undefined,
    };
  }
}

/** SAM 2's prompt encoder + mask decoder (ours and samexporter's export_sam2.py signature). */
const SAM2_DECODER_INPUTS: Record<string, Dims> = {
  image_embed: EMBEDDING_DIMS,
  high_res_feats_0: SAM2_HIGH_RES_DIMS[0],
  high_res_feats_1: SAM2_HIGH_RES_DIMS[1],
  point_coords: ['B', 'N', 2],
  point_labels: ['B', 'N'],
  mask_input: ['B', 1, LOW_RES_SIDE, LOW_RES_SIDE],
  has_mask_input: ['B'],
};
const SAM2_DECODER_OUTPUTS: Record<string, Dims> = {
  masks: ['B', 'M', LOW_RES_SIDE, LOW_RES_SIDE],
  iou_predictions: ['B', 'M'],
};

/** A SAM 2 decoder graph: point_coords in the 1024 frame without the padding point; `masks` are low-res logits. */
export class Sam2DecoderSession {
  constructor(
    readonly file: string,
    readonly session: ort.InferenceSession,
  ) {}

  /** One call for B prompts of N points: low-res logits [B, M, 256, 256] and IoUs [B, M]. */
  async run(
    image: Readonly<Record<string, ort.Tensor>>,
    pointCoords: Float32Array,
    pointLabels: Float32Array,
    batch: number,
    numPoints: number,
    maskInput?: Float32Array,
  ): Promise<{ lowResMasks: Float32Array; iouPredictions: Float32Array; numMasks: number }> {
    const hasMask = maskInput !== undefined;
    const out = await this.session.run({
      ...image,
      point_coords: new ort.Tensor('float32', pointCoords, [batch, numPoints, 2]),
      point_labels: new ort.Tensor('float32', pointLabels, [batch, numPoints]),
      mask_input: new ort.Tensor('float32', maskInput ?? new Float32Array(batch * LOW_RES_LENGTH), [batch, 1, LOW_RES_SIDE, LOW_RES_SIDE]),
      has_mask_input: new ort.Tensor('float32', new Float32Array(batch).fill(hasMask ? 1 : 0), [batch]),
    });
    const iou = out.iou_predictions;
    return { lowResMasks: out.masks.data as Float32Array, iouPredictions: iou.data as Float32Array, numMasks: iou.dims[1] };
  }
}

/** A SAM model folder: encoder + decoder ONNX files, with or without manifest.json. */
export class SamModel {
  private encoderP?: Promise<EncoderSession>;
  private decoderP?: Promise<DecoderSession>;
  private batchedDecoderP?: Promise<DecoderSession | undefined>;
  private splitDecoderP?: Promise<SplitDecoderSession | undefined>;
  private idP?: Promise<string>;
  private readonly sam2Decoders = new Map<string, Promise<Sam2DecoderSession>>();
  private sam2SplitDecoderP?: Promise<Sam2SplitDecoderSession | undefined>;

  private constructor(
    readonly dir: string,
    readonly encoderPath: string,
    readonly decoderPath: string,
    readonly manifest: ModelManifest | undefined,
    private readonly options: SessionOptions,
    /** The family read from the decoder's input names, for a folder without manifest.json. */
    private readonly detectedFamily?: ModelFamily,
  ) {}

  /**
   * Open a model folder (hub/resolve.ts turns `--model NAME` into one). Fails fast (before any
   * inference) when files are missing.
   */
  static async open(dir: string, options: SessionOptions = {}): Promise<SamModel> {
    const abs = resolve(dir);
    const info = await stat(abs).catch(() => undefined);
    if (!info) throw modelError(`model folder ${dir} does not exist; pass --model with a folder holding encoder and decoder .onnx files`);
    if (!info.isDirectory()) throw modelError(`--model ${dir} is a file; pass the folder that holds the encoder and decoder .onnx files`);
    const manifestPath = join(abs, 'manifest.json');
    const manifestText = await readFile(manifestPath, 'utf8').catch(() => undefined);
    if (manifestText !== undefined) {
      const manifest = parseManifest(manifestPath, manifestText);
      const enc = join(abs, manifest.encoder);
      const dec = join(abs, manifest.decoder);
      const roles: [string, string][] = [['encoder', enc], ['decoder', dec]];
      if (typeof manifest.batchedDecoder === 'string') roles.push(['batchedDecoder', join(abs, manifest.batchedDecoder)]);
      if (typeof manifest.singleMaskDecoder === 'string') roles.push(['singleMaskDecoder', join(abs, manifest.singleMaskDecoder)]);
      for (const key of ['splitDecoder', 'sam2SplitDecoder'] as const) {
        const split = manifest[key];
        if (split === undefined) continue;
        if (typeof split !== 'object' || split === null || !(['image', 'prompt', 'masks'] as const).every((k) => typeof split[k] === 'string')) {
          throw modelError(`${manifestPath}: "${key}" needs string fields "image", "prompt" and "masks" naming .onnx files; fix it or remove it`);
        }
        for (const k of ['image', 'prompt', 'masks'] as const) roles.push([`${key}.${k}`, join(abs, split[k])]);
      }
      const single = manifest.sam2SplitDecoder?.promptSingle;
      if (single !== undefined) {
        if (typeof single !== 'string') throw modelError(`${manifestPath}: "sam2SplitDecoder.promptSingle" must name an .onnx file; fix it or remove it`);
        roles.push(['sam2SplitDecoder.promptSingle', join(abs, single)]);
      }
      for (const [role, file] of roles) {
        const st = await stat(file).catch(() => undefined);
        if (!st?.isFile()) throw modelError(`${manifestPath}: ${role} file ${basename(file)} is missing; restore it or fix "${role}" in the manifest`);
      }
      return new SamModel(abs, enc, dec, manifest, options);
    }
    const { encoder, decoder, family } = await autodetect(abs, options);
    return new SamModel(abs, encoder, decoder, undefined, options, family);
  }

  /** The model family (manifest "family", else read from the decoder's inputs); SAM 1 and MobileSAM are 'sam'. */
  get family(): ModelFamily {
    return this.manifest?.family ?? this.detectedFamily ?? 'sam';
  }

  /**
   * Whether a SAM 2 model has the single-mask decoder (mask token 0). `sam models convert` writes
   * it; a samexporter folder (export_sam2.py) holds only the multimask graph.
   */
  get hasSam2SingleMaskDecoder(): boolean {
    return this.family === 'sam2' && typeof this.manifest?.singleMaskDecoder === 'string';
  }

  /**
   * SAM 2's decoder: the multimask graph (manifest "decoder", or the autodetected decoder; 3 masks)
   * or the single-mask graph (manifest "singleMaskDecoder", 1 mask), loaded once each.
   */
  sam2Decoder(multimask: boolean): Promise<Sam2DecoderSession> {
    if (this.family !== 'sam2') throw modelError(`internal: ${this.dir} is not a SAM 2 model`);
    const name = multimask ? this.decoderPath : this.manifest?.singleMaskDecoder;
    if (typeof name !== 'string') {
      throw modelError(
        `${this.dir}: this SAM 2 model has no single-mask decoder (${this.manifest ? 'manifest.json names no "singleMaskDecoder"' : 'a samexporter-style folder holds only the multimask one'}); convert the official checkpoint with 'sam models convert' to get it, or drop the options that need it (--use-m2m, --no-multimask-output)`,
      );
    }
    const file = resolve(this.dir, name);
    const cached = this.sam2Decoders.get(file);
    if (cached) return cached;
    const p = createSession(file, this.options).then((s) => {
      checkContract('SAM 2 decoder', file, s, SAM2_DECODER_INPUTS, SAM2_DECODER_OUTPUTS);
      return new Sam2DecoderSession(file, s);
    });
    this.sam2Decoders.set(file, p);
    return p;
  }

  /** SAM 2: the manifest's `sam2SplitDecoder`, or undefined when it names none (folders of older converters, samexporter's). */
  sam2SplitDecoder(): Promise<Sam2SplitDecoderSession | undefined> {
    this.sam2SplitDecoderP ??= (async () => {
      const files = this.manifest?.sam2SplitDecoder;
      if (this.family !== 'sam2' || !files) return undefined;
      const abs = {
        image: join(this.dir, files.image),
        prompt: join(this.dir, files.prompt),
        masks: join(this.dir, files.masks),
        ...(files.promptSingle ? { promptSingle: join(this.dir, files.promptSingle) } : {}),
      };
      // As splitDecoder(): the prompt sides (every prompt) keep their arena, the others give theirs back.
      const [image, prompt, masks, promptSingle] = await Promise.all([
        createSession(abs.image, this.options, false),
        createSession(abs.prompt, this.options),
        createSession(abs.masks, this.options, false),
        abs.promptSingle ? createSession(abs.promptSingle, this.options) : undefined,
      ]);
      return Sam2SplitDecoderSession.create(abs, image, prompt, masks, promptSingle);
    })();
    return this.sam2SplitDecoderP;
  }

  /** Identifier written into embedding files: the manifest id, else a hash of the encoder file. */
  id(): Promise<string> {
    this.idP ??= this.manifest ? Promise.resolve(this.manifest.id) : sha256File(this.encoderPath).then((h) => `sha256:${h.slice(0, 16)}`);
    return this.idP;
  }

  encoder(): Promise<EncoderSession> {
    this.encoderP ??= createSession(this.encoderPath, this.options, false, true).then((s) => {
      const sam2 = this.family === 'sam2';
      checkContract(sam2 ? 'SAM 2 encoder' : 'encoder', this.encoderPath, s, ENCODER_INPUTS, sam2 ? SAM2_ENCODER_OUTPUTS : ENCODER_OUTPUTS);
      return new EncoderSession(this.encoderPath, s, this.family);
    });
    return this.encoderP;
  }

  decoder(): Promise<DecoderSession> {
    this.decoderP ??= createSession(this.decoderPath, this.options).then((s) => {
      checkContract('decoder', this.decoderPath, s, DECODER_INPUTS, DECODER_OUTPUTS);
      const b = shapeOf(s.inputMetadata, 'point_coords')?.[0];
      const batched = this.manifest?.decoderBatched ?? (b !== undefined && b !== 1);
      return new DecoderSession(this.decoderPath, s, batched);
    });
    return this.decoderP;
  }

  /**
   * The manifest's `batchedDecoder` (dynamic prompt batch), or undefined when it names none.
   * Automatic mask generation prefers it to decoder(): one call per batch of points.
   */
  batchedDecoder(): Promise<DecoderSession | undefined> {
    this.batchedDecoderP ??= (async () => {
      const name = this.manifest?.batchedDecoder;
      if (typeof name !== 'string') return undefined;
      const file = join(this.dir, name);
      const s = await createSession(file, this.options);
      checkContract('batched decoder', file, s, BATCHED_DECODER_INPUTS, BATCHED_DECODER_OUTPUTS);
      const b = shapeOf(s.inputMetadata, 'point_coords')?.[0];
      if (b === 1) throw modelError(`${file}: "batchedDecoder" must take a dynamic prompt batch but point_coords has batch 1; fix manifest.json or convert the model again`);
      return new DecoderSession(file, s, true);
    })();
    return this.batchedDecoderP;
  }

  /** The manifest's `splitDecoder`, or undefined when it names none. */
  splitDecoder(): Promise<SplitDecoderSession | undefined> {
    this.splitDecoderP ??= (async () => {
      const files = this.manifest?.splitDecoder;
      if (!files) return undefined;
      const abs = { image: join(this.dir, files.image), prompt: join(this.dir, files.prompt), masks: join(this.dir, files.masks) };
      // ORT's arena keeps each session's peak intermediates for the whole run. The prompt side runs
      // for every prompt and keeps it (without: 19% slower); the image side (once per crop) and the
      // mask side (only for prompts that pass the IoU filter) give theirs back: at 4000x3000,
      // thresholds 0, 8x8 grid, peak RSS 777 -> 600 MiB at the same speed.
      const [image, prompt, masks] = await Promise.all([
        createSession(abs.image, this.options, false),
        createSession(abs.prompt, this.options),
        createSession(abs.masks, this.options, false),
      ]);
      return SplitDecoderSession.create(abs, image, prompt, masks);
    })();
    return this.splitDecoderP;
  }

  /**
   * The decoder automatic mask generation uses. 'auto': the split decoder when the manifest has
   * one, else the batched decoder, else the main decoder; 'split' and 'batched' require theirs;
   * 'single' is the main decoder one prompt per call.
   */
  async amgDecoder(choice: DecoderChoice = 'auto'): Promise<DecoderSession | SplitDecoderSession> {
    if (choice === 'single') return this.decoder();
    if (choice === 'split' || choice === 'auto') {
      const split = await this.splitDecoder();
      if (split) return split;
      if (choice === 'split') {
        throw modelError(`${this.dir}: no split decoder (manifest "splitDecoder"); run 'sam models convert' on the checkpoint again to add it, or drop --decoder split`);
      }
    }
    const batched = (await this.batchedDecoder()) ?? (choice === 'batched' ? await this.decoder() : undefined);
    if (choice === 'batched' && !batched?.batched) {
      throw modelError(`${this.dir}: no batched decoder (manifest "batchedDecoder", or a decoder with a dynamic batch); convert the model with 'sam models convert' or drop --decoder batched`);
    }
    return batched ?? this.decoder();
  }
  /**
   * The decoder for many prompts of one image (`sam segment --prompts`). 'auto': the split
   * decoder, else the manifest's batched decoder, else the main one (batched or not); 'split' and
   * 'batched' require theirs; 'single' is the main decoder (the caller then makes one call per prompt).
   */
  promptDecoder(choice: PromptDecoderChoice = 'auto'): Promise<DecoderSession | SplitDecoderSession> {
    // The same choice as automatic mask generation's: one rule for which decoder serves many prompts.
    return this.amgDecoder(choice);
  }
}

/** Which decoder `sam segment --prompts` uses: see SamModel.promptDecoder. */
export type PromptDecoderChoice = 'auto' | 'single' | 'batched' | 'split';

/** Which decoder `sam auto` uses: see SamModel.amgDecoder. */
export type DecoderChoice = 'auto' | 'single' | 'batched' | 'split';

function parseManifest(path: string, text: string): ModelManifest {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw modelError(`${path}: not valid JSON (${(err as Error).message}); fix it or delete it to autodetect the .onnx files`);
  }
  const m = json as Partial<ModelManifest>;
  if (typeof m !== 'object' || m === null || typeof m.encoder !== 'string' || typeof m.decoder !== 'string') {
    throw modelError(`${path}: needs string fields "encoder" and "decoder" naming the .onnx files; fix it or delete it to autodetect`);
  }
  return { format: 'sam-onnx/1', id: typeof m.id === 'string' ? m.id : basename(path), ...m } as ModelManifest;
}

/**
 * Without a manifest: pick encoder/decoder by file name, else by the ONNX input names. The family
 * comes from the decoder's inputs: SAM 2's (samexporter's export_sam2.py, ours) take image_embed
 * and the two high-res feature maps, SAM's take image_embeddings.
 */
async function autodetect(dir: string, options: SessionOptions): Promise<{ encoder: string; decoder: string; family: ModelFamily }> {
  const onnx = (await readdir(dir)).filter((f) => f.toLowerCase().endsWith('.onnx')).sort();
  const fix = 'put the encoder and decoder .onnx files there, or write manifest.json (see README "Models")';
  if (onnx.length < 2) throw modelError(`model folder ${dir} holds ${onnx.length} .onnx file(s), need an encoder and a decoder; ${fix}`);
  const byName = (word: string): string[] => onnx.filter((f) => f.toLowerCase().includes(word));
  const enc = byName('encoder');
  const dec = byName('decoder');
  const familyOf = (inputs: readonly string[]): ModelFamily => (Object.keys(SAM2_DECODER_INPUTS).every((n) => inputs.includes(n)) ? 'sam2' : 'sam');
  if (enc.length === 1 && dec.length === 1 && enc[0] !== dec[0]) {
    const s = await createSession(join(dir, dec[0]), { ...options, threads: 1 });
    const family = familyOf(s.inputNames);
    await s.release();
    return { encoder: join(dir, enc[0]), decoder: join(dir, dec[0]), family };
  }
  const encoders: string[] = [];
  const decoders: { file: string; family: ModelFamily }[] = [];
  for (const f of onnx) {
    const s = await createSession(join(dir, f), { ...options, threads: 1 });
    if (s.inputNames.includes('point_coords')) decoders.push({ file: f, family: familyOf(s.inputNames) });
    else if (s.inputNames.length === 1) encoders.push(f);
    await s.release();
  }
  if (encoders.length !== 1 || decoders.length !== 1) {
    throw modelError(
      `model folder ${dir}: cannot tell encoder from decoder (encoders: ${encoders.join(', ') || 'none'}; decoders: ${decoders.map((d) => d.file).join(', ') || 'none'}); write manifest.json naming them (see README "Models")`,
    );
  }
  return { encoder: join(dir, encoders[0]), decoder: join(dir, decoders[0].file), family: decoders[0].family };
}
