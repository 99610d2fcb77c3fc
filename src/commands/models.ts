import { rm, stat } from 'node:fs/promises';
import { basename } from 'node:path';
import cliProgress from 'cli-progress';
import { Option, type Command } from 'commander';
import type { ConvertProgress } from '../convert/convert.js';
import { QUANTIZATIONS, SAM_MODEL_TYPES, type Quantization, type SamModelType } from '../convert/configs.js';
import { SAM2_MODEL_TYPES, isSam2ModelType } from '../convert/sam2-configs.js';
import type { AnyModelType } from '../convert/convert.js';
import { modelError } from '../util/errors.js';
import { cacheDir, downloadPath, isConverted, modelQuantization, pulledModelDir } from '../hub/cache.js';
import { downloadCheckpoint, partialBytes, type DownloadEvents, type DownloadResult } from '../hub/download.js';
import { findRegistryEntry, loadRegistry, type RegistryEntry } from '../hub/registry.js';
import { verifyModel } from '../hub/verify.js';
import { fmtBytes, table } from '../util/format.js';

function isModelType(t: string): t is SamModelType {
  return (SAM_MODEL_TYPES as readonly string[]).includes(t);
}

// ---------------------------------------------------------------------------------------------
// Progress output: a byte bar on a TTY, a line per 10% otherwise, nothing with --quiet.

class DownloadProgress implements DownloadEvents {
  private bar?: cliProgress.SingleBar;
  private lastStep = -1;
  private started = 0;
  private from = 0;

  constructor(
    private readonly name: string,
    private readonly quiet: boolean,
    private readonly stream: NodeJS.WriteStream = process.stderr,
  ) {}

  start(info: { url: string; total: number | undefined; from: number; resumed: boolean }): void {
    this.started = Date.now();
    this.from = info.from;
    if (this.quiet) return;
    const what = info.resumed ? `resuming ${this.name} at ${fmtBytes(info.from)} of ${fmtBytes(info.total)}` : `downloading ${this.name} (${fmtBytes(info.total)})`;
    this.stream.write(`sam: ${what} from ${info.url}\n`);
    if (this.stream.isTTY && info.total !== undefined) {
      this.bar = new cliProgress.SingleBar(
        { stream: this.stream, format: '{bar} {percentage}% | {done} of {size} | {speed} | ETA {eta_formatted}', hideCursor: true, etaBuffer: 50 },
        cliProgress.Presets.shades_classic,
      );
      this.bar.start(info.total, info.from, { done: fmtBytes(info.from), size: fmtBytes(info.total), speed: '' });
    }
  }

  progress(received: number, total: number | undefined): void {
    if (this.quiet) return;
    const secs = (Date.now() - this.started) / 1000;
    const speed = secs > 0 ? `${fmtBytes((received - this.from) / secs)}/s` : '';
    if (this.bar) {
      this.bar.update(received, { done: fmtBytes(received), speed });
      return;
    }
    // Without a total: a line per 100 MB.
    const step = total ? Math.floor((received / total) * 10) : Math.floor(received / (100 * 1e6));
    if (step > this.lastStep) {
      if (this.lastStep >= 0 || received === total) {
        const pct = total ? `${Math.floor((received / total) * 100)}% ` : '';
        this.stream.write(`sam: ${this.name}: ${pct}${fmtBytes(received)} of ${fmtBytes(total)} ${speed}\n`);
      }
      this.lastStep = step;
    }
  }

  note(line: string): void {
    if (this.bar) this.stream.write('\r\x1b[K');
    this.stream.write(`sam: ${line}\n`);
  }

  stop(): void {
    this.bar?.stop();
    this.bar = undefined;
  }
}

function convertLogger(quiet: boolean): (e: ConvertProgress) => void {
  return (e) => {
    if (quiet || e.state !== 'done') return;
    process.stderr.write(`sam: convert: ${e.phase} ${(e.seconds ?? 0).toFixed(2)} s\n`);
  };
}

/** The converter (and its graph builders) only loads for the commands that need it. */
const loadConverter = () => import('../convert/convert.js');

// ---------------------------------------------------------------------------------------------
// list

type ModelState = 'converted' | 'downloaded' | 'partial' | 'not pulled';

interface ListedModel extends RegistryEntry {
  state: ModelState;
  modelDir?: string;
  /** 'int8' when the pulled model was converted with --quantize int8. */
  quantization?: string;
  checkpoint?: string;
  partialBytes?: number;
}

async function listModels(): Promise<{ cache: string; registry: string; models: ListedModel[] }> {
  const reg = await loadRegistry();
  const models: ListedModel[] = [];
  for (const e of reg.models) {
    const dir = pulledModelDir(e.name);
    const m: ListedModel = { ...e, state: 'not pulled' };
    const dl = (await stat(downloadPath(e)).catch(() => undefined))?.isFile() ? downloadPath(e) : undefined;
    const part = await partialBytes(e);
    if (await isConverted(dir)) {
      m.state = 'converted';
      m.modelDir = dir;
      const q = await modelQuantization(dir);
      if (q !== undefined) m.quantization = q;
    } else if (dl) {
      m.state = 'downloaded';
    } else if (part !== undefined) {
      m.state = 'partial';
      m.partialBytes = part;
    }
    if (dl) m.checkpoint = dl;
    models.push(m);
  }
  return { cache: cacheDir(), registry: reg.source, models };
}

// ---------------------------------------------------------------------------------------------

interface PullOptions {
  force?: boolean;
  downloadOnly?: boolean;
  keepCheckpoint?: boolean;
  quiet?: boolean;
  quantize?: Quantization;
}

interface ConvertOptions {
  type?: AnyModelType;
  out: string;
  force?: boolean;
  quiet?: boolean;
  attentionBiases: 'checkpoint' | 'zeros';
  quantize?: Quantization;
}

/** Every failure throws (exit.ts maps it); success is exit 0, so setExit is not needed here. */
export function registerModels(program: Command): void {
  const models = program
    .command('models')
    .description('list, download (pull), convert and verify SAM models')
    .addHelpText(
      'after',
      [
        '',
        'Pulled models live in the cache folder ($SAM_CACHE_DIR, else ~/.cache/sam on Linux, ~/Library/Caches/sam on',
        'macOS, %LOCALAPPDATA%\\sam\\Cache on Windows) and are used with --model NAME in embed, segment and auto.',
        '',
        'Examples:',
        '  sam models list',
        '  sam models pull mobile_sam',
        '  sam auto photos/ --model mobile_sam --out masks/',
        '',
      ].join('\n'),
    );
  // Help lists the subcommands in the order they are registered.
  registerList(models);
  registerPull(models);
  registerConvert(models);
  registerVerify(models);
}

// ---------------------------------------------------------------------------------------------
// sam models list

function registerList(models: Command): void {
  models
    .command('list')
    .description('known models: name, type, size, sha256, licence, whether pulled, source URL')
    .option('--json', 'print JSON (all fields, full sha256, cache paths)')
    .addHelpText('after', '\nExamples:\n  sam models list\n  sam models list --json\n')
    .action(modelsList);
}

async function modelsList(opts: { json?: boolean }): Promise<void> {
  const res = await listModels();
  if (opts.json) {
    process.stdout.write(`${JSON.stringify(res, null, 2)}\n`);
    return;
  }
  const rows = [['NAME', 'TYPE', 'SIZE', 'SHA256', 'LICENCE', 'STATE', 'SOURCE']];
  for (const m of res.models) {
    const state =
      m.state === 'partial' && m.size
        ? `partial ${Math.floor(((m.partialBytes ?? 0) / m.size) * 100)}%`
        : m.quantization
          ? `${m.state} (${m.quantization})`
          : m.state;
    rows.push([m.name, m.type, fmtBytes(m.size), m.sha256 ? `${m.sha256.slice(0, 12)}…` : 'unpublished', m.licence, state, m.url]);
  }
  process.stdout.write(`${table(rows)}\n`);
  process.stderr.write(`sam: cache folder ${res.cache}\n`);
}

// ---------------------------------------------------------------------------------------------
// sam models pull

function registerPull(models: Command): void {
  models
    .command('pull')
    .description('download a known model (resumable, sha256-checked) and convert it to ONNX in the cache folder')
    .argument('<name>', "model name from 'sam models list'")
    .option('-f, --force', 'download and convert again even if already pulled')
    .option('--download-only', 'download and verify the checkpoint, do not convert it')
    .option('--keep-checkpoint', 'keep the downloaded checkpoint after converting it (default: remove it)')
    .addOption(quantizeOption())
    .option('-q, --quiet', 'no progress output')
    .addHelpText(
      'after',
      [
        '',
        'An interrupted download resumes where it stopped when the command is run again.',
        'Offline? Download the checkpoint elsewhere and use: sam models convert FILE --type TYPE --out DIR',
        '',
        'Examples:',
        '  sam models pull mobile_sam',
        '  sam models pull sam_vit_b --force',
        '',
      ].join('\n'),
    )
    .action(modelsPull);
}

async function modelsPull(name: string, opts: PullOptions): Promise<void> {
  const entry = await findRegistryEntry(name);
  if (!isModelType(entry.type) && !isSam2ModelType(entry.type)) {
    throw modelError(`registry entry '${name}' has type '${entry.type}', not one of ${[...SAM_MODEL_TYPES, ...SAM2_MODEL_TYPES].join(', ')}; fix the registry`);
  }
  const quiet = opts.quiet ?? false;
  const log = (line: string): void => {
    if (!quiet) process.stderr.write(`sam: ${line}\n`);
  };
  const dir = pulledModelDir(name);
  if (!opts.force && !opts.downloadOnly && (await isConverted(dir))) {
    log(`${name} is already pulled; pass --force to download and convert it again`);
    process.stdout.write(`${dir}\n`);
    return;
  }
  const { dl, seconds } = await downloadWithProgress(entry, opts.force, quiet, log);
  if (opts.downloadOnly) {
    process.stdout.write(`${dl.path}\n`);
    return;
  }
  // A folder without manifest.json in the cache is a leftover; it is ours to replace.
  if (!(await isConverted(dir))) await rm(dir, { recursive: true, force: true });
  const { convertCheckpoint } = await loadConverter();
  const res = await convertCheckpoint(dl.path, entry.type, dir, { force: true, checkpointSha256: dl.sha256, onProgress: convertLogger(quiet), quantize: opts.quantize });
  if (!opts.keepCheckpoint) await rm(dl.path, { force: true });
  log(`pulled ${name} (${res.type}, id ${res.manifest.id}) into ${res.outDir}: download ${seconds.toFixed(1)} s, convert ${res.seconds.toFixed(1)} s`);
  process.stdout.write(`${res.outDir}\n`);
}

/** The verified checkpoint (downloaded now or already there) and the seconds that took. */
async function downloadWithProgress(
  entry: RegistryEntry,
  force: boolean | undefined,
  quiet: boolean,
  log: (line: string) => void,
): Promise<{ dl: DownloadResult; seconds: number }> {
  const started = performance.now();
  const progress = new DownloadProgress(entry.name, quiet);
  let dl: DownloadResult;
  try {
    dl = await downloadCheckpoint(entry, { force, events: progress });
  } finally {
    progress.stop();
  }
  const seconds = (performance.now() - started) / 1000;
  const checked = dl.checked ? 'sha256 ok' : 'sha256 not checked (none published)';
  log(dl.cached ? `${entry.file}: already downloaded, ${checked}` : `${entry.file}: ${fmtBytes(dl.bytes)} in ${seconds.toFixed(1)} s, ${checked}`);
  return { dl, seconds };
}

// ---------------------------------------------------------------------------------------------
// sam models convert

function registerConvert(models: Command): void {
  models
    .command('convert')
    .description('convert a PyTorch SAM, MobileSAM or SAM 2 / 2.1 checkpoint (.pth, .pt, .safetensors) to an ONNX model folder')
    .argument('<checkpoint>', 'checkpoint file')
    .addOption(new Option('--type <type>', 'model type (default: detected from the tensor shapes)').choices([...SAM_MODEL_TYPES, ...SAM2_MODEL_TYPES]))
    .requiredOption('-o, --out <dir>', 'output model folder (encoder.onnx, decoder.onnx, decoder_batched.onnx, manifest.json)')
    .option('-f, --force', 'replace an existing model folder at --out')
    .addOption(
      new Option('--attention-biases <which>', "vit_t: 'zeros' reproduces MobileSAM built without a later .eval() (TinyViT then ignores its trained attention biases)")
        .choices(['checkpoint', 'zeros'])
        .default('checkpoint'),
    )
    .addOption(quantizeOption())
    .option('-q, --quiet', 'no progress output')
    .addHelpText(
      'after',
      [
        '',
        'Nothing is written when the checkpoint does not match --type; a failed conversion leaves no folder behind.',
        '',
        'Examples:',
        '  sam models convert sam_vit_b_01ec64.pth --type vit_b --out models/sam_vit_b',
        '  sam models convert mobile_sam.pt --out models/mobile_sam',
        '  sam models convert sam2.1_hiera_tiny.pt --out models/sam2.1_hiera_tiny',
        '  sam models convert sam_vit_b_01ec64.pth --type vit_b --quantize int8 --out models/sam_vit_b_int8',
        '',
      ].join('\n'),
    )
    .action(modelsConvert);
}

async function modelsConvert(checkpoint: string, opts: ConvertOptions): Promise<void> {
  const quiet = opts.quiet ?? false;
  const { convertCheckpoint } = await loadConverter();
  const res = await convertCheckpoint(checkpoint, opts.type, opts.out, {
    force: opts.force,
    onProgress: convertLogger(quiet),
    attentionBiases: opts.attentionBiases,
    quantize: opts.quantize,
  });
  if (!quiet) {
    const files = Object.entries(res.manifest.files).map(([n, f]) => `${n} ${fmtBytes(f.bytes)}`);
    const q = res.quantized;
    const quantized = q ? `; ${q.linears} encoder Linears int8 (${fmtBytes(q.floatBytes)} of float weights → ${fmtBytes(q.quantizedBytes)})` : '';
    process.stderr.write(
      `sam: ${res.upgraded ? 'upgraded (graphs of an older sam replaced)' : 'converted'} ${checkpoint} (${res.type}, id ${res.manifest.id}) in ${res.seconds.toFixed(1)} s: ${files.join(', ')}${quantized}\n`,
    );
  }
  process.stdout.write(`${res.outDir}\n`);
}

/** --quantize for convert and pull: commander refuses other values with the allowed list. */
function quantizeOption(): Option {
  return new Option('--quantize <kind>', "opt-in 'int8': the encoder's Linears as dynamically quantized int8 (faster, smaller, approximate; own model id)").choices([
    ...QUANTIZATIONS,
  ]);
}

// ---------------------------------------------------------------------------------------------
// sam models verify

function registerVerify(models: Command): void {
  models
    .command('verify')
    .description('check a model folder: manifest, every file against its sha256, sessions load and fit the SAM contract')
    .argument('<model>', 'model folder, or the name of a pulled model')
    .addHelpText('after', '\nExit code 0 when everything checks out, 3 (model error) otherwise.\n\nExamples:\n  sam models verify mobile_sam\n  sam models verify models/sam_vit_b\n')
    .action(modelsVerify);
}

async function modelsVerify(arg: string): Promise<void> {
  const { dir, problems } = await verifyModel(arg, (c) => process.stdout.write(`${c.ok ? 'ok  ' : 'FAIL'}  ${c.what}: ${c.detail}\n`));
  if (problems.length > 0) {
    const first = problems[0];
    const more = problems.length > 1 ? ` and ${problems.length - 1} more problem(s)` : '';
    const fix = dir.startsWith(cacheDir()) ? `run 'sam models pull ${basename(dir)} --force'` : 'convert or download the model again';
    throw modelError(`${dir}: ${first.what}: ${first.detail}${more}; ${fix}`);
  }
  process.stderr.write(`sam: ${dir}: ok\n`);
}
