import * as ort from 'onnxruntime-node';
import { EMBEDDING_DIMS, EMBEDDING_LENGTH, LOW_RES_LENGTH } from '../core/constants.js';
import type { SamModel } from './model.js';
import { SAM2_HIGH_RES_DIMS } from '../io/embedding-file.js';

export interface ProbeCheck {
  ok: boolean;
  what: string;
  detail: string;
}

/**
 * Load every session of `model` and run test prompts through each decoder on a zero embedding
 * [1,256,64,64], checking the output sizes. Contract errors throw (SamError).
 */
export async function probeModel(model: SamModel): Promise<ProbeCheck[]> {
  const checks: ProbeCheck[] = [];
  const enc = await model.encoder();
  checks.push({ ok: true, what: 'encoder', detail: `${enc.session.inputNames.join(', ')} → ${enc.session.outputNames.join(', ')}` });
  const emb = new ort.Tensor('float32', new Float32Array(EMBEDDING_LENGTH), [...EMBEDDING_DIMS]);
  if (model.family === 'sam2') return [...checks, ...(await probeSam2Decoders(model, emb))];
  const origSize: [number, number] = [32, 48];

  const dec = await model.decoder();
  const one = await dec.run(
    { embeddings: emb, pointCoords: Float32Array.from([512, 512, 0, 0]), pointLabels: Float32Array.from([1, -1]), batch: 1, numPoints: 2, origSize },
    ['masks', 'low_res_masks'],
  );
  const m = one.numMasks;
  if (one.masks?.length !== m * origSize[0] * origSize[1] || one.lowResMasks?.length !== m * LOW_RES_LENGTH) {
    checks.push({ ok: false, what: 'decoder', detail: 'a test prompt gave outputs of the wrong size' });
  } else {
    checks.push({ ok: true, what: 'decoder', detail: `${dec.batched ? 'batched' : 'single prompt'}, ${m} masks per prompt, test prompt ok` });
  }

  const batched = await model.batchedDecoder();
  if (batched) {
    // Three prompts of one point + padding point each: point_coords [3, 2, 2].
    const b = 3;
    const coords = Float32Array.from([100, 100, 0, 0, 512, 512, 0, 0, 900, 300, 0, 0]);
    const labels = Float32Array.from([1, -1, 1, -1, 1, -1]);
    const r = await batched.run({ embeddings: emb, pointCoords: coords, pointLabels: labels, batch: b, numPoints: 2, origSize }, ['low_res_masks']);
    if (r.iouPredictions.length !== b * r.numMasks || r.lowResMasks?.length !== b * r.numMasks * LOW_RES_LENGTH) {
      checks.push({ ok: false, what: 'batched decoder', detail: `a batch of ${b} test prompts gave outputs of the wrong size` });
    } else {
      checks.push({ ok: true, what: 'batched decoder', detail: `${b} prompts per call, ${r.numMasks} masks per prompt, test batch ok` });
    }
  }

  const split = await model.splitDecoder();
  if (split) {
    // Image side once, IoU for three prompts, masks for prompts 2 and 0.
    const image = await split.imageSide(emb);
    const coords = Float32Array.from([100, 100, 0, 0, 512, 512, 0, 0, 900, 300, 0, 0]);
    const labels = Float32Array.from([1, -1, 1, -1, 1, -1]);
    const stage1 = await split.promptSide(image, coords, labels, 3, 2);
    const low = await split.maskSide(stage1, Int32Array.from([2, 0]));
    const ok = stage1.iouPredictions.length === 3 * stage1.numMasks && low.length === 2 * stage1.numMasks * LOW_RES_LENGTH;
    checks.push(
      ok
        ? { ok: true, what: 'split decoder', detail: `image side, IoU for 3 prompts, masks for 2 of them, ${stage1.numMasks} masks per prompt: ok` }
        : { ok: false, what: 'split decoder', detail: 'test prompts gave outputs of the wrong size' },
    );
  }
  return checks;
}

/** SAM 2: a box + point prompt through the multimask and the single-mask decoder on zero features. */
async function probeSam2Decoders(model: SamModel, emb: ort.Tensor): Promise<ProbeCheck[]> {
  const image = {
    image_embed: emb,
    high_res_feats_0: new ort.Tensor('float32', new Float32Array(32 * 256 * 256), [...SAM2_HIGH_RES_DIMS[0]]),
    high_res_feats_1: new ort.Tensor('float32', new Float32Array(64 * 128 * 128), [...SAM2_HIGH_RES_DIMS[1]]),
  };
  const checks: ProbeCheck[] = [];
  for (const [what, multimask, want] of [['decoder (multimask)', true, 3], ['single-mask decoder', false, 1]] as const) {
    if (!multimask && !model.hasSam2SingleMaskDecoder) {
      // A samexporter folder: single-mask requests get the best multimask mask (sam2-predictor.ts bestMaskOf).
      checks.push({ ok: true, what, detail: 'none in this folder (samexporter exports only the multimask one): single-mask prompts use the best of 3 masks, --use-m2m and --no-multimask-output are refused' });
      continue;
    }
    const dec = await model.sam2Decoder(multimask);
    // Two prompts of a box and a click: point_coords [2, 3, 2].
    const coords = Float32Array.from([10, 10, 500, 400, 200, 200, 100, 100, 900, 900, 512, 512]);
    const labels = Float32Array.from([2, 3, 1, 2, 3, 1]);
    const r = await dec.run(image, coords, labels, 2, 3);
    const ok = r.numMasks === want && r.iouPredictions.length === 2 * want && r.lowResMasks.length === 2 * want * LOW_RES_LENGTH;
    checks.push(ok ? { ok: true, what, detail: `2 prompts per call, ${want} mask(s) per prompt, test batch ok` } : { ok: false, what, detail: `test prompts gave ${r.numMasks} masks per prompt or outputs of the wrong size, expected ${want}` });
  }
  return checks;
}
