/**
 * `--model` arguments: a model folder, or the name of a model pulled into the cache.
 */
import { stat } from 'node:fs/promises';
import { isAbsolute, sep } from 'node:path';
import { SamModel, type SessionOptions } from '../engine/model.js';
import { modelError } from '../util/errors.js';
import { isConverted, pulledModelDir } from './cache.js';
import { MODEL_NAME, loadRegistry } from './registry.js';

const looksLikePath = (arg: string): boolean =>
  arg.includes('/') || arg.includes(sep) || arg.startsWith('.') || arg.startsWith('~') || isAbsolute(arg);

/**
 * `--model` argument → model folder. An existing path (or anything that looks like one) is
 * returned as is; a bare name is a model pulled into the cache (`sam models pull NAME`).
 */
export async function resolveModelArg(arg: string): Promise<string> {
  if (looksLikePath(arg) || (await stat(arg).catch(() => undefined))) return arg;
  if (!MODEL_NAME.test(arg)) return arg;
  const dir = pulledModelDir(arg);
  if (await isConverted(dir)) return dir;
  const reg = await loadRegistry().catch(() => undefined);
  if (reg?.models.some((m) => m.name === arg)) {
    throw modelError(`model '${arg}' is not pulled yet; run 'sam models pull ${arg}'`);
  }
  const known = reg ? ` (known models: ${reg.models.map((m) => m.name).join(', ')})` : '';
  throw modelError(`--model ${arg} is neither a model folder nor a pulled model name${known}; pass a folder with encoder and decoder .onnx files, or run 'sam models pull NAME'`);
}

/** Open the model a `--model` argument names (see resolveModelArg). */
export async function openModel(arg: string, options: SessionOptions = {}): Promise<SamModel> {
  return SamModel.open(await resolveModelArg(arg), options);
}
