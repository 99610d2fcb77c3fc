/** Fixed sizes of SAM's image pipeline (segment_anything/modeling/sam.py, image_encoder.py, prompt_encoder.py). */

/** The encoder's square input side (ImageEncoderViT.img_size), pixels. */
export const IMAGE_SIZE = 1024;
/** Channels of the image embedding (transformer_dim). */
export const EMBEDDING_CHANNELS = 256;
/** Side of the image embedding: IMAGE_SIZE / patch size 16. */
export const EMBEDDING_SIDE = 64;
/** image_embeddings dims [1, 256, 64, 64]. */
export const EMBEDDING_DIMS: readonly [1, number, number, number] = [1, EMBEDDING_CHANNELS, EMBEDDING_SIDE, EMBEDDING_SIDE];
/** Elements of one image embedding: 256 * 64 * 64. */
export const EMBEDDING_LENGTH = EMBEDDING_CHANNELS * EMBEDDING_SIDE * EMBEDDING_SIDE;
/** Side of the decoder's low-res masks and of mask_input: 4 * EMBEDDING_SIDE. */
export const LOW_RES_SIDE = 256;
/** Elements of one low-res mask: 256 * 256. */
export const LOW_RES_LENGTH = LOW_RES_SIDE * LOW_RES_SIDE;
/** What `sam models convert --quantize int8` appends to a model id (the engine tells the two conversions apart by it). */
export const INT8_MODEL_ID_SUFFIX = '-int8';
