/**
 * A samexporter-style SAM 2 folder (vietanhdev/samexporter export_sam2.py): `<name>.encoder.onnx`
 * with outputs image_embed, high_res_feats_0, high_res_feats_1 and `<name>.decoder.onnx` with the
 * image_embed / high_res_feats_* / point_coords / point_labels / mask_input / has_mask_input
 * signature (multimask only), no manifest.json. It is built here from the graphs `sam models
 * convert` writes for the golden random sam2.1_hiera_tiny (they carry that signature) and must be
 * detected as SAM 2 and give the converted folder's results; what needs the single-mask graph it
 * lacks either says how it answers (segment) or is refused (auto --use-m2m).
 */
import { copyFileSync, mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SamModel } from '../src/engine/model.js';
import { decodeRle } from '../src/core/rle.js';
import type { CocoRle, MaskRecord } from '../src/core/types.js';
import { maskIou, runSam, tempDir } from './helpers/cli.js';
import { sharedDir } from './helpers/golden.js';

const tmp = tempDir('sam-sam2-samexporter-');
afterAll(() => tmp.cleanup());
const converted = path.join(tmp.dir, 'converted');
const sx = path.join(tmp.dir, 'samexporter');
const dog = (): string => path.join(sharedDir(), 'images', 'dog.jpg');
const out = (name: string): string => path.join(tmp.dir, name);

beforeAll(async () => {
  const r = await runSam(['models', 'convert', path.join(sharedDir(), 'golden', 'sam2', 'sam2.1_hiera_tiny-random-fp16.pt'), '--out', converted, '-q']);
  expect(r.code, r.stderr).toBe(0);
  mkdirSync(sx, { recursive: true });
  copyFileSync(path.join(converted, 'encoder.onnx'), path.join(sx, 'sam2.1_hiera_tiny.encoder.onnx'));
  copyFileSync(path.join(converted, 'decoder.onnx'), path.join(sx, 'sam2.1_hiera_tiny.decoder.onnx'));
}, 300_000);

interface SegmentDoc {
  size: number[];
  model: string;
  best: number;
  masks: { segmentation: unknown; predicted_iou: number; area: number }[];
}
const readDoc = (file: string): SegmentDoc => JSON.parse(readFileSync(file, 'utf8')) as SegmentDoc;

describe('a samexporter-style SAM 2 folder without manifest.json', () => {
  it('is detected as SAM 2 from the decoder inputs, without a single-mask decoder', async () => {
    const m = await SamModel.open(sx);
    expect(m.family).toBe('sam2');
    expect(m.hasSam2SingleMaskDecoder).toBe(false);
    expect(path.basename(m.encoderPath)).toBe('sam2.1_hiera_tiny.encoder.onnx');
    expect(path.basename(m.decoderPath)).toBe('sam2.1_hiera_tiny.decoder.onnx');
    expect((await SamModel.open(converted)).hasSam2SingleMaskDecoder).toBe(true);
    const v = await runSam(['models', 'verify', sx]);
    expect(v.code, v.stderr + v.stdout).toBe(0);
    expect(v.stdout).toMatch(/ok\s+decoder \(multimask\): 2 prompts per call, 3 mask\(s\) per prompt/);
    expect(v.stdout).toMatch(/ok\s+family: SAM 2, from the decoder's inputs/);
    expect(v.stdout).toMatch(/ok\s+single-mask decoder: none in this folder \(samexporter/);
  });

  it('sam segment with a point gives the converted folder\'s 3 masks; embed + --embedding agree', async () => {
    const a = out('sx-point.json');
    const b = out('conv-point.json');
    for (const [dir, file] of [[sx, a], [converted, b]]) {
      const r = await runSam(['segment', dog(), '--model', dir, '--points', '320,300', '--out', file]);
      expect(r.code, r.stderr).toBe(0);
    }
    const [da, db] = [readDoc(a), readDoc(b)];
    expect(da.size).toEqual([534, 800]);
    expect(da.masks).toHaveLength(3);
    expect(da.masks).toEqual(db.masks);
    // No manifest: the id is the encoder file's hash.
    expect(da.model).toMatch(/^sha256:[0-9a-f]{16}$/);

    const emb = out('sx-emb');
    expect((await runSam(['embed', dog(), '--model', sx, '--out', emb, '-q'])).code).toBe(0);
    const c = out('sx-emb-point.json');
    const r = await runSam(['segment', dog(), '--model', sx, '--embedding', path.join(emb, 'dog.safetensors'), '--points', '320,300', '--out', c]);
    expect(r.code, r.stderr).toBe(0);
    expect(readDoc(c).masks).toEqual(da.masks);
  });

  it('a single-mask request (box) answers with the best multimask mask and says so', async () => {
    const a = out('sx-box.json');
    const r = await runSam(['segment', dog(), '--model', sx, '--box', '10,215,430,530', '--out', a]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/warning: .* has no SAM 2 single-mask decoder \(samexporter exports only the multimask one\); using the best of its 3 masks by predicted IoU/);
    const multi = out('conv-box-multi.json');
    expect((await runSam(['segment', dog(), '--model', converted, '--box', '10,215,430,530', '--multimask', '--out', multi])).code).toBe(0);
    const m = readDoc(multi);
    const doc = readDoc(a);
    expect(doc.masks).toHaveLength(1);
    expect(doc.masks[0]).toEqual(m.masks[m.best]);
  });

  it('sam auto gives the converted folder\'s records; --use-m2m and --no-multimask-output are refused in one line (exit 3)', async () => {
    const flags = ['--points-per-side', '3', '--pred-iou-thresh', '0', '--stability-score-thresh', '0', '-q'];
    for (const [dir, o] of [[sx, out('sx-auto')], [converted, out('conv-auto')]]) {
      const r = await runSam(['auto', dog(), '--model', dir, '--out', o, ...flags]);
      expect(r.code, r.stderr).toBe(0);
    }
    type Rec = MaskRecord<CocoRle>;
    const a = JSON.parse(readFileSync(path.join(out('sx-auto'), 'dog.json'), 'utf8')) as Rec[];
    const b = JSON.parse(readFileSync(path.join(out('conv-auto'), 'dog.json'), 'utf8')) as Rec[];
    expect(a.length).toBeGreaterThan(0);
    expect(a).toHaveLength(b.length);
    // The converted folder runs its split decoder (factorized attention: float32 rounding apart), this one the plain graph.
    a.forEach((r, i) => {
      expect(r.point_coords).toEqual(b[i].point_coords);
      expect(Math.abs(r.predicted_iou - b[i].predicted_iou)).toBeLessThan(1e-6);
      expect(maskIou(decodeRle(r.segmentation).data, decodeRle(b[i].segmentation).data)).toBeGreaterThan(0.9999);
    });
    for (const flag of ['--use-m2m', '--no-multimask-output']) {
      const o = out(`sx-refused${flag}`);
      const r = await runSam(['auto', dog(), '--model', sx, '--out', o, ...flags, flag]);
      expect(r.code, r.stderr).toBe(3);
      expect(r.stderr).toMatch(/has no single-mask decoder \(a samexporter-style folder holds only the multimask one\); convert the official checkpoint with 'sam models convert'/);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(() => readFileSync(path.join(o, 'dog.json'))).toThrow();
    }
  });
});
