/**
 * Test feeds of a prompt decoder graph (SAM's official export and SAM 2's samexporter signature
 * share them): B prompts of equal N points → point_coords [B,N,2], point_labels [B,N],
 * mask_input [B,1,256,256] (zeros without one), has_mask_input [B].
 */
import * as ort from 'onnxruntime-node';
import { expect } from 'vitest';
import { SamError } from '../../src/util/errors.js';

const LOW = 256 * 256;

export interface DecoderPrompt {
  coords: Float32Array;
  labels: Float32Array;
  maskInput?: Float32Array;
}

export function promptFeeds(prompts: readonly DecoderPrompt[]): Record<string, ort.Tensor> {
  const b = prompts.length;
  const n = prompts[0].labels.length;
  const coords = new Float32Array(b * n * 2);
  const labels = new Float32Array(b * n);
  const mask = new Float32Array(b * LOW);
  const has = new Float32Array(b);
  prompts.forEach((p, i) => {
    expect(p.labels.length).toBe(n);
    coords.set(p.coords, i * n * 2);
    labels.set(p.labels, i * n);
    if (p.maskInput) {
      mask.set(p.maskInput, i * LOW);
      has[i] = 1;
    }
  });
  return {
    point_coords: new ort.Tensor('float32', coords, [b, n, 2]),
    point_labels: new ort.Tensor('float32', labels, [b, n]),
    mask_input: new ort.Tensor('float32', mask, [b, 1, 256, 256]),
    has_mask_input: new ort.Tensor('float32', has, [b]),
  };
}

/** The SamError `fn` throws (fails the test if it throws something else or nothing). */
export function thrown(fn: () => unknown): SamError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(SamError);
    return e as SamError;
  }
  throw new Error('expected a SamError');
}
