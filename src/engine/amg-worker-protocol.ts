/**
 * Messages between `sam auto`'s main thread and the engine worker (amg-worker.ts). Plain data
 * only (structured clone); large arrays travel as transferred buffers.
 */
import type { PointPrediction, MaskFilter } from '../amg/predictor.js';
import type { BoxXyxy, Size } from '../core/types.js';
import type { Stage } from '../core/timings.js';
import type { RgbImage } from '../io/image.js';
import type { PlainError } from '../util/errors.js';
import type { DecoderChoice } from './model.js';
import type { ImageState } from './predictor.js';

export interface WorkerInit {
  modelDir: string;
  threads?: number;
  decoder: DecoderChoice;
  /** Load the encoder at start (else on the first image that needs it). */
  encoder: boolean;
}

export type WorkerRequest =
  | { id: number; op: 'image'; image: number; rgb: RgbImage; fullImage?: ImageState; needEncoder: boolean }
  | { id: number; op: 'setCrop'; image: number; cropBox: BoxXyxy }
  | { id: number; op: 'predict'; image: number; points: Float32Array; masks?: MaskFilter }
  | { id: number; op: 'release'; image: number }
  | { id: number; op: 'close'; image: 0 };

export type WorkerResult = { cropSize: Size; inputSize: Size } | PointPrediction | null;

export type WorkerError = PlainError;

export type WorkerResponse =
  | { id: number; ok: true; result: WorkerResult; times: Partial<Record<Stage, number>> }
  | { id: number; ok: false; error: WorkerError };

/** The worker's first message: its sessions are loaded (or why not). */
export type WorkerReady = { ready: true } | { ready: false; error: WorkerError };
