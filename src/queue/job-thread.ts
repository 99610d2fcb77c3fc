/**
 * Worker-thread entry of `sam worker`: owns the model (and, pipelined, its engine thread; a SAM 2
 * model runs here, as in `sam auto`) and runs pipeline/auto.ts's autoImage per job, so a queue's
 * outputs are byte for byte those of `sam auto`. The CPU-heavy generator runs here, never on the
 * thread that renews BullMQ's job locks: a blocked main thread would let locks expire and jobs be
 * taken twice (stalled jobs).
 */
import { basename, dirname } from 'node:path';
import { parentPort, workerData } from 'node:worker_threads';
import { AmgWorker } from '../engine/amg-worker-client.js';
import { SamModel } from '../engine/model.js';
import { sam2AmgDecoder } from '../engine/sam2-amg-predictor.js';
import { outputPathFor } from '../output/records.js';
import { autoImage, autoSetup, type AutoSetup } from '../pipeline/auto.js';
import { removeStaleTemps } from '../util/atomic.js';
import { toPlainError, usageError } from '../util/errors.js';
import type { ImageRequest, ImageResponse, JobThreadInit, ThreadReady } from './job-protocol.js';
import { loadAmgOptions } from './settings.js';

const port = parentPort;
if (!port) throw new Error('job-thread.ts runs as a worker thread');
const init = workerData as JobThreadInit;


async function start(): Promise<{ setup: AutoSetup; engine?: AmgWorker }> {
  const s = init.settings;
  const amg = loadAmgOptions(s.amg);
  const model = await SamModel.open(init.modelDir, { threads: init.threads });
  const loadEncoder = !s.embeddingsDir || amg.cropNLayers > 0;
  let engine: AmgWorker | undefined;
  if (model.family === 'sam2') {
    // As sam auto: SAM 2 runs in this thread (pipeline/auto.ts; the engine thread drives SAM v1 decoders only).
    if (init.decoder !== 'auto') {
      throw usageError(`--decoder ${init.decoder} applies to SAM (v1) models only: SAM 2's generator always takes the folder's split decoder when it has one, else its multimask graph; drop --decoder`);
    }
    await sam2AmgDecoder(model, amg.multimaskOutput !== false);
    if (amg.useM2m) await model.sam2Decoder(false);
    if (loadEncoder) await model.encoder();
  } else if (init.pipeline) {
    engine = await AmgWorker.start({ modelDir: model.dir, threads: init.threads, decoder: init.decoder, encoder: loadEncoder });
  } else {
    await model.amgDecoder(init.decoder);
    if (loadEncoder) await model.encoder();
  }
  const setup = autoSetup({
    model,
    amg,
    outDir: init.outDir,
    outputMode: s.outputMode,
    overlayDir: s.overlayDir ?? undefined,
    embeddingsDir: s.embeddingsDir ?? undefined,
    // png mode keeps rle.json, so `sam queue collect --coco` works in every mode.
    coco: true,
    force: false,
    decoder: init.decoder,
    engine,
  });
  return { setup, engine };
}

/**
 * Temps of this image's output left by a killed worker on this machine. Only this key's: other
 * machines may be writing other images into the same folder right now.
 */
async function removeImageTemps(setup: AutoSetup, key: string): Promise<void> {
  const out = outputPathFor(setup.outDir, key, setup.outputMode);
  await removeStaleTemps(dirname(out), { recursive: false, prefix: `.${basename(out)}.` });
}

async function main(): Promise<void> {
  let ctx: { setup: AutoSetup; engine?: AmgWorker };
  try {
    ctx = await start();
  } catch (err) {
    port!.postMessage({ ready: false, error: toPlainError(err) } satisfies ThreadReady);
    return;
  }
  port!.on('message', (req: ImageRequest | 'close') => {
    if (req === 'close') {
      void (ctx.engine?.close() ?? Promise.resolve()).finally(() => port!.close());
      return;
    }
    void (async () => {
      const started = performance.now();
      let msg: ImageResponse;
      try {
        // Only a redelivered job can have a dead writer's temps: a first take skips the folder scan.
        if (req.redelivered) await removeImageTemps(ctx.setup, req.key);
        const r = await autoImage(ctx.setup, { key: req.key, path: req.path });
        msg = { id: req.id, ok: true, outcome: { status: r.status, masks: r.masks, ms: performance.now() - started } };
      } catch (err) {
        msg = { id: req.id, ok: false, error: toPlainError(err) };
      }
      port!.postMessage(msg);
    })();
  });
  port!.postMessage({ ready: true } satisfies ThreadReady);
}

void main();
