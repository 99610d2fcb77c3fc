/**
 * `sam models verify`: a model folder's manifest, the sha256 of every file it lists, then a test
 * inference through the engine (engine/probe.ts).
 */
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { probeModel } from '../engine/probe.js';
import { SamModel } from '../engine/model.js';
import { SamError, errorMessage, modelError } from '../util/errors.js';
import { fmtBytes } from '../util/format.js';
import { sha256File } from '../util/hash.js';
import { resolveModelArg } from './resolve.js';

export interface Check {
  ok: boolean;
  what: string;
  detail: string;
}

interface ManifestFiles {
  format?: string;
  id?: string;
  type?: string;
  encoder?: string;
  decoder?: string;
  batchedDecoder?: string;
  splitDecoder?: { image?: string; prompt?: string; masks?: string };
  quantization?: string;
  files?: Record<string, { sha256?: string; bytes?: number }>;
}

export async function verifyModel(arg: string, log: (c: Check) => void): Promise<{ dir: string; problems: Check[] }> {
  const dir = await resolveModelArg(arg);
  const problems: Check[] = [];
  const report = (c: Check): void => {
    log(c);
    if (!c.ok) problems.push(c);
  };
  const info = await stat(dir).catch(() => undefined);
  if (!info?.isDirectory()) throw modelError(`model folder ${dir} does not exist; pass a model folder or the name of a pulled model`);
  const manifestPath = join(dir, 'manifest.json');
  const text = await readFile(manifestPath, 'utf8').catch(() => undefined);
  if (text === undefined) {
    // A folder of exported .onnx files (the official export, samexporter): nothing to checksum, but the sessions can still be tried.
    report({ ok: true, what: 'manifest.json', detail: 'none: encoder and decoder found by file name or ONNX inputs, no checksums to check (sam models convert writes them)' });
    await probe(dir, report);
    return { dir, problems };
  }
  let manifest: ManifestFiles;
  try {
    manifest = JSON.parse(text) as ManifestFiles;
  } catch (err) {
    throw modelError(`${manifestPath}: not valid JSON (${(err as Error).message}); convert the model again`, err);
  }
  const weights = typeof manifest.quantization === 'string' ? `${manifest.quantization} (quantized encoder)` : 'float32';
  report({ ok: true, what: 'manifest.json', detail: `format ${manifest.format ?? '?'}, id ${manifest.id ?? '?'}, type ${manifest.type ?? '?'}, weights ${weights}` });

  const files = manifest.files;
  if (files && typeof files === 'object') {
    const roles: [string, unknown][] = [
      ['encoder', manifest.encoder],
      ['decoder', manifest.decoder],
      ['batchedDecoder', manifest.batchedDecoder],
      ...(['image', 'prompt', 'masks'] as const).map((k): [string, unknown] => [`splitDecoder.${k}`, manifest.splitDecoder?.[k]]),
    ];
    for (const [role, f] of roles) {
      if (typeof f === 'string' && !(f in files)) report({ ok: false, what: f, detail: `the ${role} file is not listed in "files" of manifest.json` });
    }
    for (const [name, want] of Object.entries(files).sort(([a], [b]) => a.localeCompare(b))) {
      const path = join(dir, name);
      const st = await stat(path).catch(() => undefined);
      if (!st?.isFile()) {
        report({ ok: false, what: name, detail: 'missing' });
        continue;
      }
      if (typeof want.bytes === 'number' && st.size !== want.bytes) {
        report({ ok: false, what: name, detail: `size ${st.size} bytes, manifest says ${want.bytes}` });
        continue;
      }
      const sha = await sha256File(path);
      if (typeof want.sha256 === 'string' && sha !== want.sha256) report({ ok: false, what: name, detail: `sha256 mismatch (manifest ${want.sha256}, file ${sha})` });
      else report({ ok: true, what: name, detail: `${fmtBytes(st.size)}, sha256 ${sha.slice(0, 16)}…` });
    }
  } else {
    report({ ok: true, what: 'files', detail: 'manifest.json records no checksums (hand-written?); checking that the sessions load' });
  }
  // Loading a file whose bytes are known to be wrong proves nothing; stop at the first kind of problem.
  if (problems.length > 0) return { dir, problems };

  await probe(dir, report);
  return { dir, problems };
}

/** Load the folder's sessions and run the engine's test prompts (engine/probe.ts). */
async function probe(dir: string, report: (c: Check) => void): Promise<void> {
  try {
    const model = await SamModel.open(dir, { threads: 1 });
    if (!model.manifest) report({ ok: true, what: 'family', detail: `${model.family === 'sam2' ? 'SAM 2' : 'SAM (v1 / MobileSAM)'}, from the decoder's inputs` });
    for (const c of await probeModel(model)) report(c);
  } catch (err) {
    if (!(err instanceof SamError)) throw err;
    report({ ok: false, what: 'sessions', detail: errorMessage(err) });
  }
}
