import { open } from 'node:fs/promises';
import { join } from 'node:path';
import type { Command } from 'commander';
import { EMBEDDING_FORMAT, writeEmbeddingFile } from '../io/embedding-file.js';
import { loadImage } from '../io/image.js';
import { collectInputs } from '../io/inputs.js';
import { openModel } from '../hub/resolve.js';
import { embedImage } from '../engine/predictor.js';
import { finishBatch, parseIntOption, runBatch } from './common.js';

interface EmbedOptions {
  model: string;
  out: string;
  force?: boolean;
  threads?: number;
  jobs: number;
  quiet?: boolean;
}

/** The model id in an existing embedding file's header, without reading its data. */
async function existingModelId(path: string): Promise<string | undefined> {
  const fh = await open(path, 'r').catch(() => undefined);
  if (!fh) return undefined;
  try {
    const lenBuf = Buffer.alloc(8);
    await fh.read(lenBuf, 0, 8, 0);
    const len = Number(lenBuf.readBigUInt64LE(0));
    if (len <= 0 || len > 1 << 20) return undefined;
    const header = Buffer.alloc(len);
    await fh.read(header, 0, len, 8);
    const meta = (JSON.parse(header.toString('utf8')) as { __metadata__?: Record<string, string> }).__metadata__;
    return meta?.format === EMBEDDING_FORMAT ? meta.model_id : undefined;
  } catch {
    return undefined;
  } finally {
    await fh.close();
  }
}

export function registerEmbed(program: Command, setExit: (code: number) => void): void {
  program
    .command('embed')
    .description('run the image encoder once per image and store the embedding (<out>/<name>.safetensors)')
    .argument('<inputs...>', 'image files or folders (walked recursively)')
    .requiredOption('-m, --model <dir>', 'model folder (encoder + decoder .onnx, optional manifest.json) or the name of a pulled model')
    .requiredOption('-o, --out <dir>', 'output folder for .safetensors embedding files')
    .option('-f, --force', 'recompute embeddings that already exist')
    .option('-t, --threads <n>', 'onnxruntime threads (default: all cores)', parseIntOption('--threads', 1, 1024))
    .option('-j, --jobs <n>', 'images decoded/encoded concurrently', parseIntOption('--jobs', 1, 64), 1)
    .option('-q, --quiet', 'no progress output')
    .addHelpText('after', '\nExample:\n  sam embed photos/ --model models/sam_vit_b --out embeddings/\n')
    .action(async (inputs: string[], opts: EmbedOptions) => {
      const items = await collectInputs(inputs);
      const model = await openModel(opts.model, { threads: opts.threads });
      await model.encoder();
      const modelId = await model.id();
      const summary = await runBatch(
        items,
        async (item) => {
          const out = join(opts.out, `${item.key}.safetensors`);
          if (!opts.force && (await existingModelId(out)) === modelId) return { status: 'skipped' };
          const image = await loadImage(item.path);
          const state = await embedImage(model, image);
          await writeEmbeddingFile(out, { ...state, modelId, image: item.path, family: model.family });
          return { status: 'done' };
        },
        { jobs: opts.jobs, quiet: opts.quiet ?? false },
      );
      setExit(finishBatch(summary));
    });
}
