/**
 * Worker-thread entry of the engine for `sam auto` (see AmgWorker in amg-worker-client.ts): it
 * owns the model's encoder and decoder sessions and answers the generator's setCrop/predictPoints
 * for each image with an OnnxAmgPredictor, while the main thread post-processes the previous
 * batch. onnxruntime-node runs inference synchronously on the calling thread, so without this
 * thread decoding and post-processing could only take turns.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { STAGES, StageTimes, type Stage } from '../core/timings.js';
import { toPlainError } from '../util/errors.js';
import { OnnxAmgPredictor } from './amg-predictor.js';
import type { WorkerInit, WorkerReady, WorkerRequest, WorkerResponse, WorkerResult } from './amg-worker-protocol.js';
import { SamModel } from './model.js';

const port = parentPort;
if (!port) throw new Error('amg-worker.ts runs as a worker thread');


const init = workerData as WorkerInit;

async function start(): Promise<void> {
  const model = await SamModel.open(init.modelDir, { threads: init.threads });
  // Settle both before reporting: a worker must not be stopped while ORT is creating a session.
  const [decoderP, encoderP] = await Promise.allSettled([model.amgDecoder(init.decoder), init.encoder ? model.encoder() : undefined]);
  if (decoderP.status === 'rejected') throw decoderP.reason;
  if (encoderP.status === 'rejected') throw encoderP.reason;
  const decoder = decoderP.value;
  const predictors = new Map<number, { predictor: OnnxAmgPredictor; times: StageTimes }>();

  const handle = async (req: WorkerRequest): Promise<WorkerResult> => {
    if (req.op === 'image') {
      const times = new StageTimes();
      const encoder = req.needEncoder ? await model.encoder() : undefined;
      predictors.set(req.image, { predictor: new OnnxAmgPredictor(encoder, decoder, req.rgb, times, req.fullImage), times });
      return null;
    }
    if (req.op === 'release') {
      predictors.delete(req.image);
      return null;
    }
    if (req.op === 'close') return null;
    const p = predictors.get(req.image);
    if (!p) throw new Error(`internal: no image ${req.image} in the engine worker`);
    return req.op === 'setCrop' ? p.predictor.setCrop(req.cropBox) : p.predictor.predictPoints(req.points, req.masks);
  };

  /** The stage times an image's predictor spent since the last reply (then reset). */
  const drainTimes = (image: number): Partial<Record<Stage, number>> => {
    const t = predictors.get(image)?.times;
    const out: Partial<Record<Stage, number>> = {};
    if (!t) return out;
    for (const s of STAGES) {
      if (t.ms[s] > 0) out[s] = t.ms[s];
      t.ms[s] = 0;
    }
    return out;
  };

  // One request at a time, in arrival order: the generator's calls for a crop stay ordered.
  let queue = Promise.resolve();
  port!.on('message', (req: WorkerRequest) => {
    if (req.op === 'close') {
      // Let the event loop end: the thread exits once the queued requests are answered.
      void queue.then(() => port!.close());
      return;
    }
    queue = queue.then(async () => {
      let msg: WorkerResponse;
      const transfer: ArrayBuffer[] = [];
      try {
        const result = await handle(req);
        if (result && 'lowResLogits' in result) {
          for (const a of [result.lowResLogits, result.iouPredictions, result.maskRows]) if (a) transfer.push(a.buffer as ArrayBuffer);
        }
        msg = { id: req.id, ok: true, result, times: drainTimes(req.image) };
      } catch (err) {
        msg = { id: req.id, ok: false, error: toPlainError(err) };
      }
      port!.postMessage(msg, transfer);
    });
  });
  port!.postMessage({ ready: true } satisfies WorkerReady);
}

start().catch((err: unknown) => port.postMessage({ ready: false, error: toPlainError(err) } satisfies WorkerReady));
