/** The main-thread side of job-thread.ts: one request per image, answered when its outputs are written. */
import { Worker } from 'node:worker_threads';
import { fromPlainError } from '../util/errors.js';
import type { ImageOutcome, ImageResponse, JobThreadInit, ThreadReady } from './job-protocol.js';


export class JobThread {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (o: ImageOutcome) => void; reject: (e: Error) => void }>();
  /** Set when the thread died: every later request fails with it. */
  failure?: Error;
  private closing = false;

  private constructor(
    private readonly worker: Worker,
    onDeath: (err: Error) => void,
  ) {
    worker.on('message', (msg: ImageResponse) => {
      const p = this.pending.get(msg.id);
      if (!p) return;
      this.pending.delete(msg.id);
      if (msg.ok) p.resolve(msg.outcome);
      else p.reject(fromPlainError(msg.error));
    });
    const fail = (err: Error): void => {
      if (this.failure) return;
      this.failure = err;
      for (const p of this.pending.values()) p.reject(err);
      this.pending.clear();
      onDeath(err);
    };
    worker.on('error', fail);
    worker.on('exit', (code) => {
      if (!this.closing) fail(new Error(`internal: the job thread stopped (exit code ${code})`));
    });
  }

  /** Start the thread and load the model there; fails as `sam auto` would on a bad model. */
  static async start(init: JobThreadInit, onDeath: (err: Error) => void): Promise<JobThread> {
    const worker = new Worker(new URL('./job-thread.js', import.meta.url), { workerData: init });
    const ready = await new Promise<ThreadReady>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    if (!ready.ready) {
      await worker.terminate();
      throw fromPlainError(ready.error);
    }
    return new JobThread(worker, onDeath);
  }

  run(key: string, path: string, redelivered: boolean): Promise<ImageOutcome> {
    if (this.failure) return Promise.reject(this.failure);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ id, key, path, redelivered });
    });
  }

  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    if (this.failure) return;
    const exited = new Promise<void>((resolve) => this.worker.once('exit', () => resolve()));
    this.worker.postMessage('close');
    // The engine thread closes first; give it a moment, then stop the thread regardless.
    const timer = setTimeout(() => void this.worker.terminate(), 5000);
    await exited;
    clearTimeout(timer);
  }
}
