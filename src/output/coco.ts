/**
 * One COCO dataset (pycocotools' COCO class, FiftyOne, CVAT/Datumaro) for the masks of a run:
 * `info`, `images`, `annotations` (COCO RLE with string counts, plus SAM's scores), `categories`.
 *
 * `bbox` is the tight box of the mask as pycocotools' toBbox computes it: [x, y, w, h] with w and
 * h the pixel extent (max - min + 1). SAM's per-image records (amg.py's format) keep SAM's own box,
 * w = x1 - x0 of the inclusive-max box, one pixel less: `cocoBboxOfRecord` converts.
 */
import { createReadStream } from 'node:fs';
import { open, rm } from 'node:fs/promises';
import type { BoxXywh, CocoCategory, CocoRle, MaskRecord } from '../core/types.js';

export type { CocoCategory };
import { produceFileAtomic } from '../util/atomic.js';

export interface CocoImage {
  id: number;
  /** Path of the image relative to its input root (the output key plus the extension). */
  file_name: string;
  width: number;
  height: number;
}

/** What every annotation carries; writers add their own fields (scores, prompts, kept input fields). */
export interface CocoAnnotation {
  id: number;
  image_id: number;
  category_id: number;
  segmentation: CocoRle;
  area: number;
  bbox: BoxXywh;
  iscrowd: 0 | 1;
  [field: string]: unknown;
}

export interface CocoImageEntry {
  image: CocoImage;
  annotations: Iterable<CocoAnnotation>;
}

/** The category of `sam auto`'s class-agnostic masks (ids start at 1: Datumaro reads 0 as "no label"). */
export const COCO_CATEGORY: CocoCategory = { id: 1, name: 'object', supercategory: 'object' };

/**
 * pycocotools toBbox of a mask from SAM's box of it: SAM's w = x1 - x0 of the inclusive-max box, so
 * the pixel extent is w + 1 (an empty mask has SAM box [0, 0, 0, 0], toBbox [0, 0, 0, 0]).
 */
export function cocoBboxOfRecord(r: Pick<MaskRecord<unknown>, 'area' | 'bbox'>): BoxXywh {
  const [x, y, w, h] = r.bbox;
  return r.area > 0 ? [x, y, w + 1, h + 1] : [0, 0, 0, 0];
}

/** `sam auto`'s record as a COCO annotation: SAM's scores, point and crop box kept beside the COCO fields. */
export function annotationOfRecord(r: MaskRecord<CocoRle>, id: number, imageId: number): CocoAnnotation {
  return {
    id,
    image_id: imageId,
    category_id: COCO_CATEGORY.id,
    segmentation: { size: r.segmentation.size, counts: r.segmentation.counts },
    area: r.area,
    bbox: cocoBboxOfRecord(r),
    iscrowd: 0,
    predicted_iou: r.predicted_iou,
    stability_score: r.stability_score,
    point_coords: r.point_coords,
    crop_box: r.crop_box,
  };
}

/**
 * Write the dataset atomically. Images arrive one at a time (the caller reads each image's
 * output from disk), annotations are streamed to a side file (~1 MiB at a time), so memory holds
 * one image's masks plus the small `images` list.
 */
export async function writeCocoDataset(
  path: string,
  images: AsyncIterable<CocoImageEntry>,
  header: { info: Readonly<Record<string, string | number>>; categories: readonly CocoCategory[] },
): Promise<{ images: number; annotations: number }> {
  let imageCount = 0;
  let annCount = 0;
  await produceFileAtomic(path, async (tmp) => {
    const annPath = `${tmp}.ann`;
    const imageLines: string[] = [];
    const ann = await open(annPath, 'w');
    try {
      for await (const { image, annotations } of images) {
        imageCount++;
        imageLines.push(JSON.stringify(image));
        let chunk = '';
        for (const a of annotations) {
          chunk += `${annCount++ === 0 ? '' : ',\n'}${JSON.stringify(a)}`;
          // Flush every ~1 MiB: memory holds a chunk, not an image's annotations as one string.
          if (chunk.length >= 1 << 20) {
            await ann.write(chunk);
            chunk = '';
          }
        }
        if (chunk) await ann.write(chunk);
      }
    } finally {
      await ann.close();
    }
    const out = await open(tmp, 'w');
    try {
      await out.write(`{"info": ${JSON.stringify(header.info)},\n"images": [\n${imageLines.join(',\n')}\n],\n"annotations": [\n`);
      for await (const buf of createReadStream(annPath, { highWaterMark: 1 << 20 })) await out.write(buf as Buffer);
      await out.write(`\n],\n"categories": ${JSON.stringify(header.categories)}}\n`);
      await out.sync();
    } finally {
      await out.close();
      await rm(annPath, { force: true });
    }
  });
  return { images: imageCount, annotations: annCount };
}
