/**
 * `sam auto` for one image at a time: load → (stored or fresh) embedding → generator → outputs,
 * and the run-level pieces around it (stale temp cleanup, the COCO dataset from outputs on disk).
 */
import { readFile, stat } from 'node:fs/promises';
import { dirname, basename, extname, join } from 'node:path';
import sharp from 'sharp';
import { SamAutomaticMaskGenerator, resolveAmgOptions, type AmgOptions, type PromptCounts } from '../amg/generator.js';
import { StageTimes } from '../core/timings.js';
import type { Size } from '../core/types.js';
import { inputError } from '../util/errors.js';
import { OnnxAmgPredictor } from '../engine/amg-predictor.js';
import { Sam2AmgPredictor, sam2AmgDecoder } from '../engine/sam2-amg-predictor.js';
import type { AmgWorker } from '../engine/amg-worker-client.js';
import {
  isOutputComplete,
  outputPathFor,
  readCocoRecords,
  writeAutoOverlay,
  writePngFolder,
  writeRecordsJson,
  type OutputMode,
} from '../output/records.js';
import { COCO_CATEGORY, annotationOfRecord, writeCocoDataset, type CocoImageEntry } from '../output/coco.js';
import { readEmbeddingFile } from '../io/embedding-file.js';
import { loadImage } from '../io/image.js';
import type { InputImage } from '../io/inputs.js';
import type { DecoderChoice, SamModel } from '../engine/model.js';
import { imageStateFromEmbedding, type ImageState } from '../engine/predictor.js';
import { removeStaleTemps } from '../util/atomic.js';
import { exists } from '../util/fs.js';

export interface AutoSetup {
  model: SamModel;
  amg: AmgOptions;
  outDir: string;
  outputMode: OutputMode;
  /** Folder for `<key>.png` overlays. */
  overlayDir?: string;
  /** Folder of `sam embed` files `<key>.safetensors`, used for crop 0 when present. */
  embeddingsDir?: string;
  /** A COCO dataset will be built: png mode keeps each image's coco_rle records as rle.json. */
  coco: boolean;
  /** Redo images whose outputs are complete. */
  force: boolean;
  /** Which decoder runs the point batches (SamModel.amgDecoder). */
  decoder?: DecoderChoice;
  /** The engine worker (pipelined decoding); without it the model runs on this thread. */
  engine?: AmgWorker;
}

export interface AutoImageResult {
  status: 'done' | 'skipped';
  /** Masks written (0 when skipped). */
  masks: number;
  /** Decoder prompts run, and those the full grids would have run (absent when skipped). */
  prompts?: PromptCounts;
}

/** Validate the options once (the generator would otherwise fail on every image). */
export function autoSetup(setup: Omit<AutoSetup, 'amg'> & { amg: Partial<AmgOptions> }): AutoSetup {
  return { ...setup, amg: resolveAmgOptions(setup.amg) };
}

const overlayPath = (setup: AutoSetup, key: string): string => join(setup.overlayDir!, `${key}.png`);

/** Whether an earlier run left every output this run asks for. */
export async function isImageComplete(setup: AutoSetup, item: InputImage): Promise<boolean> {
  if (!(await isOutputComplete(setup.outDir, item.key, setup.outputMode, setup.coco))) return false;
  return !setup.overlayDir || exists(overlayPath(setup, item.key));
}

/** The stored embedding for crop 0, or undefined when there is none (then it is computed). */
async function storedEmbedding(setup: AutoSetup, item: InputImage, size: Size): Promise<ImageState | undefined> {
  if (!setup.embeddingsDir) return undefined;
  const file = join(setup.embeddingsDir, `${item.key}.safetensors`);
  if (!(await exists(file))) return undefined;
  return imageStateFromEmbedding(setup.model, await readEmbeddingFile(file), file, size);
}

/** Run automatic mask generation on one image and write its outputs (skipped when complete). */
export async function autoImage(setup: AutoSetup, item: InputImage, timings: StageTimes = new StageTimes()): Promise<AutoImageResult> {
  if (!setup.force && (await isImageComplete(setup, item))) return { status: 'skipped', masks: 0 };
  const image = await timings.time('decode', () => loadImage(item.path));
  const size: Size = [image.height, image.width];
  const state = await storedEmbedding(setup, item, size);
  const needEncoder = !state || setup.amg.cropNLayers > 0;
  const prompts: PromptCounts = { run: 0, grid: 0 };
  let records;
  if (setup.model.family === 'sam2') {
    // SAM 2 runs on this thread (the engine worker drives SAM v1 decoders).
    const [encoder, decoder, refiner] = await Promise.all([
      needEncoder ? setup.model.encoder() : undefined,
      sam2AmgDecoder(setup.model, setup.amg.multimaskOutput !== false),
      setup.amg.useM2m ? setup.model.sam2Decoder(false) : undefined,
    ]);
    const predictor = new Sam2AmgPredictor(encoder, decoder, refiner, image, timings, state);
    records = await new SamAutomaticMaskGenerator(predictor, setup.amg).generate(size, timings, prompts);
  } else if (setup.engine) {
    const predictor = await setup.engine.forImage(image, timings, state, needEncoder);
    try {
      records = await new SamAutomaticMaskGenerator(predictor, setup.amg).generate(size, timings, prompts);
    } finally {
      await predictor.release();
    }
  } else {
    const [encoder, decoder] = await Promise.all([needEncoder ? setup.model.encoder() : undefined, setup.model.amgDecoder(setup.decoder)]);
    const predictor = new OnnxAmgPredictor(encoder, decoder, image, timings, state);
    records = await new SamAutomaticMaskGenerator(predictor, setup.amg).generate(size, timings, prompts);
  }
  await timings.time('write', async () => {
    // The main output last: an overlay without it is redone, never the other way round.
    if (setup.overlayDir) await writeAutoOverlay(overlayPath(setup, item.key), image, records);
    const out = outputPathFor(setup.outDir, item.key, setup.outputMode);
    if (setup.outputMode === 'png') await writePngFolder(out, records, setup.coco);
    else await writeRecordsJson(out, records, setup.outputMode);
  });
  return { status: 'done', masks: records.length, prompts };
}

/**
 * Remove temps left by killed runs in every folder this run writes to. The COCO file's folder
 * is not walked (it may be anything, e.g. the current folder): only its own temps are removed.
 */
export async function cleanStaleOutputs(setup: AutoSetup, cocoFile?: string): Promise<number> {
  let n = await removeStaleTemps(setup.outDir);
  if (setup.overlayDir) n += await removeStaleTemps(setup.overlayDir);
  if (cocoFile) n += await removeStaleTemps(dirname(cocoFile), { recursive: false, prefix: `.${basename(cocoFile)}.` });
  return n;
}

/** Upright [h, w] from the image header (EXIF orientation applied), without decoding pixels. */
export async function headerSize(path: string): Promise<Size> {
  try {
    const m = await sharp(path).metadata();
    return [m.autoOrient.height, m.autoOrient.width];
  } catch (err) {
    throw inputError(`${path}: cannot read the image header for the COCO file (${(err as Error).message}); check the file`, err);
  }
}

/** The COCO file's info.description for `sam auto --coco` and `sam queue collect` (the same file for the same images). */
export const AUTO_COCO_DESCRIPTION = 'automatic masks from sam auto (Segment Anything)';

/**
 * Build the COCO dataset from the per-image outputs on disk, in input order, so a resumed run
 * gives a complete file. Images without a complete output (failed ones) are left out. `items`
 * may be streamed (a queue's images, a page at a time).
 */
export async function writeAutoCoco(
  setup: Pick<AutoSetup, 'outDir' | 'outputMode'>,
  items: Iterable<InputImage> | AsyncIterable<InputImage>,
  cocoFile: string,
  info: Readonly<Record<string, string | number>>,
): Promise<{ images: number; annotations: number }> {
  let imageId = 0;
  let annId = 0;
  async function* entries(): AsyncGenerator<CocoImageEntry> {
    for await (const item of items) {
      if (!(await isOutputComplete(setup.outDir, item.key, setup.outputMode, true))) continue;
      const records = await readCocoRecords(setup.outDir, item.key, setup.outputMode);
      const [height, width] = records.length > 0 ? records[0].segmentation.size : await headerSize(item.path);
      const id = ++imageId;
      yield {
        image: { id, file_name: item.key + extname(item.path), width, height },
        annotations: records.map((r) => annotationOfRecord(r, ++annId, id)),
      };
    }
  }
  return writeCocoDataset(cocoFile, entries(), { info, categories: [COCO_CATEGORY] });
}
