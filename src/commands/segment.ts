import { isDirectory } from '../util/fs.js';
import { LOW_RES_LENGTH, LOW_RES_SIDE } from '../core/constants.js';
import { extname } from 'node:path';
import { Option, type Command } from 'commander';
import type { BoxXyxy, PromptPoint } from '../core/types.js';
import { usageError } from '../util/errors.js';
import { readEmbeddingFile } from '../io/embedding-file.js';
import { writeFileAtomic } from '../util/atomic.js';
import { loadImage } from '../io/image.js';
import { readMaskInput } from '../io/mask-input.js';
import { describeMasks, writeMaskPng, writeOverlayPng } from '../output/masks.js';
import { openModel } from '../hub/resolve.js';
import { encodeNpyFloat32 } from '../io/npy.js';
import { SamPredictor, embedImage, imageStateFromEmbedding, type Prediction } from '../engine/predictor.js';
import { predictSam2 } from '../engine/sam2-predictor.js';
import { parseFloatOption, parseIntOption } from './common.js';
import type { PromptDecoderChoice } from '../engine/model.js';
import { parseShard, type Shard } from './auto.js';
import { runPromptedSegment, sam2MaskFill } from './segment-prompts.js';

interface SegmentOptions {
  model: string;
  points?: PromptPoint[];
  box?: BoxXyxy;
  maskInput?: string;
  single?: boolean;
  multimask?: boolean;
  embedding?: string;
  out?: string;
  overlay?: string;
  lowResOut?: string;
  threads?: number;
  maxHoleArea: number;
  maxSprinkleArea: number;
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

/** Options of one-image mode that `--prompts` (many images, prompts from the file) cannot take. */
const SINGLE_IMAGE_ONLY = [
  ['points', '--points'],
  ['box', '--box'],
  ['maskInput', '--mask-input'],
  ['embedding', '--embedding'],
  ['overlay', '--overlay'],
  ['lowResOut', '--low-res-out'],
] as const;
/** Options of `--prompts` mode that one-image mode does not take. */
const PROMPTS_ONLY = [
  ['coco', '--coco'],
  ['cocoImages', '--coco-images'],
  ['scoreThresh', '--score-thresh'],
  ['names', '--names'],
  ['embeddings', '--embeddings'],
  ['shard', '--shard'],
  ['force', '--force'],
  ['decoder', '--decoder'],
  ['jobs', '--jobs'],
] as const;

export function registerSegment(program: Command, setExit: (code: number) => void): void {
  program
    .command('segment')
    .description('masks for point, box and mask prompts on one image, or one mask per box/prompt of a dataset file (--prompts) over folders')
    .argument('<inputs...>', 'the image file; with --prompts, the image files or folders the prompt file refers to')
    .requiredOption('-m, --model <dir>', 'model folder (encoder + decoder .onnx, optional manifest.json) or the name of a pulled model')
    .option('-p, --points <list>', 'points "x,y[,label] ...", label 1 foreground (default) or 0 background', parsePoints)
    .option('-b, --box <x0,y0,x1,y1>', 'box prompt in pixels', parseBox)
    .option('--mask-input <file>', 'previous mask: PNG of the image size, or .npy low-res logits from --low-res-out')
    .addOption(new Option('--single', 'one mask (decoder output 0)').conflicts('multimask'))
    .addOption(new Option('--multimask', 'three candidate masks (decoder outputs 1..3)').conflicts('single'))
    .option('-e, --embedding <file>', "reuse an embedding from 'sam embed' instead of running the encoder")
    .option('-o, --out <path>', 'output: .json (COCO RLE masks with scores) or .png (the best mask, 0/255); with --prompts a folder: <out>/<key>.json per image')
    .option('--overlay <file.png>', 'also write the masks and prompts drawn over the image')
    .option('--low-res-out <file.npy>', "also write the best mask's 256x256 low-res logits, for --mask-input next time")
    .option('--max-hole-area <n>', 'SAM 2: fill holes of at most n low-res (256x256) pixels in each mask before upscaling (SAM2ImagePredictor max_hole_area; 0: off)', parseIntOption('--max-hole-area', 0), 0)
    .option('--max-sprinkle-area <n>', 'SAM 2: remove specks of at most n low-res pixels (max_sprinkle_area; 0: off)', parseIntOption('--max-sprinkle-area', 0), 0)
    .option('--prompts <file>', 'a COCO JSON (its bboxes), a COCO detection-results JSON (with --coco-images), a YOLO labels folder, or a .jsonl of per-image prompts: one mask per box/prompt')
    .option('--coco <file>', 'with --prompts: write one COCO dataset (ids, categories and extra fields of the prompt file kept; bbox the tight box of each mask)')
    .option('--coco-images <file>', 'with a detection-results --prompts: the COCO file with their images and categories')
    .option('--score-thresh <x>', 'with --prompts: leave out detections whose score is below x', parseFloatOption('--score-thresh', 0, 1))
    .option('--names <list|file>', 'with YOLO labels: class names "a,b,c" or a data.yaml (default: data.yaml/dataset.yaml/classes.txt beside or above the labels)')
    .option('--embeddings <dir>', "with --prompts: reuse 'sam embed' files <dir>/<key>.safetensors where present")
    .addOption(
      new Option('--decoder <which>', "with --prompts: auto (the model's split decoder, else its batched one), split, batched (require theirs), single (one decoder call per prompt); same masks on every path")
        .choices(['auto', 'single', 'batched', 'split'])
        .default('auto'),
    )
    .option('-j, --jobs <n>', 'with --prompts: images in flight at once', parseIntOption('--jobs', 1, 64), 1)
    .option('--shard <i/n>', 'with --prompts: process only share i of n of the images', parseShard)
    .option('-f, --force', 'with --prompts: redo images whose outputs already exist')
    .option('-q, --quiet', 'no progress output')
    .option('-t, --threads <n>', 'onnxruntime threads (default: all cores)', parseIntOption('--threads', 1, 1024))
    .addHelpText(
      'after',
      [
        '',
        'Default: --multimask for a single point without box or mask input (ambiguous prompt), --single otherwise,',
        'as SAM recommends. The best mask is the one with the highest predicted IoU.',
        '',
        'With --prompts, images are found by the prompt file\'s names (COCO file_name, YOLO label path, JSONL "image")',
        'under the given folders; a rerun skips finished images; a bad prompt is reported and the run carries on',
        '(exit code 5 when any prompt or image failed).',
        '',
        'Examples:',
        '  sam segment photo.jpg --model models/sam_vit_b --points "420,310" --out mask.png',
        '  sam segment photo.jpg --model models/sam_vit_b --box 40,60,420,380 --points "200,200,0" --out masks.json --overlay check.png',
        '  sam segment photo.jpg --model models/sam_vit_b --embedding emb/photo.safetensors --points "420,310" --out masks.json',
        '  sam segment images/ --prompts instances_bbox.json --model models/sam_vit_b --coco instances_masks.json',
        '  sam segment images/ --prompts detections.json --coco-images val.json --score-thresh 0.5 --model models/sam_vit_b --coco masks.json',
        '  sam segment dataset/images/train --prompts dataset/labels/train --model models/sam_vit_b --out masks/ --coco masks.json',
        '  sam segment photos/ --prompts prompts.jsonl --model models/sam_vit_b --out masks/',
        '',
      ].join('\n'),
    )
    .action(async (inputs: string[], opts: SegmentOptions & PromptsCliOptions, cmd: Command) => {
      const given = (key: string): boolean => cmd.getOptionValueSource(key) === 'cli';
      if (opts.prompts) {
        const bad = SINGLE_IMAGE_ONLY.filter(([k]) => given(k)).map(([, f]) => f);
        if (bad.length > 0) throw usageError(`${bad.join(', ')} cannot go with --prompts (the prompts come from the file; --embeddings DIR reuses embeddings)`);
        setExit(await runPromptedSegment(inputs, { ...opts, prompts: opts.prompts }));
        return;
      }
      const bad = PROMPTS_ONLY.filter(([k]) => given(k)).map(([, f]) => f);
      if (bad.length > 0) throw usageError(`${bad.join(', ')} need --prompts FILE (one mask per box of a dataset); without it segment takes one image and --points/--box`);
      if (inputs.length !== 1) throw usageError(`segment takes one image (got ${inputs.length}); for many images give --prompts FILE, or use 'sam auto'`);
      if (!opts.out) throw usageError('--out is required: a .json (COCO RLE masks with scores) or .png file');
      await segmentOne(inputs[0], { ...opts, out: opts.out });
      setExit(0);
    });
}

interface PromptsCliOptions {
  prompts?: string;
  coco?: string;
  cocoImages?: string;
  scoreThresh?: number;
  names?: string;
  embeddings?: string;
  decoder: PromptDecoderChoice;
  jobs: number;
  shard?: Shard;
  force?: boolean;
  quiet?: boolean;
}

/** One image, prompts from the command line. */
async function segmentOne(imagePath: string, opts: SegmentOptions & { out: string }): Promise<void> {
  const outExt = extname(opts.out).toLowerCase();
  if (outExt !== '.json' && outExt !== '.png') throw usageError(`--out ${opts.out}: name a .json or .png file`);
  if (opts.overlay && extname(opts.overlay).toLowerCase() !== '.png') throw usageError(`--overlay ${opts.overlay}: name a .png file`);
  if (!opts.points && !opts.box && !opts.maskInput) throw usageError('no prompt: give --points, --box or --mask-input');

  if (opts.embedding && (await isDirectory(opts.embedding))) {
    throw usageError(`--embedding ${opts.embedding} is a folder; give one .safetensors file from 'sam embed' (a folder of them is 'sam auto --embeddings DIR')`);
  }
  const model = await openModel(opts.model, { threads: opts.threads });
  const fill = sam2MaskFill(opts, model);
  const sam2 = model.family === 'sam2';
  const [image, decoder] = await Promise.all([loadImage(imagePath), sam2 ? undefined : model.decoder()]);
  const size: [number, number] = [image.height, image.width];
  const state = opts.embedding
    ? await imageStateFromEmbedding(model, await readEmbeddingFile(opts.embedding), opts.embedding, size)
    : await embedImage(model, image);
  const maskInput = opts.maskInput ? await readMaskInput(opts.maskInput, size) : undefined;
  const multimask = opts.multimask ?? (opts.single ? false : (opts.points?.length ?? 0) === 1 && !opts.box && !maskInput);

  const prompt = { points: opts.points, box: opts.box, maskInput };
  let prediction: Prediction;
  if (decoder) prediction = await new SamPredictor(decoder, state).predict(prompt, multimask);
  else {
    const r = await predictSam2(model, state, prompt, multimask, fill);
    if (r.bestOfMultimask) {
      process.stderr.write(
        `sam: warning: ${model.dir} has no SAM 2 single-mask decoder (samexporter exports only the multimask one); using the best of its 3 masks by predicted IoU. Convert the checkpoint with 'sam models convert' for SAM 2's own single-mask output, or pass --multimask\n`,
      );
    }
    prediction = r.prediction;
  }
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
}

