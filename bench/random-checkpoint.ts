/**
 * Random-weight SAM checkpoints of the real sizes (vit_b, vit_l, vit_h), for the encoder bench:
 * no official weights can be downloaded here, and the encoder's cost and memory depend only on
 * the shapes. The prompt encoder and mask decoder (the same in every SAM type) are copied from
 * ../shared/golden/convert/vit_t-random.pth; the image encoder's tensors are drawn from a seeded
 * generator with the shapes of segment_anything's ImageEncoderViT, LayerNorms at weight 1 bias 0.
 * Written as .safetensors (the converter reads it like a .pth).
 */
import { open, rename } from 'node:fs/promises';
import { loadStateDict } from '../src/convert/checkpoint.js';
import { VIT_CONFIGS } from '../src/convert/configs.js';

type VitType = keyof typeof VIT_CONFIGS;

interface Entry {
  name: string;
  shape: number[];
  fill: (out: Float32Array) => void;
}

/** xorshift32 → approximately N(0, std) by the sum of 4 uniforms (shape, not statistics, matters). */
function gaussianFill(seed: number, std: number): (out: Float32Array) => void {
  return (out) => {
    let s = seed >>> 0 || 1;
    const next = (): number => {
      s ^= s << 13;
      s ^= s >>> 17;
      s ^= s << 5;
      return (s >>> 0) / 4294967296;
    };
    const k = std * Math.sqrt(3); // var of (sum of 4 U(0,1)) - 2 is 1/3
    for (let i = 0; i < out.length; i++) out[i] = (next() + next() + next() + next() - 2) * k;
  };
}

const constFill = (v: number) => (out: Float32Array): void => void out.fill(v);

function encoderEntries(type: VitType): Entry[] {
  const cfg = VIT_CONFIGS[type];
  const C = cfg.embedDim;
  const N = cfg.imgSize / cfg.patchSize;
  const hd = C / cfg.numHeads;
  const H = C * cfg.mlpRatio;
  const p = 'image_encoder.';
  let seed = 1;
  const rnd = (name: string, shape: number[], std = 0.02): Entry => ({ name: p + name, shape, fill: gaussianFill(seed++ * 2654435761, std) });
  const ln = (name: string, dim: number): Entry[] => [
    { name: `${p}${name}.weight`, shape: [dim], fill: constFill(1) },
    { name: `${p}${name}.bias`, shape: [dim], fill: constFill(0) },
  ];
  const e: Entry[] = [rnd('patch_embed.proj.weight', [C, 3, cfg.patchSize, cfg.patchSize]), rnd('patch_embed.proj.bias', [C]), rnd('pos_embed', [1, N, N, C])];
  for (let i = 0; i < cfg.depth; i++) {
    const b = `blocks.${i}`;
    const S = cfg.globalAttnIndexes.includes(i) ? N : cfg.windowSize;
    e.push(...ln(`${b}.norm1`, C));
    e.push(rnd(`${b}.attn.qkv.weight`, [3 * C, C]), rnd(`${b}.attn.qkv.bias`, [3 * C]));
    e.push(rnd(`${b}.attn.proj.weight`, [C, C]), rnd(`${b}.attn.proj.bias`, [C]));
    e.push(rnd(`${b}.attn.rel_pos_h`, [2 * S - 1, hd]), rnd(`${b}.attn.rel_pos_w`, [2 * S - 1, hd]));
    e.push(...ln(`${b}.norm2`, C));
    e.push(rnd(`${b}.mlp.lin1.weight`, [H, C]), rnd(`${b}.mlp.lin1.bias`, [H]));
    e.push(rnd(`${b}.mlp.lin2.weight`, [C, H]), rnd(`${b}.mlp.lin2.bias`, [C]));
  }
  const O = cfg.outChans;
  e.push(rnd('neck.0.weight', [O, C, 1, 1]), ...ln('neck.1', O), rnd('neck.2.weight', [O, O, 3, 3]), ...ln('neck.3', O));
  return e;
}

/**
 * Writes `out` (a .safetensors file): a random `type` image encoder plus the prompt encoder and
 * mask decoder of `decoderSource` (a SAM or MobileSAM checkpoint). Tensors are generated and
 * written one at a time, so memory stays at the largest tensor.
 */
export async function writeRandomCheckpoint(type: VitType, decoderSource: string, out: string): Promise<void> {
  const sd = await loadStateDict(decoderSource);
  const entries = encoderEntries(type);
  for (const [name, t] of sd) {
    if (name.startsWith('image_encoder.')) continue;
    if (!(t.data instanceof Float32Array)) continue;
    const data = t.data;
    entries.push({ name, shape: t.shape, fill: (o) => o.set(data) });
  }
  const header: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }> = {};
  let offset = 0;
  for (const e of entries) {
    const bytes = e.shape.reduce((a, b) => a * b, 1) * 4;
    header[e.name] = { dtype: 'F32', shape: e.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8); // data starts 8-aligned
  const tmp = `${out}.tmp-${process.pid}`;
  const fh = await open(tmp, 'w');
  try {
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(json.length));
    await fh.write(len);
    await fh.write(Buffer.from(json, 'utf8'));
    for (const e of entries) {
      const data = new Float32Array(e.shape.reduce((a, b) => a * b, 1));
      e.fill(data);
      await fh.write(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    }
  } finally {
    await fh.close();
  }
  await rename(tmp, out);
}
