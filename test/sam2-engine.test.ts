/**
 * SAM 2 end to end: `sam models convert` on the golden random sam2.1_hiera_tiny checkpoint, then
 * the engine against the official outputs (../shared/golden/sam2): the decoder cases through
 * Sam2Predictor on the official features, and embed / segment (point, box, mask input) through
 * the CLI on dog.jpg; embeddings and checkpoints never cross families. `sam segment --prompts`
 * on SAM 2 is in test/sam2-prompts.test.ts, `sam queue` / `sam worker` in test/sam2-queue.test.ts.
 */
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeRle } from '../src/core/rle.js';
import type { CocoRle } from '../src/core/types.js';
import { SamModel } from '../src/engine/model.js';
import { Sam2Predictor, fillSam2Mask, sam2PromptArrays } from '../src/engine/sam2-predictor.js';
import { createSam2Upscaler } from '../src/core/upscale.js';
import type { Prompt } from '../src/engine/predictor.js';
import { readEmbeddingFile } from '../src/io/embedding-file.js';
import { decodeNpyFloat32 } from '../src/io/npy.js';
import { fixtureModel, maskIou, runSam, tempDir } from './helpers/cli.js';
import { absErrors, sharedDir } from './helpers/golden.js';
import { readBinaryPng } from './helpers/scenes.js';

const tmp = tempDir('sam-sam2-engine-');
afterAll(() => tmp.cleanup());
const modelDir = path.join(tmp.dir, 'sam2.1_hiera_tiny');
const imagesDir = path.join(tmp.dir, 'images');
const dog = path.join(imagesDir, 'dog.jpg');
const sam2Dir = (): string => path.join(sharedDir(), 'golden', 'sam2');
const checkpoint = (): string => path.join(sam2Dir(), 'sam2.1_hiera_tiny-random-fp16.pt');
const golden = (name: string): Float32Array => decodeNpyFloat32(new Uint8Array(readFileSync(path.join(sam2Dir(), name))))!.data;
const out = (name: string): string => path.join(tmp.dir, name);

interface GoldenCase {
  prompt_original_pixels: { box?: [number, number, number, number]; point_coords?: [number, number][]; point_labels?: number[] };
  multimask_output: boolean;
  point_coords_1024: number[][][];
}
const CASES = ['point', 'two_points', 'box', 'box_point', 'point_mask_input'] as const;
const cases = (): Record<string, GoldenCase> => (JSON.parse(readFileSync(path.join(sam2Dir(), 'index.json'), 'utf8')) as { cases: Record<string, GoldenCase> }).cases;

function promptOf(c: GoldenCase, name: string): Prompt {
  const p = c.prompt_original_pixels;
  const points = (p.point_coords ?? []).map(([x, y], i) => ({ x, y, label: (p.point_labels?.[i] ?? 1) as 0 | 1 }));
  const maskInput = name === 'point_mask_input' ? golden('cases/point.low_res_masks.npy').subarray(65536, 2 * 65536) : undefined;
  return { points: points.length > 0 ? points : undefined, box: p.box, maskInput };
}

beforeAll(async () => {
  const r = await runSam(['models', 'convert', checkpoint(), '--out', modelDir, '-q']);
  expect(r.code, r.stderr).toBe(0);
  mkdirSync(imagesDir, { recursive: true });
  copyFileSync(path.join(sharedDir(), 'images', 'dog.jpg'), dog);
}, 300_000);

describe('SAM 2.1 tiny converted by sam models convert', () => {
  it('writes encoder, multimask and single-mask decoders, and a manifest of family sam2 (type detected)', () => {
    const m = JSON.parse(readFileSync(path.join(modelDir, 'manifest.json'), 'utf8')) as Record<string, unknown>;
    expect(m).toMatchObject({
      family: 'sam2',
      type: 'sam2.1_hiera_tiny',
      encoder: 'encoder.onnx',
      decoder: 'decoder.onnx',
      singleMaskDecoder: 'decoder_single.onnx',
      sam2SplitDecoder: { image: 'decoder_image.onnx', prompt: 'decoder_prompt.onnx', masks: 'decoder_masks.onnx', promptSingle: 'decoder_prompt_single.onnx' },
    });
    expect(Object.keys(m.files as object).sort()).toEqual([
      'decoder.onnx',
      'decoder_image.onnx',
      'decoder_masks.onnx',
      'decoder_prompt.onnx',
      'decoder_prompt_single.onnx',
      'decoder_single.onnx',
      'encoder.onnx',
    ]);
  });

  it('sam models verify checks its files and runs test prompts through both decoders', async () => {
    const r = await runSam(['models', 'verify', modelDir]);
    expect(r.code, r.stderr + r.stdout).toBe(0);
    expect(r.stdout).toMatch(/ok\s+encoder: image → image_embed, high_res_feats_0, high_res_feats_1/);
    expect(r.stdout).toMatch(/ok\s+decoder \(multimask\): 2 prompts per call, 3 mask\(s\) per prompt/);
    expect(r.stdout).toMatch(/ok\s+single-mask decoder: 2 prompts per call, 1 mask\(s\) per prompt/);
  });

  it('every decoder case on the official features: low-res masks and IoU within 1e-4', async () => {
    const model = await SamModel.open(modelDir);
    const state = {
      embeddings: golden('image_embed.npy'),
      highResFeats: [golden('high_res_feats_0.npy'), golden('high_res_feats_1.npy')] as const,
      originalSize: [534, 800] as [number, number],
      inputSize: [1024, 1024] as [number, number],
    };
    const all = cases();
    for (const name of CASES) {
      const c = all[name];
      const prompt = promptOf(c, name);
      // The 1024-frame points exactly as the official predictor passed them (box corners first).
      expect(Array.from(sam2PromptArrays(prompt, state.originalSize).coords), name).toEqual(c.point_coords_1024[0].flat().map(Math.fround));
      const pred = await new Sam2Predictor(await model.sam2Decoder(c.multimask_output), state).predict(prompt);
      const low = absErrors(pred.lowResMasks.map((v) => Math.max(-32, Math.min(32, v))), golden(`cases/${name}.low_res_masks.npy`));
      const iou = absErrors(pred.iouPredictions, golden(`cases/${name}.iou_predictions.npy`));
      console.log(`SAM 2 ${name}: low-res max ${low.max.toExponential(2)}, iou max ${iou.max.toExponential(2)}`);
      expect(pred.count, name).toBe(c.multimask_output ? 3 : 1);
      expect(low.max, name).toBeLessThanOrEqual(1e-4);
      expect(iou.max, name).toBeLessThanOrEqual(1e-4);
      if (name === 'point') {
        // Upscaled straight to 534x800: the official return_logits masks.
        const up = absErrors(pred.masks, golden('cases/point.mask_logits.npy'));
        expect(up.max).toBeLessThanOrEqual(1e-4);
      }
    }
  });

  it('sam embed stores the three features, matching the official ones', async () => {
    const emb = out('emb');
    const r = await runSam(['embed', imagesDir, '--model', modelDir, '--out', emb, '-q']);
    expect(r.code, r.stderr).toBe(0);
    const rec = await readEmbeddingFile(path.join(emb, 'dog.safetensors'));
    expect(rec.family).toBe('sam2');
    expect(rec.originalSize).toEqual([534, 800]);
    expect(rec.inputSize).toEqual([1024, 1024]);
    const errs = [
      absErrors(rec.embeddings, golden('image_embed.npy')),
      absErrors(rec.highResFeats![0], golden('high_res_feats_0.npy')),
      absErrors(rec.highResFeats![1], golden('high_res_feats_1.npy')),
    ];
    console.log(`sam embed (SAM 2) vs official: ${errs.map((e) => `max ${e.max.toExponential(2)}`).join(', ')}`);
    for (const e of errs) expect(e.max).toBeLessThanOrEqual(1e-4);
  });

  it('sam segment: point (3 masks), box, mask input from --low-res-out, and --embedding; outputs of the photo size', async () => {
    const point = out('point.json');
    const r = await runSam(['segment', dog, '--model', modelDir, '--points', '320,300', '--out', point, '--low-res-out', out('low.npy')]);
    expect(r.code, r.stderr).toBe(0);
    const doc = JSON.parse(readFileSync(point, 'utf8')) as { size: number[]; best: number; masks: { segmentation: CocoRle; predicted_iou: number }[] };
    expect(doc.size).toEqual([534, 800]);
    expect(doc.masks).toHaveLength(3);
    const ref = golden('cases/point.mask_logits.npy');
    const refIou = golden('cases/point.iou_predictions.npy');
    doc.masks.forEach((m, k) => {
      const want = Uint8Array.from(ref.subarray(k * 534 * 800, (k + 1) * 534 * 800), (v) => (v > 0 ? 1 : 0));
      // Our features differ from the official ones by ~3e-6: noise-mask pixels near 0 may flip.
      expect(maskIou(decodeRle(m.segmentation).data, want), `mask ${k}`).toBeGreaterThanOrEqual(0.99);
      expect(Math.abs(m.predicted_iou - refIou[k])).toBeLessThanOrEqual(1e-4);
    });
    const box = out('box.png');
    expect((await runSam(['segment', dog, '--model', modelDir, '--box', '10,215,430,530', '--out', box])).code).toBe(0);
    const boxMask = await readBinaryPng(box);
    expect([boxMask.width, boxMask.height]).toEqual([800, 534]);
    const refine = out('refine.json');
    const m = await runSam(['segment', dog, '--model', modelDir, '--points', '320,300', '--mask-input', out('low.npy'), '--out', refine]);
    expect(m.code, m.stderr).toBe(0);
    const refined = JSON.parse(readFileSync(refine, 'utf8')) as { masks: { predicted_iou: number }[] };
    expect(refined.masks).toHaveLength(1);
    expect(Math.abs(refined.masks[0].predicted_iou - golden('cases/point_mask_input.iou_predictions.npy')[0])).toBeLessThanOrEqual(1e-4);
    const viaEmb = out('emb-point.json');
    const e = await runSam(['segment', dog, '--model', modelDir, '--embedding', path.join(out('emb'), 'dog.safetensors'), '--points', '320,300', '--out', viaEmb]);
    expect(e.code, e.stderr).toBe(0);
    expect(readFileSync(viaEmb, 'utf8').replace(/"image":"[^"]*",/, '')).toBe(readFileSync(point, 'utf8').replace(/"image":"[^"]*",/, ''));
  });

  it('sam segment --max-hole-area / --max-sprinkle-area: SAM2ImagePredictor\'s filling of the low-res logits, before upscaling; refused on SAM (v1)', async () => {
    const plain = out('fill-plain.json');
    const low = out('fill-low.npy');
    const filled = out('fill.json');
    expect((await runSam(['segment', dog, '--model', modelDir, '--box', '10,215,430,530', '--out', plain, '--low-res-out', low])).code).toBe(0);
    const r = await runSam(['segment', dog, '--model', modelDir, '--box', '10,215,430,530', '--out', filled, '--max-hole-area', '30', '--max-sprinkle-area', '30']);
    expect(r.code, r.stderr).toBe(0);
    type Doc = { masks: { segmentation: CocoRle; predicted_iou: number; area: number }[] };
    const [a, b] = [JSON.parse(readFileSync(plain, 'utf8')) as Doc, JSON.parse(readFileSync(filled, 'utf8')) as Doc];
    expect(b.masks).toHaveLength(1);
    expect(b.masks[0].predicted_iou).toBe(a.masks[0].predicted_iou);
    // The unfilled logits (--low-res-out), filled and upscaled straight to 534x800, thresholded at 0.
    const logits = new Float32Array(534 * 800);
    createSam2Upscaler([534, 800])(fillSam2Mask(decodeNpyFloat32(new Uint8Array(readFileSync(low)))!.data, { maxHoleArea: 30, maxSprinkleArea: 30 }), logits);
    const want = Uint8Array.from(logits, (v) => (v > 0 ? 1 : 0));
    expect(Buffer.from(decodeRle(b.masks[0].segmentation).data).equals(Buffer.from(want))).toBe(true);
    // Noise masks: filling changes them (fewer runs).
    expect(b.masks[0].segmentation.counts.length).toBeLessThan(a.masks[0].segmentation.counts.length);
    // The same filling through --prompts (plain graphs: bit for bit).
    const jl = out('fill.jsonl');
    writeFileSync(jl, '{"image": "dog.jpg", "box": [10, 215, 430, 530]}\n');
    const p = await runSam(['segment', imagesDir, '--prompts', jl, '--model', modelDir, '--out', out('fill-prompts'), '--decoder', 'batched', '--max-hole-area', '30', '--max-sprinkle-area', '30', '-q']);
    expect(p.code, p.stderr).toBe(0);
    const ann = (JSON.parse(readFileSync(path.join(out('fill-prompts'), 'dog.json'), 'utf8')) as { segmentation: CocoRle }[])[0];
    expect(ann.segmentation).toEqual(b.masks[0].segmentation);
    const v1 = await runSam(['segment', dog, '--model', fixtureModel(), '--points', '320,300', '--out', out('fill-v1.json'), '--max-hole-area', '5']);
    expect(v1.code).toBe(2);
    expect(v1.stderr.trim()).toMatch(/^sam: error: --max-hole-area applies to SAM 2 models only \(an option of SAM2ImagePredictor\); .* is a SAM \(v1\) model: drop --max-hole-area/);
  });

  it('embeddings never cross families: a SAM 2 embedding on a SAM model, a SAM embedding on SAM 2 (exit 4)', async () => {
    const a = await runSam(['segment', dog, '--model', fixtureModel(), '--embedding', path.join(out('emb'), 'dog.safetensors'), '--points', '320,300', '--out', out('x.png')]);
    expect(a.code).toBe(4);
    expect(a.stderr).toMatch(/made by a SAM 2 model .* this --model is a SAM \(v1 \/ MobileSAM\) model .*rerun 'sam embed' with this --model/);
    const v1emb = out('emb-v1');
    expect((await runSam(['embed', dog, '--model', fixtureModel(), '--out', v1emb, '-q'])).code).toBe(0);
    const b = await runSam(['segment', dog, '--model', modelDir, '--embedding', path.join(v1emb, 'dog.safetensors'), '--points', '320,300', '--out', out('y.png')]);
    expect(b.code).toBe(4);
    expect(b.stderr).toMatch(/made by a SAM \(v1 \/ MobileSAM\) model .* this --model is a SAM 2 model/);
  });

  it('a wrong --type or a truncated checkpoint: one line naming the fix, nothing written (exit 3)', async () => {
    for (const [type, msg] of [
      ['vit_b', /is a SAM 2 checkpoint \(sam2\.1_hiera_tiny\), not vit_b; pass --type sam2\.1_hiera_tiny or drop --type/],
      ['sam2.1_hiera_small', /sam2\.1_hiera_tiny.*not sam2\.1_hiera_small.*--type sam2\.1_hiera_tiny/],
    ] as const) {
      const dir = out(`wrong-${type}`);
      const r = await runSam(['models', 'convert', checkpoint(), '--type', type, '--out', dir, '-q']);
      expect(r.code, r.stderr).toBe(3);
      expect(r.stderr).toMatch(msg);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(() => readFileSync(path.join(dir, 'manifest.json'))).toThrow();
    }
    const cut = out('cut.pt');
    const bytes = readFileSync(checkpoint());
    writeFileSync(cut, bytes.subarray(0, bytes.length >> 1));
    const t = await runSam(['models', 'convert', cut, '--out', out('cut-model'), '-q']);
    expect(t.code).not.toBe(0);
    expect(t.stderr.trim().split('\n')).toHaveLength(1);
    expect(() => readFileSync(path.join(out('cut-model'), 'manifest.json'))).toThrow();
  });
});
