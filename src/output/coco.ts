/**
 * One COCO dataset (pycocotools' COCO class, FiftyOne, CVAT) for the masks of a whole run:
 * `images`, `annotations` (one per mask, COCO RLE with string counts), one category "object".
 *
 * `bbox` keeps SAM's numbers: XYWH of the inclusive-max box, w = x1 - x0 (as amg.py writes it),
 * which is one less than pycocotools' toBbox (max - min + 1). Keeping one convention means the
 * dataset and the per-image files agree number for number.
 */
import { createReadStream } from 'node:fs';
import { open, rm } from 'node:fs/promises';
import type { CocoRle, MaskRecord } from '../core/types.js';
import { produceFileAtomic } from '../util/atomic.js';

export interface CocoImageEntry {
  /** Path of the image relative to its input root (the output key plus the extension). */
  fileName: string;
  width: number;
  height: number;
  records: readonly MaskRecord<CocoRle>[];
}

export const COCO_CATEGORY = { id: 1, name: 'object', supercategory: 'object' } as const;

/**
 * Write the dataset atomically. Images arrive one at a time (the caller reads each image's
 * output from disk), annotations are streamed to a side file (~1 MiB at a time), so memory holds
 * one image's masks plus the small `images` list. Ids start at 1 and follow the order of `images`.
 */
export async function writeCocoDataset(
  path: string,
  images: AsyncIterable<CocoImageEntry>,
  info: Readonly<Record<string, string | number>>,
): Promise<{ images: number; annotations: number }> {
  let imageCount = 0;
  let annCount = 0;
  await produceFileAtomic(path, async (tmp) => {
    const annPath = `${tmp}.ann`;
    const imageLines: string[] = [];
    const ann = await open(annPath, 'w');
    try {
      for await (const img of images) {
        const imageId = ++imageCount;
        imageLines.push(JSON.stringify({ id: imageId, file_name: img.fileName, width: img.width, height: img.height }));
        let chunk = '';
        for (const r of img.records) {
          const a = {
            id: ++annCount,
            image_id: imageId,
            category_id: COCO_CATEGORY.id,
            segmentation: { size: r.segmentation.size, counts: r.segmentation.counts },
            area: r.area,
            bbox: r.bbox,
            iscrowd: 0,
            predicted_iou: r.predicted_iou,
            stability_score: r.stability_score,
            point_coords: r.point_coords,
            crop_box: r.crop_box,
          };
          chunk += `${annCount === 1 ? '' : ',\n'}${JSON.stringify(a)}`;
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
      await out.write(`{"info": ${JSON.stringify(info)},\n"images": [\n${imageLines.join(',\n')}\n],\n"annotations": [\n`);
      for await (const buf of createReadStream(annPath, { highWaterMark: 1 << 20 })) await out.write(buf as Buffer);
      await out.write(`\n],\n"categories": [${JSON.stringify(COCO_CATEGORY)}]}\n`);
      await out.sync();
    } finally {
      await out.close();
      await rm(annPath, { force: true });
    }
  });
  return { images: imageCount, annotations: annCount };
}
