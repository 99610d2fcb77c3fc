/**
 * `npm run bench -- --prompts`: box-to-mask throughput (`sam segment --prompts`) on one photo with
 * 50 boxes, the batched decoder against one decoder call per box. Printed, never asserted.
 *
 * 1. decoder calls only (in process, the converted vit_t's batched decoder, one embedding):
 *    50 boxes in calls of 1, 4 (the default), 16 and 50 rows, best of 3;
 * 2. decodePrompts (calls + upscaling each mask to the photo + thresholding) per path: one call
 *    per box, batched, split (image side once per image);
 * 3. whole CLI runs with a stored embedding (`--embeddings`), single, batched and split in rotated
 *    order, three rounds, so machine drift cancels in the ratios: wall, decoder stage, peak RSS, boxes/s;
 * 4. the same on the colour oracle (meaningful masks) for the realistic RLE/write share.
 * Random-weight masks are noise (~1e5 runs each): the worst case for RLE and writing.
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import sharp from 'sharp';
import { EMBEDDING_DIMS } from '../src/core/constants.js';
import { SamModel } from '../src/engine/model.js';
import { embedImage, promptArrays } from '../src/engine/predictor.js';
import { decodePrompts, type BatchPrompt } from '../src/engine/prompt-decoder.js';
import { loadImage } from '../src/io/image.js';
import { table } from '../src/util/format.js';
import { timedProcess } from './cli-runs.js';

const out = (s = ''): void => void process.stdout.write(`${s}\n`);
const f1 = (v: number): string => v.toFixed(1);
const f2 = (v: number): string => v.toFixed(2);
const numTable = (rows: string[][]): string => table(rows, { right: rows[0].map((_, i) => i).filter((i) => i > 0) });

/** 50 boxes spread over the image, sizes 1/10 .. 1/3 of its sides (deterministic). */
function fiftyBoxes(w: number, h: number): BatchPrompt[] {
  const boxes: BatchPrompt[] = [];
  for (let i = 0; i < 50; i++) {
    const bw = w * (0.1 + ((i * 7) % 24) / 100);
    const bh = h * (0.1 + ((i * 11) % 24) / 100);
    const x0 = ((i * 37) % 100) / 100 * (w - bw);
    const y0 = ((i * 61) % 100) / 100 * (h - bh);
    boxes.push({ box: [x0, y0, x0 + bw, y0 + bh] });
  }
  return boxes;
}

async function bestOf<T>(runs: number, f: () => Promise<T>): Promise<number> {
  let best = Infinity;
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    await f();
    best = Math.min(best, performance.now() - t0);
  }
  return best;
}

export async function promptsBench(env: { sam: string; model: string; oracle: string; photo: string; scene: string }): Promise<void> {
  const image = await loadImage(env.photo);
  const boxes = fiftyBoxes(image.width, image.height);
  const model = await SamModel.open(env.model);
  const decoder = (await model.batchedDecoder())!;
  const split = (await model.splitDecoder())!;
  const state = await embedImage(model, image);
  const embeddings = new ort.Tensor('float32', state.embeddings, [...EMBEDDING_DIMS]);

  out(`\nbox-to-mask: ${boxes.length} boxes on ${path.basename(env.photo)} (${image.width}x${image.height}), ${path.basename(env.model)} (${decoder.file})`);
  const rows = [['decoder calls only', 'rows/call', 'ms (best of 3)', 'ms/box', 'boxes/s', 'vs 1 row']];
  let oneRow = 0;
  for (const chunk of [1, 4, 16, 50]) {
    const ms = await bestOf(3, async () => {
      for (let s = 0; s < boxes.length; s += chunk) {
        const part = boxes.slice(s, s + chunk);
        const coords = new Float32Array(part.length * 4);
        const labels = new Float32Array(part.length * 2);
        part.forEach((p, r) => {
          const a = promptArrays(p, state.originalSize);
          coords.set(a.coords, r * 4);
          labels.set(a.labels, r * 2);
        });
        await decoder.run({ embeddings, pointCoords: coords, pointLabels: labels, batch: part.length, numPoints: 2, origSize: [1, 1] }, ['low_res_masks']);
      }
    });
    if (chunk === 1) oneRow = ms;
    rows.push([chunk === 1 ? 'one call per box' : `batched`, String(chunk), f1(ms), f2(ms / boxes.length), f1((1000 * boxes.length) / ms), `${f2(oneRow / ms)}x`]);
  }
  out(numTable(rows));

  const full = [['decodePrompts (calls + upscale + threshold)', 'ms (best of 3)', 'boxes/s', 'vs single']];
  let single = 0;
  for (const [label, dec, chunk] of [
    ['one call per box', decoder, 1],
    ['batched (4 rows a call)', decoder, 4],
    ['split (image side once, 4 rows a call; the default)', split, 4],
  ] as const) {
    const ms = await bestOf(3, () => decodePrompts(dec, state, boxes, () => undefined, { chunk }));
    if (chunk === 1) single = ms;
    full.push([label, f1(ms), f1((1000 * boxes.length) / ms), `${f2(single / ms)}x`]);
  }
  out(numTable(full));

  await cliPairs(env.sam, env.model, env.photo, boxes, 'vit_t (random weights: noise masks, the worst case for RLE/writing)', ['single', 'batched', 'split']);
  const sceneImage = await sharp(env.scene).metadata();
  await cliPairs(env.sam, env.oracle, env.scene, fiftyBoxes(sceneImage.width!, sceneImage.height!), 'colour oracle (meaningful masks; its decoder is tiny, so this shows the fixed costs)', ['single', 'split']);
}

/** Whole runs with a stored embedding: single, batched and split, 3 rounds. */
async function cliPairs(sam: string, model: string, photo: string, boxes: BatchPrompt[], what: string, paths: readonly string[]): Promise<void> {
  const dir = await mkdtemp(path.join(tmpdir(), 'sam-bench-prompts-'));
  try {
    const images = path.join(dir, 'images');
    await mkdir(images, { recursive: true });
    await sharp(photo).toFile(path.join(images, path.basename(photo)));
    await writeFile(path.join(dir, 'p.jsonl'), boxes.map((b) => JSON.stringify({ image: path.basename(photo), box: b.box })).join('\n'));
    const emb = path.join(dir, 'emb');
    const e = await timedProcess([process.execPath, sam, 'embed', images, '--model', model, '--out', emb, '-q']);
    if (e.code !== 0) throw new Error(`sam embed failed:\n${e.stderr}`);
    const rows = [['sam segment --prompts (50 boxes, --embeddings)', 'wall s', 'decoder stage s', 'peak RSS MB', 'boxes/s (decoder stage)']];
    const faster = paths.filter((p) => p !== 'single');
    const ratios: Record<string, string[]> = Object.fromEntries(faster.map((p) => [p, []]));
    for (let round = 0; round < 3; round++) {
      const r: Record<string, { wall: number; dec: number }> = {};
      // Rotated order per round, so drift and warm caches do not favour one path.
      for (let k = 0; k < paths.length; k++) {
        const decoder = paths[(k + round) % paths.length];
        const o = path.join(dir, `out-${decoder}-${round}`);
        const run = await timedProcess([process.execPath, sam, 'segment', images, '--prompts', path.join(dir, 'p.jsonl'), '--model', model, '--embeddings', emb, '--decoder', decoder, '--out', o]);
        if (run.code !== 0) throw new Error(`sam segment --decoder ${decoder} failed:\n${run.stderr}`);
        const dec = Number(/decoder ([\d.]+) s/.exec(run.stderr)?.[1] ?? NaN);
        r[decoder] = { wall: run.wallS, dec };
        rows.push([`${decoder}, round ${round + 1}`, f2(run.wallS), f2(dec), f1(run.rssMb), f1(boxes.length / dec)]);
      }
      for (const p of faster) ratios[p].push(`${f2(r.single.dec / r[p].dec)}x (wall ${f2(r.single.wall / r[p].wall)}x)`);
    }
    out(`\n${what}`);
    out(numTable(rows));
    for (const p of faster) out(`${p} vs single, per round: decoder stage ${ratios[p].join(', ')}`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
