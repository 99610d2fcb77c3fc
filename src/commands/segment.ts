import { isDirectory } from '../util/fs.js';
import { LOW_RES_LENGTH, LOW_RES_SIDE } from '../core/constants.js';
import { extname } from 'node:path';
import { Option, type Command } from 'commander';
import type { BoxXyxy } from '../core/types.js';
import { usageError } from '../util/errors.js';
import { readEmbeddingFile } from '../io/embedding-file.js';
import { writeFileAtomic } from '../util/atomic.js';
import { loadImage } from '../io/image.js';
import { readMaskInput } from '../io/mask-input.js';
import { describeMasks, writeMaskPng, writeOverlayPng } from '../output/masks.js';
import { openModel } from '../hub/resolve.js';
import { encodeNpyFloat32 } from '../io/npy.js';
import { SamPredictor, embedImage, imageStateFromEmbedding, type PromptPoint } from '../engine/predictor.js';
import { parseIntOption } from './common.js';

interface SegmentOptions {
  model: string;
  points?: PromptPoint[];
  box?: BoxXyxy;
  maskInput?: string;
  single?: boolean;
  multimask?: boolean;
  embedding?: string;
  out: string;
  overlay?: string;
  lowResOut?: string;
  threads?: number;
}

const POINTS_HELP = '--points takes "x,y[,label] ..." with label 1 (foreground, default) or 0 (background), e.g. --points "120,80 200,150,0"';

/** "x,y[,label] x,y[,label] ..." (spaces or semicolons between points). */
export function parsePoints(value: string): PromptPoint[] {
  const parts = value.split(/[\s;]+/).filter((s) => s !== '');
  if (parts.length === 0) throw usageError(`--points is empty; ${POINTS_HELP}`);
  return parts.map((part) => {
    const nums = part.split(',');
    const v = nums.map((s) => (s.trim() === '' ? NaN : Number(s)));
    if ((v.length !== 2 && v.length !== 3) || v.some((x) => !Number.isFinite(x))) {
      throw usageError(`--points: '${part}' is not x,y or x,y,label; ${POINTS_HELP}`);
    }
    const label = v.length === 3 ? v[2] : 1;
    if (label !== 0 && label !== 1) throw usageError(`--points: label ${label} in '${part}' must be 1 or 0; ${POINTS_HELP}`);
    return { x: v[0], y: v[1], label };
  });
}

export function parseBox(value: string): BoxXyxy {
  const v = value.split(',').map((s) => (s.trim() === '' ? NaN : Number(s)));
  if (v.length !== 4 || v.some((x) => !Number.isFinite(x))) {
    throw usageError(`--box '${value}' is not x0,y0,x1,y1 (pixels, top-left and bottom-right corners), e.g. --box 40,60,220,310`);
  }
  return [v[0], v[1], v[2], v[3]];
}

export function registerSegment(program: Command, setExit: (code: number) => void): void {
  program
    .command('segment')
    .description('masks for point, box and mask prompts on one image')
    .argument('<image>', 'image file')
    .requiredOption('-m, --model <dir>', 'model folder (encoder + decoder .onnx, optional manifest.json) or the name of a pulled model')
    .option('-p, --points <list>', 'points "x,y[,label] ...", label 1 foreground (default) or 0 background', parsePoints)
    .option('-b, --box <x0,y0,x1,y1>', 'box prompt in pixels', parseBox)
    .option('--mask-input <file>', 'previous mask: PNG of the image size, or .npy low-res logits from --low-res-out')
    .addOption(new Option('--single', 'one mask (decoder output 0)').conflicts('multimask'))
    .addOption(new Option('--multimask', 'three candidate masks (decoder outputs 1..3)').conflicts('single'))
    .option('-e, --embedding <file>', "reuse an embedding from 'sam embed' instead of running the encoder")
    .requiredOption('-o, --out <file>', 'output: .json (COCO RLE masks with scores) or .png (the best mask, 0/255)')
    .option('--overlay <file.png>', 'also write the masks and prompts drawn over the image')
    .option('--low-res-out <file.npy>', "also write the best mask's 256x256 low-res logits, for --mask-input next time")
    .option('-t, --threads <n>', 'onnxruntime threads (default: all cores)', parseIntOption('--threads', 1, 1024))
    .addHelpText(
      'after',
      [
        '',
        'Default: --multimask for a single point without box or mask input (ambiguous prompt), --single otherwise,',
        'as SAM recommends. The best mask is the one with the highest predicted IoU.',
        '',
        'Examples:',
        '  sam segment photo.jpg --model models/sam_vit_b --points "420,310" --out mask.png',
        '  sam segment photo.jpg --model models/sam_vit_b --box 40,60,420,380 --points "200,200,0" --out masks.json --overlay check.png',
        '  sam segment photo.jpg --model models/sam_vit_b --embedding emb/photo.safetensors --points "420,310" --out masks.json',
        '',
      ].join('\n'),
    )
    .action(async (imagePath: string, opts: SegmentOptions) => {
      const outExt = extname(opts.out).toLowerCase();
      if (outExt !== '.json' && outExt !== '.png') throw usageError(`--out ${opts.out}: name a .json or .png file`);
      if (opts.overlay && extname(opts.overlay).toLowerCase() !== '.png') throw usageError(`--overlay ${opts.overlay}: name a .png file`);
      if (!opts.points && !opts.box && !opts.maskInput) throw usageError('no prompt: give --points, --box or --mask-input');

      if (opts.embedding && (await isDirectory(opts.embedding))) {
        throw usageError(`--embedding ${opts.embedding} is a folder; give one .safetensors file from 'sam embed' (a folder of them is 'sam auto --embeddings DIR')`);
      }
      const model = await openModel(opts.model, { threads: opts.threads });
      const [image, decoder] = await Promise.all([loadImage(imagePath), model.decoder()]);
      const size: [number, number] = [image.height, image.width];
      const state = opts.embedding
        ? await imageStateFromEmbedding(model, await readEmbeddingFile(opts.embedding), opts.embedding, size)
        : await embedImage(model, image);
      const maskInput = opts.maskInput ? await readMaskInput(opts.maskInput, size) : undefined;
      const multimask = opts.multimask ?? (opts.single ? false : (opts.points?.length ?? 0) === 1 && !opts.box && !maskInput);

      const prediction = await new SamPredictor(decoder, state).predict({ points: opts.points, box: opts.box, maskInput }, multimask);
      const [h, w] = prediction.size;
      const { masks, records } = describeMasks(prediction.masks, prediction.iouPredictions, h, w);
      let best = 0;
      records.forEach((r, i) => {
        if (r.predicted_iou > records[best].predicted_iou) best = i;
      });

      if (outExt === '.png') {
        await writeMaskPng(opts.out, masks[best]);
      } else {
        const doc = {
          image: imagePath,
          size: [h, w],
          model: await model.id(),
          prompt: {
            points: opts.points?.map((p) => [p.x, p.y, p.label]) ?? [],
            box: opts.box ?? null,
            mask_input: opts.maskInput ?? null,
            multimask,
          },
          best,
          masks: records,
        };
        await writeFileAtomic(opts.out, `${JSON.stringify(doc)}\n`);
      }
      if (opts.lowResOut) {
        const low = prediction.lowResMasks.subarray(best * LOW_RES_LENGTH, (best + 1) * LOW_RES_LENGTH);
        await writeFileAtomic(opts.lowResOut, encodeNpyFloat32(low, [1, 1, LOW_RES_SIDE, LOW_RES_SIDE]));
      }
      if (opts.overlay) {
        // Largest first, so smaller candidate masks stay visible on top.
        const order = records.map((_, i) => i).sort((a, b) => records[b].area - records[a].area);
        await writeOverlayPng(opts.overlay, image, order.map((i) => masks[i]), { points: opts.points, box: opts.box });
      }
      setExit(0);
    });
}
