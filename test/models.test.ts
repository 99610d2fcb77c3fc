/**
 * `sam models`: pull against a local HTTP server (progress, resume via Range, checksum refusal,
 * offline error), list, convert (wrong --type refused before writing; end-to-end on the random
 * MobileSAM checkpoint), verify (ok and tampered), and --model NAME for a pulled model.
 */
import { createHash } from 'node:crypto';
import { cpSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EXIT } from '../src/commands/exit.js';
import { SamModel, type DecoderSession } from '../src/engine/model.js';
import { runSam, tempDir, type CliResult } from './helpers/cli.js';
import { TOL, goldenPath, sharedDir } from './helpers/golden.js';

const CKPT_NAME = 'vit_t-random.pth';
const checkpoint = goldenPath(join('convert', CKPT_NAME));
const bytes = readFileSync(checkpoint);
const sha256 = createHash('sha256').update(bytes).digest('hex');
const corrupt = Buffer.from(bytes);
/** The golden random SAM 2.1 tiny checkpoint, served for a SAM 2 pull. */
const sam2Bytes = readFileSync(join(sharedDir(), 'golden', 'sam2', 'sam2.1_hiera_tiny-random-fp16.pt'));
corrupt[corrupt.length >> 1] ^= 0xff;
/** Bytes the "drop" route sends before cutting the connection on its first request. */
const DROP_AFTER = 5_000_000;

const tmp = tempDir('sam-models-');
afterAll(() => tmp.cleanup());

interface Hit {
  path: string;
  range?: string;
  ifRange?: string;
  status: number;
}
const hits: Hit[] = [];
let dropped = false;
/** Route /toggle/: serves the real file until this is set, then the corrupt one. */
let toggleCorrupt = false;
const ETAG = '"vit-t-random-v1"';

function serve(req: IncomingMessage, res: ServerResponse, body: Buffer, hit: Hit): void {
  const range = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
  const ifRange = req.headers['if-range'];
  const start = range && (ifRange === undefined || ifRange === ETAG) ? Number(range[1]) : 0;
  const base = { etag: ETAG, 'accept-ranges': 'bytes', 'content-type': 'application/octet-stream' };
  if (start >= body.length && start > 0) {
    hit.status = 416;
    res.writeHead(416, { ...base, 'content-range': `bytes */${body.length}` });
    res.end();
    return;
  }
  if (start > 0) {
    hit.status = 206;
    res.writeHead(206, { ...base, 'content-length': body.length - start, 'content-range': `bytes ${start}-${body.length - 1}/${body.length}` });
  } else {
    hit.status = 200;
    res.writeHead(200, { ...base, 'content-length': body.length });
  }
  res.end(body.subarray(start));
}

let server: Server;
let base = '';
let closedPortBase = '';

beforeAll(async () => {
  server = createServer((req, res) => {
    const hit: Hit = { path: req.url ?? '', range: req.headers.range, ifRange: req.headers['if-range'] as string | undefined, status: 0 };
    hits.push(hit);
    const route = (req.url ?? '').split('/')[1];
    if (route === 'ok') return serve(req, res, bytes, hit);
    if (route === 'sam2') return serve(req, res, sam2Bytes, hit);
    if (route === 'bad') return serve(req, res, corrupt, hit);
    if (route === 'toggle') return serve(req, res, toggleCorrupt ? corrupt : bytes, hit);
    if (route === 'redirect') {
      hit.status = 302;
      res.writeHead(302, { location: `/ok/${CKPT_NAME}` });
      return res.end();
    }
    if (route === 'drop') {
      if (!dropped && !req.headers.range) {
        dropped = true;
        hit.status = 200;
        res.writeHead(200, { etag: ETAG, 'accept-ranges': 'bytes', 'content-length': bytes.length });
        // Cut the connection mid-body, as a flaky network would.
        res.write(bytes.subarray(0, DROP_AFTER), () => setTimeout(() => res.socket?.destroy(), 50));
        return;
      }
      return serve(req, res, bytes, hit);
    }
    hit.status = 404;
    res.writeHead(404);
    res.end();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  // A port nothing listens on: bind one, then close it.
  const probe = createServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  closedPortBase = `http://127.0.0.1:${(probe.address() as AddressInfo).port}`;
  await new Promise<void>((resolve) => probe.close(() => resolve()));

  const entry = (name: string, url: string, sum: string | null = sha256) => ({
    name,
    type: 'vit_t',
    url,
    size: bytes.length,
    sha256: sum,
    licence: 'Apache-2.0',
  });
  writeFileSync(
    join(tmp.dir, 'registry.json'),
    JSON.stringify({
      format: 'sam-registry/1',
      models: [
        entry('tiny_ok', `${base}/ok/${CKPT_NAME}`),
        entry('tiny_redirect', `${base}/redirect/${CKPT_NAME}`),
        entry('tiny_drop', `${base}/drop/${CKPT_NAME}`),
        entry('tiny_bad', `${base}/bad/${CKPT_NAME}`),
        entry('tiny_offline', `${closedPortBase}/ok/${CKPT_NAME}`),
        entry('tiny_nosum', `${base}/toggle/${CKPT_NAME}`, null),
        { name: 'tiny_sam2', type: 'sam2.1_hiera_tiny', url: `${base}/sam2/sam2.1_hiera_tiny.pt`, size: null, sha256: null, licence: 'Apache-2.0' },
      ],
    }),
  );
});

afterAll(async () => {
  await new Promise<void>((resolve) => server.close(() => resolve()));
});

let cacheCount = 0;
/** A fresh, empty cache folder for one test. */
function freshCache(): string {
  const dir = join(tmp.dir, `cache-${cacheCount++}`);
  mkdirSync(dir);
  return dir;
}

function sam(args: string[], cache: string): Promise<CliResult> {
  return runSam(args, { env: { SAM_REGISTRY: join(tmp.dir, 'registry.json'), SAM_CACHE_DIR: cache } });
}

const downloads = (cache: string): string[] => (existsSync(join(cache, 'downloads')) ? readdirSync(join(cache, 'downloads')).sort() : []);
const sha256Of = (path: string): string => createHash('sha256').update(readFileSync(path)).digest('hex');

describe('sam models pull', () => {
  it('downloads with progress, verifies, converts into the cache, and --model NAME uses it', async () => {
    const cache = freshCache();
    const r = await sam(['models', 'pull', 'tiny_ok'], cache);
    expect(r.stderr).not.toMatch(/error/);
    expect(r.code).toBe(EXIT.ok);
    expect(r.stderr).toMatch(/downloading tiny_ok \(40\.7 MB\) from http:\/\/127\.0\.0\.1:\d+\/ok\/vit_t-random\.pth/);
    // Non-TTY progress: a line per 10%, ending at 100%.
    expect(r.stderr).toMatch(/tiny_ok: 50% /);
    expect(r.stderr).toMatch(/tiny_ok: 100% 40\.7 MB of 40\.7 MB/);
    expect(r.stderr).toMatch(/vit_t-random\.pth: 40\.7 MB in [\d.]+ s, sha256 ok/);
    expect(r.stderr).toMatch(/convert: build encoder [\d.]+ s/);
    const dir = join(cache, 'models', 'tiny_ok');
    expect(r.stdout.trim()).toBe(dir);
    const manifest = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8')) as { id: string; source: { sha256: string }; batchedDecoder: string };
    expect(manifest.source.sha256).toBe(sha256);
    expect(manifest.id).toBe(`vit_t-${sha256.slice(0, 12)}`);
    expect(manifest.batchedDecoder).toBe('decoder_batched.onnx');
    // The checkpoint is removed once converted (no --keep-checkpoint); nothing partial is left.
    expect(downloads(cache)).toEqual([]);

    const again = await sam(['models', 'pull', 'tiny_ok'], cache);
    expect(again.code).toBe(EXIT.ok);
    expect(again.stderr).toMatch(/tiny_ok is already pulled; pass --force/);
    expect(again.stdout.trim()).toBe(dir);

    const list = await sam(['models', 'list', '--json'], cache);
    const listed = JSON.parse(list.stdout) as { models: { name: string; state: string; modelDir?: string }[] };
    expect(listed.models.find((m) => m.name === 'tiny_ok')).toMatchObject({ state: 'converted', modelDir: dir });

    const verify = await sam(['models', 'verify', 'tiny_ok'], cache);
    expect(verify.code).toBe(EXIT.ok);

    const out = join(tmp.dir, 'embed-out');
    const embed = await sam(['embed', join(sharedDir(), 'images', 'dog.jpg'), '--model', 'tiny_ok', '--out', out, '-q'], cache);
    expect(embed.stderr).toMatch(/1 done/);
    expect(embed.code).toBe(EXIT.ok);
    expect(existsSync(join(out, 'dog.safetensors'))).toBe(true);
  });

  it('follows redirects; --download-only keeps the verified checkpoint', async () => {
    const cache = freshCache();
    const r = await sam(['models', 'pull', 'tiny_redirect', '--download-only'], cache);
    expect(r.code).toBe(EXIT.ok);
    const file = join(cache, 'downloads', CKPT_NAME);
    expect(r.stdout.trim()).toBe(file);
    expect(sha256Of(file)).toBe(sha256);
    expect(downloads(cache)).toEqual([CKPT_NAME]);
    const list = await sam(['models', 'list'], cache);
    expect(list.stdout).toMatch(/tiny_redirect\s+vit_t\s+40\.7 MB\s+\S+\s+Apache-2\.0\s+downloaded\s+http/);

    // The kept checkpoint converts without downloading again; list shows an int8 pull.
    const q = await sam(['models', 'pull', 'tiny_redirect', '--quantize', 'int8', '-q'], cache);
    expect(q.code).toBe(EXIT.ok);
    expect((await sam(['models', 'list'], cache)).stdout).toMatch(/tiny_redirect\s+vit_t\s+40\.7 MB\s+\S+\s+Apache-2\.0\s+converted \(int8\)\s+http/);
    const listed = JSON.parse((await sam(['models', 'list', '--json'], cache)).stdout) as { models: { name: string; quantization?: string }[] };
    expect(listed.models.find((m) => m.name === 'tiny_redirect')?.quantization).toBe('int8');
  });

  it('resumes an interrupted download with an HTTP Range request', async () => {
    const cache = freshCache();
    const first = await sam(['models', 'pull', 'tiny_drop', '--download-only'], cache);
    expect(first.code).toBe(EXIT.model);
    const line = first.stderr.trim().split('\n').pop() ?? '';
    expect(line).toMatch(/^sam: error: download of http:\/\/127\.0\.0\.1:\d+\/drop\/vit_t-random\.pth interrupted after \d+ of 40727344 bytes .*; run the same command again to resume/);
    const part = join(cache, 'downloads', `${CKPT_NAME}.part`);
    expect(existsSync(part)).toBe(true);
    const have = readFileSync(part).length;
    expect(have).toBeGreaterThan(0);
    expect(have).toBeLessThanOrEqual(DROP_AFTER);

    const list = await sam(['models', 'list'], cache);
    expect(list.stdout).toMatch(/tiny_drop .* partial \d+%/);

    const before = hits.length;
    const second = await sam(['models', 'pull', 'tiny_drop', '--download-only'], cache);
    expect(second.code).toBe(EXIT.ok);
    expect(second.stderr).toMatch(/resuming tiny_drop at [\d.]+ MB of 40\.7 MB/);
    const resumed = hits.slice(before).filter((h) => h.path.startsWith('/drop/'));
    expect(resumed).toHaveLength(1);
    expect(resumed[0].range).toBe(`bytes=${have}-`);
    expect(resumed[0].ifRange).toBe(ETAG);
    expect(resumed[0].status).toBe(206);
    expect(sha256Of(join(cache, 'downloads', CKPT_NAME))).toBe(sha256);
    expect(downloads(cache)).toEqual([CKPT_NAME]);
  });

  it('refuses a checksum mismatch and removes the file', async () => {
    const cache = freshCache();
    const r = await sam(['models', 'pull', 'tiny_bad'], cache);
    expect(r.code).toBe(EXIT.model);
    const line = r.stderr.trim().split('\n').pop() ?? '';
    expect(line).toBe(
      `sam: error: vit_t-random.pth: sha256 mismatch (expected ${sha256}, got ${createHash('sha256').update(corrupt).digest('hex')}); ` +
        "the download is corrupt or the file changed upstream, so it was removed — run 'sam models pull tiny_bad' again",
    );
    expect(downloads(cache)).toEqual([]);
    expect(existsSync(join(cache, 'models', 'tiny_bad'))).toBe(false);
  });

  it('offline (unreachable host): one line naming the URL and the fix, model exit code', async () => {
    const cache = freshCache();
    const r = await sam(['models', 'pull', 'tiny_offline'], cache);
    expect(r.code).toBe(EXIT.model);
    const lines = r.stderr.trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toBe(
      `sam: error: cannot download ${closedPortBase}/ok/vit_t-random.pth: connection refused (ECONNREFUSED); check the network connection, ` +
        `or download ${closedPortBase}/ok/vit_t-random.pth on another machine and run 'sam models convert vit_t-random.pth --type vit_t --out DIR'`,
    );
    expect(downloads(cache)).toEqual([]);
  });

  it('without a published checksum: records the first download\'s sha256 and checks later downloads against it', async () => {
    const cache = freshCache();
    toggleCorrupt = false;
    const first = await sam(['models', 'pull', 'tiny_nosum', '--download-only'], cache);
    expect(first.code).toBe(EXIT.ok);
    expect(first.stderr).toContain(`warning: tiny_nosum has no published checksum; recorded sha256 ${sha256}`);
    const recorded = JSON.parse(readFileSync(join(cache, 'checksums.json'), 'utf8')) as Record<string, { sha256: string }>;
    expect(recorded.tiny_nosum.sha256).toBe(sha256);

    toggleCorrupt = true;
    try {
      const second = await sam(['models', 'pull', 'tiny_nosum', '--download-only', '--force'], cache);
      expect(second.code).toBe(EXIT.model);
      expect(second.stderr).toMatch(/sha256 mismatch \(expected [0-9a-f]{64}, got [0-9a-f]{64}\)/);
      expect(downloads(cache)).toEqual([]);
    } finally {
      toggleCorrupt = false;
    }
  });

  it('a SAM 2 entry (no published size or checksum) downloads and converts to a SAM 2 model folder', async () => {
    const cache = freshCache();
    const r = await sam(['models', 'pull', 'tiny_sam2'], cache);
    expect(r.code, r.stderr).toBe(EXIT.ok);
    expect(r.stderr).toContain('warning: tiny_sam2 has no published checksum; recorded sha256');
    expect(r.stderr).toMatch(/pulled tiny_sam2 \(sam2\.1_hiera_tiny, id sam2\.1_hiera_tiny-[0-9a-f]{12}\)/);
    const dir = r.stdout.trim();
    const m = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8')) as Record<string, unknown>;
    expect(m).toMatchObject({ family: 'sam2', type: 'sam2.1_hiera_tiny', decoder: 'decoder.onnx', singleMaskDecoder: 'decoder_single.onnx' });
    expect(downloads(cache)).toEqual([]);
    const model = await SamModel.open(dir);
    expect(model.family).toBe('sam2');
  }, 300_000);

  it('--quantize and --attention-biases zeros on a SAM 2 checkpoint: one-line usage error, nothing written', async () => {
    const ckpt = join(sharedDir(), 'golden', 'sam2', 'sam2.1_hiera_tiny-random-fp16.pt');
    for (const flags of [['--quantize', 'int8'], ['--attention-biases', 'zeros']]) {
      const out = join(tmp.dir, `sam2-${flags[0].slice(2)}`);
      const r = await runSam(['models', 'convert', ckpt, '--out', out, '-q', ...flags]);
      expect(r.code, r.stderr).toBe(EXIT.usage);
      expect(r.stderr.trim()).toMatch(/^sam: error: --attention-biases and --quantize apply to SAM and MobileSAM checkpoints; sam2\.1_hiera_tiny-random-fp16\.pt is SAM 2: drop them$/);
      expect(existsSync(out)).toBe(false);
    }
  });

  it('unknown name is a usage error listing the known models', async () => {
    const r = await sam(['models', 'pull', 'nope'], freshCache());
    expect(r.code).toBe(EXIT.usage);
    expect(r.stderr.trim()).toMatch(/^sam: error: unknown model 'nope'; known models: tiny_ok, .*\(see 'sam models list'\)$/);
  });
});

describe('sam models list', () => {
  it('prints the packaged registry: name, type, size, sha256, licence, state, source URL', async () => {
    const r = await runSam(['models', 'list'], { env: { SAM_CACHE_DIR: freshCache(), SAM_REGISTRY: '' } });
    expect(r.code).toBe(EXIT.ok);
    const lines = r.stdout.trim().split('\n');
    expect(lines[0]).toMatch(/^NAME\s+TYPE\s+SIZE\s+SHA256\s+LICENCE\s+STATE\s+SOURCE$/);
    expect(lines).toHaveLength(13);
    expect(r.stdout).toMatch(/sam_vit_b\s+vit_b\s+375\.0 MB\s+ec2df6273261…\s+Apache-2\.0\s+not pulled\s+https:\/\/dl\.fbaipublicfiles\.com\/segment_anything\/sam_vit_b_01ec64\.pth/);
    expect(r.stdout).toMatch(/mobile_sam\s+vit_t\s+40\.7 MB\s+6dbb90523a35…\s+Apache-2\.0\s+not pulled\s+https:\/\/github\.com\/ChaoningZhang\/MobileSAM\/raw\/master\/weights\/mobile_sam\.pt/);
    const json = await runSam(['models', 'list', '--json'], { env: { SAM_CACHE_DIR: freshCache(), SAM_REGISTRY: '' } });
    const parsed = JSON.parse(json.stdout) as { models: { name: string; sha256: string | null; size: number | null; type: string }[] };
    const SAM2 = ['tiny', 'small', 'base_plus', 'large'];
    expect(parsed.models.map((m) => m.name)).toEqual(['sam_vit_b', 'sam_vit_l', 'sam_vit_h', 'mobile_sam', ...SAM2.map((s) => `sam2.1_hiera_${s}`), ...SAM2.map((s) => `sam2_hiera_${s}`)]);
    // SAM 2: Meta's published URLs; no sizes or checksums are published (pull records the first download's).
    expect(r.stdout).toMatch(/sam2\.1_hiera_tiny\s+sam2\.1_hiera_tiny\s+\?\s+unpublished\s+Apache-2\.0\s+not pulled\s+https:\/\/dl\.fbaipublicfiles\.com\/segment_anything_2\/092824\/sam2\.1_hiera_tiny\.pt/);
    expect(r.stdout).toMatch(/sam2_hiera_large\s+sam2_hiera_large\s+\?\s+unpublished\s+Apache-2\.0\s+not pulled\s+https:\/\/dl\.fbaipublicfiles\.com\/segment_anything_2\/072824\/sam2_hiera_large\.pt/);
    for (const m of parsed.models.filter((x) => x.name.startsWith('sam2'))) expect([m.type, m.size, m.sha256]).toEqual([m.name, null, null]);
    for (const m of parsed.models) {
      expect(m.sha256 === null || /^[0-9a-f]{64}$/.test(m.sha256)).toBe(true);
    }
  });
});

const CONVERTED_FILES = [
  'decoder.onnx',
  'decoder_batched.onnx',
  'decoder_image.onnx',
  'decoder_masks.onnx',
  'decoder_prompt.onnx',
  'encoder.onnx',
  'encoder.onnx.data',
  'manifest.json',
];

describe('sam models convert and verify', () => {
  const out = join(tmp.dir, 'converted');

  it('a wrong --type fails clearly before anything is written', async () => {
    const target = join(tmp.dir, 'wrong-type');
    const r = await runSam(['models', 'convert', checkpoint, '--type', 'vit_b', '--out', target]);
    expect(r.code).toBe(EXIT.model);
    expect(r.stderr.trim().split('\n').pop()).toMatch(/^sam: error: checkpoint vit_t-random\.pth is vit_t .*not vit_b; pass --type vit_t$/);
    expect(existsSync(target)).toBe(false);
    expect(readdirSync(tmp.dir).filter((f) => f.includes('wrong-type'))).toEqual([]);
  });

  it('converts the MobileSAM checkpoint end to end (type detected) and verify passes', async () => {
    const r = await runSam(['models', 'convert', checkpoint, '--out', out]);
    expect(r.stderr).not.toMatch(/error/);
    expect(r.code).toBe(EXIT.ok);
    expect(r.stdout.trim()).toBe(out);
    expect(readdirSync(out).sort()).toEqual(CONVERTED_FILES);
    const manifest = JSON.parse(readFileSync(join(out, 'manifest.json'), 'utf8')) as {
      format: string;
      splitDecoder: Record<string, string>;
      type: string;
      decoderBatched: boolean;
      files: Record<string, { sha256: string; bytes: number }>;
      source: { checkpoint: string; sha256: string };
    };
    expect(manifest).toMatchObject({ format: 'sam-onnx/1', type: 'vit_t', decoderBatched: false, source: { checkpoint: CKPT_NAME, sha256 } });
    expect(manifest.splitDecoder).toEqual({ image: 'decoder_image.onnx', prompt: 'decoder_prompt.onnx', masks: 'decoder_masks.onnx' });
    expect(Object.keys(manifest.files).sort()).toEqual(CONVERTED_FILES.filter((f) => f !== 'manifest.json'));
    for (const [name, f] of Object.entries(manifest.files)) expect(sha256Of(join(out, name))).toBe(f.sha256);
    for (const phase of ['read checkpoint', 'build encoder', 'write encoder', 'build decoder', 'build batched decoder', 'build decoder prompt side']) {
      expect(r.stderr).toMatch(new RegExp(`convert: ${phase} [\\d.]+ s`));
    }

    const v = await runSam(['models', 'verify', out]);
    expect(v.code).toBe(EXIT.ok);
    expect(v.stdout).toMatch(/ok\s+encoder\.onnx: /);
    expect(v.stdout).toMatch(/ok\s+batched decoder: 3 prompts per call, 4 masks per prompt/);
    expect(v.stdout).toMatch(/ok\s+split decoder: image side, IoU for 3 prompts, masks for 2 of them, 4 masks per prompt: ok/);

    const again = await runSam(['models', 'convert', checkpoint, '--out', out]);
    expect(again.code).toBe(EXIT.output);
    expect(again.stderr).toMatch(/already exists and is not empty; pass --force/);
  });

  // Three point prompts (point + padding point) on a fixed pseudo-random embedding.
  const PROMPTS = [
    [100, 200, 0, 0],
    [512, 300, 0, 0],
    [900, 800, 0, 0],
  ];
  const LABELS = [1, -1];
  const LOW = 256 * 256;
  const testEmbeddings = (): ort.Tensor => {
    const emb = new Float32Array(256 * 64 * 64);
    for (let i = 0; i < emb.length; i++) emb[i] = Math.sin(i * 0.37) * 0.5;
    return new ort.Tensor('float32', emb, [1, 256, 64, 64]);
  };
  /** The single-prompt decoder's answer to PROMPTS[i]. */
  const singleAnswer = async (single: DecoderSession, embeddings: ort.Tensor, i: number) =>
    single.run({ embeddings, pointCoords: Float32Array.from(PROMPTS[i]), pointLabels: Float32Array.from(LABELS), batch: 1, numPoints: 2, origSize: [64, 64] }, ['low_res_masks']);
  const maxAbsDiff = (a: Float32Array, b: Float32Array): number => {
    let max = 0;
    for (let k = 0; k < a.length; k++) max = Math.max(max, Math.abs(a[k] - b[k]));
    return max;
  };

  it('the batched decoder gives each prompt what the single-prompt decoder gives', async () => {
    const model = await SamModel.open(out, { threads: 2 });
    const single = await model.decoder();
    const batched = await model.batchedDecoder();
    expect(single.batched).toBe(false);
    expect(batched?.batched).toBe(true);
    const embeddings = testEmbeddings();
    const b = PROMPTS.length;
    const res = await batched!.run(
      { embeddings, pointCoords: Float32Array.from(PROMPTS.flat()), pointLabels: Float32Array.from(PROMPTS.flatMap(() => LABELS)), batch: b, numPoints: 2, origSize: [1, 1] },
      ['low_res_masks'],
    );
    const m = res.numMasks;
    for (let i = 0; i < b; i++) {
      const one = await singleAnswer(single, embeddings, i);
      expect(one.numMasks).toBe(m);
      expect(maxAbsDiff(res.lowResMasks!.subarray(i * m * LOW, (i + 1) * m * LOW), one.lowResMasks!)).toBeLessThan(TOL.decoderLogits.max);
      for (let k = 0; k < m; k++) expect(Math.abs(res.iouPredictions[i * m + k] - one.iouPredictions[k])).toBeLessThan(TOL.decoderIou.max);
    }
  });

  it('the split decoder (image side, IoU stage, mask stage for chosen rows) gives each prompt what the single-prompt decoder gives', async () => {
    const model = await SamModel.open(out, { threads: 2 });
    const single = await model.decoder();
    const split = await model.splitDecoder();
    expect(split).toBeDefined();
    expect(await model.amgDecoder('auto')).toBe(split);
    const embeddings = testEmbeddings();
    const image = await split!.imageSide(embeddings);
    const stage1 = await split!.promptSide(image, Float32Array.from(PROMPTS.flat()), Float32Array.from(PROMPTS.flatMap(() => LABELS)), PROMPTS.length, 2);
    const m = stage1.numMasks;
    expect(m).toBe(4);
    // Stage 2 for prompts 2 and 0 only, in that order.
    const rows = Int32Array.from([2, 0]);
    const lowRes = await split!.maskSide(stage1, rows);
    for (let i = 0; i < PROMPTS.length; i++) {
      const one = await singleAnswer(single, embeddings, i);
      for (let k = 0; k < m; k++) expect(Math.abs(stage1.iouPredictions[i * m + k] - one.iouPredictions[k])).toBeLessThan(TOL.decoderIou.max);
      const j = rows.indexOf(i);
      if (j < 0) continue;
      expect(maxAbsDiff(lowRes.subarray(j * m * LOW, (j + 1) * m * LOW), one.lowResMasks!)).toBeLessThan(TOL.decoderLogits.max);
    }
  });

  it('convert upgrades a folder converted before the split decoder existed, and refuses another checkpoint\'s folder', async () => {
    const old = join(tmp.dir, 'old-conversion');
    cpSync(out, old, { recursive: true });
    const manifestPath = join(old, 'manifest.json');
    const manifest = JSON.parse(readFileSync(manifestPath, 'utf8')) as {
      id: string;
      splitDecoder?: unknown;
      files: Record<string, unknown>;
      source: { sha256: string };
      converter: { graphVersion?: number };
    };
    delete manifest.splitDecoder;
    delete manifest.converter.graphVersion;
    for (const f of ['decoder_image.onnx', 'decoder_prompt.onnx', 'decoder_masks.onnx']) {
      rmSync(join(old, f));
      delete manifest.files[f];
    }
    writeFileSync(manifestPath, JSON.stringify(manifest));
    expect((await SamModel.open(old)).manifest?.splitDecoder).toBeUndefined();

    const other = join(tmp.dir, 'other-conversion');
    cpSync(old, other, { recursive: true });
    writeFileSync(join(other, 'manifest.json'), JSON.stringify({ ...manifest, source: { ...manifest.source, sha256: '0'.repeat(64) } }));
    const refused = await runSam(['models', 'convert', checkpoint, '--out', other]);
    expect(refused.code).toBe(EXIT.output);
    expect(refused.stderr).toMatch(/holds a model converted from another checkpoint .*; pass --force/);

    const r = await runSam(['models', 'convert', checkpoint, '--out', old]);
    expect(r.code).toBe(EXIT.ok);
    expect(r.stderr).toMatch(/sam: upgraded \(graphs of an older sam replaced\)/);
    expect(readdirSync(old).sort()).toEqual(CONVERTED_FILES);
    const upgraded = JSON.parse(readFileSync(manifestPath, 'utf8')) as { id: string };
    // Same checkpoint, same id: embedding files made before the upgrade stay valid.
    expect(upgraded.id).toBe(manifest.id);
    expect(sha256Of(join(old, 'encoder.onnx'))).toBe(sha256Of(join(out, 'encoder.onnx')));
    expect((await SamModel.open(old)).manifest?.splitDecoder).toBeDefined();
    expect((JSON.parse(readFileSync(manifestPath, 'utf8')) as { converter: { graphVersion: number } }).converter.graphVersion).toBe(3);
  });

  it('verify fails with the model exit code on a tampered file', async () => {
    const dec = join(out, 'decoder.onnx');
    const data = readFileSync(dec);
    const tampered = Buffer.from(data);
    tampered[tampered.length - 10] ^= 0x01;
    writeFileSync(dec, tampered);
    try {
      const v = await runSam(['models', 'verify', out]);
      expect(v.code).toBe(EXIT.model);
      expect(v.stdout).toMatch(/FAIL\s+decoder\.onnx: sha256 mismatch \(manifest [0-9a-f]{64}, file [0-9a-f]{64}\)/);
      expect(v.stderr.trim()).toMatch(/^sam: error: .*converted: decoder\.onnx: sha256 mismatch .*; convert or download the model again$/);
    } finally {
      writeFileSync(dec, data);
    }
  });

  it('verify on a folder without manifest.json tries the sessions: none there fails naming the fix', async () => {
    // A folder of exported .onnx files without manifest is verified by loading it (test/sam2-samexporter.test.ts).
    const empty = join(tmp.dir, 'no-manifest');
    mkdirSync(empty);
    const v = await runSam(['models', 'verify', empty]);
    expect(v.code).toBe(EXIT.model);
    expect(v.stdout).toMatch(/ok\s+manifest\.json: none: encoder and decoder found by file name or ONNX inputs, no checksums/);
    expect(v.stdout).toMatch(/FAIL\s+sessions: model folder .* holds 0 \.onnx file\(s\), need an encoder and a decoder; put the encoder and decoder \.onnx files there, or write manifest\.json/);
  });
});
