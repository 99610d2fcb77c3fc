/**
 * The checks Datumaro's COCO instances extractor (datumaro/plugins/data_formats/coco/base.py,
 * _CocoBase: _load_categories, _load_items, _load_annotations, _parse_field) makes on a file,
 * which CVAT's "COCO 1.0" import runs. Returns one message per failure (Datumaro would raise
 * MissingFieldError / InvalidFieldTypeError / InvalidAnnotationError / UndeclaredLabelError).
 *
 * Python types of JSON values: `isinstance(v, int)` holds for integers written without a
 * fraction or exponent (and for true/false, bool being an int subclass); `float` for the rest.
 */

type Json = unknown;
type PyType = 'int' | 'float' | 'str' | 'list' | 'dict';

function pyIs(v: Json, t: PyType): boolean {
  switch (t) {
    case 'int':
      return typeof v === 'boolean' || (typeof v === 'number' && Number.isInteger(v));
    case 'float':
      return typeof v === 'number' && !Number.isInteger(v);
    case 'str':
      return typeof v === 'string';
    case 'list':
      return Array.isArray(v);
    case 'dict':
      return typeof v === 'object' && v !== null && !Array.isArray(v);
  }
}

export function datumaroCocoCheck(doc: Json): string[] {
  const errors: string[] = [];
  /** _parse_field(obj, key, cls): present, and isinstance of one of `types`. */
  const field = (obj: Record<string, Json>, key: string, types: PyType[], where: string): Json => {
    if (!(key in obj)) {
      errors.push(`${where}: missing field '${key}'`);
      return undefined;
    }
    if (!types.some((t) => pyIs(obj[key], t))) {
      errors.push(`${where}: field '${key}' has type ${typeof obj[key]}, expected ${types.join('|')}`);
      return undefined;
    }
    return obj[key];
  };
  if (!pyIs(doc, 'dict')) return ['not a JSON object'];
  const d = doc as Record<string, Json>;
  const labelMap = new Map<number, number>();
  const cats = field(d, 'categories', ['list'], 'file') as Record<string, Json>[] | undefined;
  (cats ?? []).forEach((c, i) => {
    const id = field(c, 'id', ['int'], `categories[${i}]`) as number | undefined;
    field(c, 'name', ['str'], `categories[${i}]`);
    if (id !== undefined) labelMap.set(Number(id), i);
  });
  const imageInfo = new Map<number, Record<string, Json>>();
  const images = field(d, 'images', ['list'], 'file') as Record<string, Json>[] | undefined;
  (images ?? []).forEach((im, i) => {
    const where = `images[${i}]`;
    const id = field(im, 'id', ['int'], where) as number | undefined;
    if (id === undefined) return;
    imageInfo.set(Number(id), im);
    if (im.height && im.width) {
      field(im, 'height', ['int'], where);
      field(im, 'width', ['int'], where);
    }
    field(im, 'file_name', ['str'], where);
  });
  const anns = field(d, 'annotations', ['list'], 'file') as Record<string, Json>[] | undefined;
  (anns ?? []).forEach((ann, i) => {
    const where = `annotations[${i}]`;
    const imageId = field(ann, 'image_id', ['int'], where) as number | undefined;
    if (imageId === undefined) return;
    const image = imageInfo.get(Number(imageId));
    if (!image) {
      errors.push(`${where}: unknown image id ${imageId}`);
      return;
    }
    field(ann, 'id', ['int'], where);
    if ('attributes' in ann && !pyIs(ann.attributes, 'dict')) errors.push(`${where}: attributes is not a dict`);
    if ('score' in ann) field(ann, 'score', ['int', 'float'], where);
    // _get_label_id: category_id int; 0 means no label; else it must be declared.
    const cat = field(ann, 'category_id', ['int'], where);
    if (cat !== undefined && Number(cat) !== 0 && !labelMap.has(Number(cat))) errors.push(`${where}: undeclared label ${String(cat)}`);
    field(ann, 'iscrowd', ['int'], where);
    const seg = field(ann, 'segmentation', ['list', 'dict'], where);
    const emptyPoly = Array.isArray(seg) && (seg.length === 0 || (seg.length === 1 && Array.isArray(seg[0]) && seg[0].length === 0));
    if (seg && !emptyPoly) {
      if (Array.isArray(seg)) {
        for (const poly of seg as Json[][]) {
          if (poly.length % 2 !== 0) errors.push(`${where}: polygon has an odd value count ${poly.length}`);
          else if (poly.length < 6) errors.push(`${where}: polygon has ${poly.length} values, fewer than 3 points`);
        }
      } else {
        const rle = seg as Record<string, Json>;
        if (Array.isArray(rle.counts)) {
          const ih = field(image, 'height', ['int'], `image ${imageId}`);
          const iw = field(image, 'width', ['int'], `image ${imageId}`);
          const size = field(rle, 'size', ['list'], `${where}.segmentation`) as number[] | undefined;
          if (size && size.length !== 2) errors.push(`${where}: mask size has ${size.length} values`);
          else if (size && (size[0] !== ih || size[1] !== iw)) errors.push(`${where}: mask size ${size.join('x')} differs from the image's ${String(ih)}x${String(iw)}`);
        } else if (!(typeof rle.counts === 'string' && Array.isArray(rle.size) && rle.size.length === 2)) {
          // Compressed RLE goes to pycocotools as it is: it needs string counts and [h, w].
          errors.push(`${where}: compressed RLE needs a string 'counts' and a 2-value 'size'`);
        }
      }
    }
    const bbox = field(ann, 'bbox', ['list'], where) as Json[] | undefined;
    if (bbox && bbox.length > 0 && bbox.length !== 4) errors.push(`${where}: bbox has ${bbox.length} values`);
  });
  return errors;
}
