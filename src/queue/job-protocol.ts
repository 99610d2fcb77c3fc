/**
 * Messages between `sam worker`'s main thread (BullMQ: Redis, locks, job states) and its job
 * thread (job-thread.ts: the model and `sam auto`'s per-image code). Plain data only.
 */
import type { DecoderChoice } from '../engine/model.js';
import type { PlainError } from '../util/errors.js';
import type { QueueSettings } from './settings.js';

export interface JobThreadInit {
  modelDir: string;
  threads: number;
  decoder: DecoderChoice;
  /** Run the model in the engine thread, overlapped with post-processing (sam auto's default). */
  pipeline: boolean;
  settings: QueueSettings;
  /** Where this machine writes the outputs (settings.outDir unless --out maps it). */
  outDir: string;
}

export interface ImageRequest {
  id: number;
  key: string;
  path: string;
  /** Taken before (a retry, or a stalled job whose worker died): its temps may be left over. */
  redelivered: boolean;
}

export interface ImageOutcome {
  status: 'done' | 'skipped';
  masks: number;
  /** Decode-to-write time of the image in this thread. */
  ms: number;
}

export type ThreadError = PlainError;

export type ImageResponse = { id: number; ok: true; outcome: ImageOutcome } | { id: number; ok: false; error: ThreadError };

export type ThreadReady = { ready: true } | { ready: false; error: ThreadError };
