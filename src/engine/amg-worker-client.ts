/**
 * The main-thread side of the engine worker (amg-worker.ts): `sam auto` runs the encoder and
 * decoder there and the generator's post-processing here, overlapped (the generator asks for a
 * batch before post-processing the last one).
 */
import { Worker } from 'node:worker_threads';
import type { AmgPredictor, MaskFilter, PointPrediction } from '../amg/predictor.js';
import type { StageTimes } from '../core/timings.js';
import type { BoxXyxy, Size } from '../core/types.js';
import type { RgbImage } from '../io/image.js';
import { fromPlainError } from '../util/errors.js';
import type { WorkerInit, WorkerReady, WorkerRequest, WorkerResponse, WorkerResult } from './amg-worker-protocol.js';
import type { ImageState } from './predictor.js';

type Pending = { resolve: (r: WorkerResult) => void; reject: (e: Error) => void; times?: StageTimes };
/** A request without its id (added by send). */
type Request = WorkerRequest extends infer R ? (R extends WorkerRequest ? Omit<R, 'id'> : never) : never;


export class AmgWorker {
  private nextId = 1;
  private nextImage = 1;
  private readonly pending = new Map<number, Pending>();
  private failure?: Error;
  private closing = false;

  private constructor(private readonly worker: Worker) {
    worker.on('message', (msg: WorkerResponse) => {
      const p = this.pending.get(msg.id);
      if (!p) return;
      this.pending.delete(msg.id);
      if (msg.ok) {
        if (p.times) for (const [stage, ms] of Object.entries(msg.times)) p.times.add(stage as keyof StageTimes['ms'], ms);
        p.resolve(msg.result);
      } else {
        p.reject(fromPlainError(msg.error));
      }
    });
    const fail = (err: Error): void => {
      this.failure ??= err;
      for (const p of this.pending.values()) p.reject(err);
      this.pending.clear();
    };
    worker.on('error', fail);
    worker.on('exit', (code) => {
      if (!this.closing || this.pending.size > 0) fail(new Error(`internal: the engine worker stopped (exit code ${code})`));
    });
  }

  /** Start the worker and load the model's sessions there; fails as SamModel would. */
  static async start(init: WorkerInit): Promise<AmgWorker> {
    const worker = new Worker(new URL('./amg-worker.js', import.meta.url), { workerData: init });
    const ready = await new Promise<WorkerReady>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    if (!ready.ready) {
      // The worker's sessions have settled (amg-worker.ts): it can be stopped.
      await worker.terminate();
      throw fromPlainError(ready.error);
    }
    return new AmgWorker(worker);
  }

  private send(req: Request, times?: StageTimes): Promise<WorkerResult> {
    if (this.failure) return Promise.reject(this.failure);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, times });
      this.worker.postMessage({ ...req, id } as WorkerRequest);
    });
  }

  /**
   * A predictor for one image (its pixels are copied to the worker). Call release() when the
   * image is done, so the worker drops it.
   */
  async forImage(rgb: RgbImage, timings: StageTimes, fullImage: ImageState | undefined, needEncoder: boolean): Promise<AmgPredictor & { release(): Promise<void> }> {
    const image = this.nextImage++;
    await this.send({ op: 'image', image, rgb, fullImage, needEncoder }, timings);
    return {
      setCrop: async (cropBox: BoxXyxy) => (await this.send({ op: 'setCrop', image, cropBox }, timings)) as { cropSize: Size; inputSize: Size },
      predictPoints: async (points: Float32Array, masks?: MaskFilter) => (await this.send({ op: 'predict', image, points, masks }, timings)) as PointPrediction,
      release: async () => {
        await this.send({ op: 'release', image });
      },
    };
  }

  /** Ask the worker to finish (terminating a thread inside an ORT call aborts the process). */
  async close(): Promise<void> {
    this.closing = true;
    const exited = new Promise<void>((resolve) => this.worker.once('exit', () => resolve()));
    this.worker.postMessage({ id: 0, op: 'close', image: 0 } satisfies WorkerRequest);
    await exited;
  }
}
