/**
 * What the ViT (SAM 1) and Hiera (SAM 2) image-encoder builders share: checked state-dict access
 * (initializers named by their state-dict keys) and the small graph helpers on 2-D token tensors.
 */
import { modelError } from '../util/errors.js';
import type { CheckpointTensor, StateDict } from './checkpoint.js';
import { attr, type GraphBuilder, type TensorRef } from './onnx-builder.js';

/** LayerNorm epsilon of both: nn.LayerNorm(eps=1e-6) in every Hiera block, ViT's norm_layer and its neck's LayerNorm2d. */
const LN_EPS = 1e-6;

/** How a builder names itself in errors: "needed by <neededBy>", "expected [..] for <shapeFor>". */
export interface EncoderNames {
  neededBy: string;
  shapeFor: string;
  /** Appended to the missing-tensor error. */
  missingHint?: string;
}

export class EncoderGraph {
  private readonly shapes = new Map<string, TensorRef>();

  constructor(
    protected readonly g: GraphBuilder,
    protected readonly sd: StateDict,
    /** Prepended to every key (the ViT of a SAM checkpoint lives under `image_encoder.`). */
    protected readonly prefix: string,
    private readonly names: EncoderNames,
  ) {}

  /** The tensor `prefix + key`, checked to exist, have `shape` and be floating point. */
  tensor(key: string, shape: readonly number[]): CheckpointTensor & { data: Float32Array } {
    const full = this.prefix + key;
    const t = this.sd.get(full);
    if (!t) throw modelError(`checkpoint has no tensor ${full} (needed by ${this.names.neededBy})${this.names.missingHint ?? ''}`);
    if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
      throw modelError(`checkpoint tensor ${full} has shape [${t.shape.join(',')}], expected [${shape.join(',')}] for ${this.names.shapeFor}`);
    }
    if (!(t.data instanceof Float32Array)) throw modelError(`checkpoint tensor ${full} is ${t.dtype}, expected a floating-point tensor`);
    return t as CheckpointTensor & { data: Float32Array };
  }

  /** A state-dict tensor as an initializer named by its key, optionally with other (same-size) dims. */
  weight(key: string, shape: readonly number[], dims: readonly number[] = shape): TensorRef {
    return this.g.initializer(this.prefix + key, this.tensor(key, shape).data, dims);
  }

  /** An int64 shape constant, one per distinct shape. */
  protected shape(dims: readonly number[]): TensorRef {
    const key = dims.join(',');
    let ref = this.shapes.get(key);
    if (ref === undefined) {
      ref = this.g.constInt64(dims, [dims.length], 'shape');
      this.shapes.set(key, ref);
    }
    return ref;
  }

  protected reshape(x: TensorRef, dims: readonly number[]): TensorRef {
    return this.g.op('Reshape', [x, this.shape(dims)]);
  }

  protected transpose(x: TensorRef, perm: readonly number[]): TensorRef {
    return this.g.op('Transpose', [x], { perm });
  }

  /** nn.Linear on 2-D tokens: x [T, in] · weightᵀ + bias. */
  protected linear(x: TensorRef, weight: TensorRef, bias?: TensorRef): TensorRef {
    return this.g.op('Gemm', bias === undefined ? [x, weight] : [x, weight, bias], { transB: 1 });
  }

  /** nn.LayerNorm over the last axis (eps 1e-6). */
  protected layerNorm(x: TensorRef, key: string, C: number): TensorRef {
    return this.g.op('LayerNormalization', [x, this.weight(`${key}.weight`, [C]), this.weight(`${key}.bias`, [C])], {
      axis: -1,
      epsilon: attr.float(LN_EPS),
    });
  }
}
