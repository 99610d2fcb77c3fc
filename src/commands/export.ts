import { Argument, Option, type Command } from 'commander';
import { DEFAULT_TOLERANCE, EXPORT_FORMATS, runExport, type ExportFormat, type ExportSummary } from '../export/export.js';
import { EXIT } from './exit.js';
import { parseFloatOption } from './common.js';

/** What commander hands the action. */
interface ExportCliOptions {
  out: string;
  tolerance: number;
  holes: 'fill' | 'rle';
  labelstudioMode: 'polygons' | 'brush';
  cvatMode: 'rle' | 'polygons';
  images?: string;
  imageExt?: string;
  imageUrlPrefix?: string;
  modelVersion: string;
  quiet?: boolean;
}

function report(s: ExportSummary): string[] {
  const lines = [`sam: ${s.format}: ${s.images} image(s), ${s.annotations} mask(s) → ${s.written.join(', ')}`];
  if (s.holesFilled > 0) lines.push(`sam: ${s.holesFilled} mask(s) had holes, filled (polygons carry outer outlines only${s.format === 'coco-polygons' ? '; --holes rle keeps them as RLE' : ''})`);
  if (s.keptRle > 0) lines.push(`sam: ${s.keptRle} mask(s) with holes kept as RLE (--holes rle)`);
  if (s.multiPiece > 0) lines.push(`sam: ${s.multiPiece} mask(s) of several pieces${s.format === 'yolo' ? ', joined into one polygon per line (Ultralytics merge_multi_segment)' : ''}`);
  if (s.dropped > 0) lines.push(`sam: ${s.dropped} empty mask(s) left out`);
  for (const n of s.notes) lines.push(`sam: ${n}`);
  return lines;
}

export function registerExport(program: Command, setExit: (code: number) => void): void {
  program
    .command('export')
    .description('convert sam auto outputs or a COCO dataset to COCO polygons, YOLO segmentation labels, Label Studio tasks or a CVAT COCO 1.0 file')
    .addArgument(new Argument('<format>', 'coco-polygons | yolo | labelstudio | cvat').choices([...EXPORT_FORMATS]))
    .argument('<input>', 'a sam auto --out folder (<key>.json mask records) or a COCO JSON (sam auto --coco, sam segment --prompts --coco, any instances file)')
    .requiredOption('-o, --out <path>', 'output: a JSON file (coco-polygons, cvat, labelstudio: plus <name>.config.xml beside it) or a folder (yolo)')
    .option('--tolerance <px>', 'Douglas-Peucker tolerance of the polygons in pixels (0: the exact pixel outline)', parseFloatOption('--tolerance', 0, 1e6), DEFAULT_TOLERANCE)
    .addOption(new Option('--holes <how>', 'coco-polygons and cvat polygons: masks with holes as their outer outline (fill) or kept as RLE (rle)').choices(['fill', 'rle']).default('fill'))
    .addOption(new Option('--labelstudio-mode <mode>', 'labelstudio: polygonlabels regions, or brushlabels in Label Studio\'s RLE (exact, holes kept)').choices(['polygons', 'brush']).default('polygons'))
    .addOption(new Option('--cvat-mode <mode>', 'cvat: masks as COCO RLE (exact, holes kept) or as polygons').choices(['rle', 'polygons']).default('rle'))
    .option('--images <dir>', 'the image folder the masks were made from: file names for folder input, image sizes, and images/ of the YOLO export (a link)')
    .option('--image-ext <ext>', 'folder input without --images: file_name = <key><ext>, e.g. .jpg')
    .option('--image-url-prefix <prefix>', 'labelstudio: data.image = prefix + file_name, e.g. /data/local-files/?d=photos/ for local storage')
    .option('--model-version <name>', 'labelstudio: the predictions\' model_version', 'sam')
    .option('-q, --quiet', 'no summary on stderr')
    .addHelpText(
      'after',
      [
        '',
        'Polygons follow the mask\'s pixel edges (exact at --tolerance 0) and carry outer outlines only: holes are filled',
        '(reported; --holes rle, --labelstudio-mode brush and --cvat-mode rle keep them). area and bbox are the mask\'s own.',
        '',
        'Examples:',
        '  sam export coco-polygons masks/ --images photos/ --out polygons.json',
        '  sam export coco-polygons masks/dataset.json --out polygons.json --tolerance 0 --holes rle',
        '  sam export yolo masks/ --images photos/ --out yolo/            # yolo/labels/*.txt, yolo/data.yaml, yolo/images -> photos/',
        '  sam export labelstudio masks/dataset.json --out ls/tasks.json --image-url-prefix "/data/local-files/?d=photos/"',
        '  sam export labelstudio masks/ --images photos/ --out ls/tasks.json --labelstudio-mode brush',
        '  sam export cvat masks/dataset.json --out cvat.json',
        '',
      ].join('\n'),
    )
    .action(async (format: ExportFormat, input: string, opts: ExportCliOptions) => {
      const summary = await runExport(format, input, {
        out: opts.out,
        tolerance: opts.tolerance,
        holes: opts.holes,
        labelstudioMode: opts.labelstudioMode,
        cvatMode: opts.cvatMode,
        images: opts.images,
        imageExt: opts.imageExt,
        imageUrlPrefix: opts.imageUrlPrefix,
        modelVersion: opts.modelVersion,
      });
      if (!opts.quiet) process.stderr.write(`${report(summary).join('\n')}\n`);
      setExit(EXIT.ok);
    });
}
