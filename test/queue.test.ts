/**
 * `sam queue` and `sam worker` against a real redis-server: outputs identical to `sam auto`,
 * nothing lost or duplicated when a worker is SIGKILLed or Redis restarts, bad images failed
 * once with their error, and one-line refusals that leave the queue as it was.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { copyFileSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { jobIdForKey, keyForJobId, settingsDifferences, type QueueSettings } from '../src/queue/settings.js';
import { parseRedisUrl } from '../src/queue/redis.js';
import { REPO_ROOT, SAM_BIN, fixtureImage, fixtureModel, runSam, tempDir, type CliResult } from './helpers/cli.js';
import { freePort, RedisServer } from '../fixtures/redis-server.js';
import { copyScenes } from './helpers/scenes.js';

const SCENES = ['basic-320x240', 'exif-rot6-300x200', 'gray-200x200', 'rgba-320x240', 'small-96x64', 'tall-200x500', 'wide-640x360', 'speck-hole-256'];
/** 24 images in two folders (keys with a '/'). */
const NAMES = [...SCENES.map((s) => `a/${s}`), ...SCENES.map((s) => `b/${s}`), ...SCENES.map((s) => `c/deep/${s}`)];
const AMG = ['--points-per-side', '8'];
/** Short locks so a killed worker's image runs again within seconds. */
const LOCKS = ['--lock-duration', '2000', '--stalled-interval', '500'];

let redis: RedisServer;
let work: { dir: string; cleanup: () => void };
let images: string;
let reference: string;
let referenceCoco: string;

interface Background {
  child: ChildProcess;
  output: () => string;
  done: Promise<CliResult>;
  exited: () => boolean;
}

/** A `sam` process left running (a worker), its stderr collected. */
function startSam(args: readonly string[]): Background {
  const child = spawn(process.execPath, [SAM_BIN, ...args], { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  let exited = false;
  const done = new Promise<CliResult>((resolve) =>
    child.on('close', (code, signal) => {
      exited = true;
      resolve({ code, signal, stdout, stderr });
    }),
  );
  return { child, output: () => stderr, done, exited: () => exited };
}

interface Status {
  waiting: number;
  active: number;
  delayed: number;
  completed: number;
  failed: number;
  total: number;
}

async function status(queue: string): Promise<Status> {
  const r = await runSam(['queue', 'status', '--redis', redis.url, '--queue', queue, '--json']);
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as Status;
}

/** Poll the queue until `ok`; fails early when the worker it waits on has exited. */
async function waitFor(queue: string, bg: Background, ok: (s: Status) => boolean, timeoutMs = 60_000): Promise<Status> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const s = await status(queue);
    if (ok(s)) return s;
    if (bg.exited()) throw new Error(`the worker exited before queue ${queue} got there: ${bg.output()}`);
    if (Date.now() > until) throw new Error(`queue ${queue} did not get there in time: ${JSON.stringify(s)}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

const worker = (queue: string, ...extra: string[]) =>
  startSam(['worker', '--redis', redis.url, '--queue', queue, '--model', fixtureModel(), '--jobs', '1', '--threads', '1', '--exit-when-empty', ...LOCKS, ...extra]);

const add = (queue: string, inputs: string, out: string, ...extra: string[]) =>
  runSam(['queue', 'add', inputs, '--redis', redis.url, '--queue', queue, '--model', fixtureModel(), '--out', out, ...AMG, ...extra]);

/** Every file under `dir`, relative, '/'-separated, sorted. */
function tree(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else out.push(path.relative(dir, p).split(path.sep).join('/'));
    }
  };
  walk(dir);
  return out.sort();
}

function expectSameTree(dir: string, ref: string): void {
  const files = tree(dir);
  expect(files).toEqual(tree(ref));
  for (const f of files) expect(readFileSync(path.join(dir, f)).equals(readFileSync(path.join(ref, f))), f).toBe(true);
}

/** Keys a worker log reports as done or skipped (one line per completed job). */
function finishedKeys(log: string): string[] {
  return [...log.matchAll(/^(?:done|skipped) (\S+) \(/gm)].map((m) => m[1]);
}

beforeAll(async () => {
  redis = await RedisServer.start();
  work = tempDir('sam-queue-');
  images = path.join(work.dir, 'images');
  copyScenes(images, NAMES);
  reference = path.join(work.dir, 'reference');
  referenceCoco = path.join(work.dir, 'reference.json');
  const r = await runSam(['auto', images, '--model', fixtureModel(), '--out', reference, '--coco', referenceCoco, '-q', ...AMG]);
  expect(r.code, r.stderr).toBe(0);
});

afterAll(async () => {
  await redis?.close();
  work?.cleanup();
});

describe('sam queue + sam worker on a real Redis', () => {
  it('two workers write exactly what sam auto writes, each image once; collect writes its COCO file', async () => {
    const out = path.join(work.dir, 'two');
    const a = await add('two', images, out);
    expect(a.code, a.stderr).toBe(0);
    expect(a.stderr).toContain(`added ${NAMES.length} image(s)`);
    const [w1, w2] = [worker('two'), worker('two')];
    const [r1, r2] = await Promise.all([w1.done, w2.done]);
    expect(r1.code, r1.stderr).toBe(0);
    expect(r2.code, r2.stderr).toBe(0);
    const s = await status('two');
    expect(s).toMatchObject({ waiting: 0, active: 0, delayed: 0, completed: NAMES.length, failed: 0, total: NAMES.length });
    const keys = [...finishedKeys(r1.stderr), ...finishedKeys(r2.stderr)].sort();
    expect(keys).toEqual(NAMES.slice().sort());
    expectSameTree(out, reference);

    const coco = path.join(work.dir, 'two.json');
    const c = await runSam(['queue', 'collect', '--redis', redis.url, '--queue', 'two', '--coco', coco]);
    expect(c.code, c.stderr).toBe(0);
    expect(readFileSync(coco).equals(readFileSync(referenceCoco))).toBe(true);
  });

  it('adding the same folder again adds nothing; other settings are refused and change nothing', async () => {
    const out = path.join(work.dir, 'again');
    expect((await add('again', images, out)).code).toBe(0);
    const before = await status('again');
    const again = await add('again', images, out);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stderr).toContain(`added 0 image(s) to queue 'again'`);
    expect(again.stderr).toContain(`${NAMES.length} were already queued`);
    const other = await runSam(['queue', 'add', images, '--redis', redis.url, '--queue', 'again', '--model', fixtureModel(), '--out', out, '--points-per-side', '4']);
    expect(other.code).toBe(2);
    expect(other.stderr.trim().split('\n')).toHaveLength(1);
    expect(other.stderr).toMatch(/other settings: --points-per-side 8 \(given 4\).*another --queue.*sam queue clean/);
    expect(await status('again')).toEqual(before);
    expect(before.waiting).toBe(NAMES.length);
  });

  it('a worker SIGKILLed mid-image loses nothing: its image runs again and every image completes once', async () => {
    const out = path.join(work.dir, 'kill');
    // A denser grid: an image takes long enough to be killed in the middle of it.
    expect((await add('kill', images, out, '--points-per-side', '12')).code).toBe(0);
    const victim = worker('kill');
    const atKill = await waitFor('kill', victim, (s) => s.completed >= 2 && s.active === 1);
    victim.child.kill('SIGKILL');
    const killed = await victim.done;
    expect(killed.signal).toBe('SIGKILL');
    const rescuer = worker('kill');
    const r = await rescuer.done;
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/stalled .*it runs again/);
    const s = await status('kill');
    expect(s).toMatchObject({ waiting: 0, active: 0, completed: NAMES.length, failed: 0, total: NAMES.length });
    // Exactly once: each image is reported complete by one worker only.
    const keys = [...finishedKeys(killed.stdout + killed.stderr), ...finishedKeys(r.stderr)].sort();
    expect(keys).toEqual(NAMES.slice().sort());
    expect(atKill.completed).toBeLessThan(NAMES.length);
    // No temp a reader could take for an output; the killed worker's was removed by the rescuer.
    expect(tree(out).filter((f) => path.basename(f).startsWith('.'))).toEqual([]);
    const ref = path.join(work.dir, 'kill-ref');
    expect((await runSam(['auto', images, '--model', fixtureModel(), '--out', ref, '--coco', path.join(work.dir, 'kill-ref.json'), '-q', ...AMG, '--points-per-side', '12'])).code).toBe(0);
    expectSameTree(out, ref);
  }, 240_000);

  it('a corrupt image fails once with its error while the rest complete; retry-failed reruns it after a fix', async () => {
    const dir = path.join(work.dir, 'with-bad');
    copyScenes(dir, SCENES.slice(0, 5));
    writeFileSync(path.join(dir, 'broken.png'), 'not a png at all');
    const out = path.join(work.dir, 'with-bad-out');
    expect((await add('bad', dir, out)).code).toBe(0);
    const r = await worker('bad').done;
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/^failed broken: .*broken\.png: not an image/m);
    expect(r.stderr).not.toMatch(/retrying broken/);
    expect(await status('bad')).toMatchObject({ completed: 5, failed: 1, waiting: 0 });

    const failed = await runSam(['queue', 'failed', '--redis', redis.url, '--queue', 'bad', '--json']);
    expect(failed.code, failed.stderr).toBe(0);
    const list = JSON.parse(failed.stdout) as { key: string; path: string; error: string; attempts: number }[];
    expect(list).toHaveLength(1);
    expect(list[0]).toMatchObject({ key: 'broken', path: path.join(dir, 'broken.png'), attempts: 1 });
    expect(list[0].error).toMatch(/not an image sharp can decode/);
    const text = await runSam(['queue', 'failed', '--redis', redis.url, '--queue', 'bad']);
    expect(text.stdout.trim()).toMatch(new RegExp(`^${path.join(dir, 'broken.png').replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}: not an image`));

    copyFileSync(fixtureImage('basic-320x240.png'), path.join(dir, 'broken.png'));
    const retry = await runSam(['queue', 'retry-failed', '--redis', redis.url, '--queue', 'bad']);
    expect(retry.code, retry.stderr).toBe(0);
    expect(retry.stderr).toContain('1 failed image(s) moved back to waiting');
    expect((await worker('bad').done).code).toBe(0);
    expect(await status('bad')).toMatchObject({ completed: 6, failed: 0 });
    expect(statSync(path.join(out, 'broken.json')).size).toBeGreaterThan(10);
  });

  it('a Redis restart mid-run (AOF on) is waited out: the worker reconnects and every image completes', async () => {
    const out = path.join(work.dir, 'restart');
    expect((await add('restart', images, out, '--points-per-side', '12')).code).toBe(0);
    const w = worker('restart');
    await waitFor('restart', w, (s) => s.completed >= 3);
    await redis.stop();
    await new Promise((r) => setTimeout(r, 1500));
    await redis.start();
    const r = await w.done;
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/lost Redis at .*reconnecting/);
    expect(r.stderr).toMatch(/Redis at .* is back/);
    expect(await status('restart')).toMatchObject({ waiting: 0, active: 0, completed: NAMES.length, failed: 0, total: NAMES.length });
  }, 240_000);

  it('SIGTERM finishes the image in progress, records it and exits 0', async () => {
    const out = path.join(work.dir, 'term');
    expect((await add('term', images, out, '--points-per-side', '12')).code).toBe(0);
    const w = worker('term');
    await waitFor('term', w, (s) => s.completed >= 1 && s.active === 1);
    w.child.kill('SIGTERM');
    const r = await w.done;
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain('SIGTERM: taking no more jobs');
    const s = await status('term');
    expect(s.active).toBe(0);
    expect(s.completed + s.waiting).toBe(NAMES.length);
    expect(finishedKeys(r.stderr)).toHaveLength(s.completed);
  });

  it('refuses, in one line and with nothing taken from the queue: another model, no queue, bad or unreachable Redis', async () => {
    const out = path.join(work.dir, 'refuse');
    expect((await add('refuse', images, out)).code).toBe(0);
    const other = await runSam(['worker', '--redis', redis.url, '--queue', 'refuse', '--model', fixtureModel('oracle-batched'), '--exit-when-empty']);
    expect(other.code).toBe(3);
    expect(other.stderr.trim().split('\n')).toHaveLength(1);
    expect(other.stderr).toMatch(/queue 'refuse' holds jobs for model oracle-v1 .* but --model .*oracle-batched is oracle-batched-v1; start the worker with that model/);
    expect(await status('refuse')).toMatchObject({ waiting: NAMES.length, active: 0, completed: 0 });

    const none = await runSam(['worker', '--redis', redis.url, '--queue', 'never-added', '--model', fixtureModel()]);
    expect(none.code).toBe(2);
    expect(none.stderr).toMatch(/queue 'never-added' .* has no jobs .*run 'sam queue add/);
    expect(none.stderr.trim().split('\n')).toHaveLength(1);

    const port = await freePort();
    const t0 = Date.now();
    const dead = await runSam(['worker', '--redis', `redis://127.0.0.1:${port}`, '--model', fixtureModel()]);
    expect(dead.code).toBe(7);
    expect(dead.stderr).toMatch(/^sam: error: cannot reach Redis at redis:\/\/127\.0\.0\.1:\d+ \(.*ECONNREFUSED.*\); start redis-server there or fix --redis/);
    expect(dead.stderr.trim().split('\n')).toHaveLength(1);
    expect(Date.now() - t0).toBeLessThan(15_000);
    const deadAdd = await runSam(['queue', 'status', '--redis', `redis://127.0.0.1:${port}`]);
    expect(deadAdd.code).toBe(7);

    for (const url of ['localhost:6379', 'http://127.0.0.1:6379', 'redis://127.0.0.1:6379/queue']) {
      const bad = await runSam(['worker', '--redis', url, '--model', fixtureModel()]);
      expect(bad.code, url).toBe(2);
      expect(bad.stderr, url).toMatch(/^sam: error: --redis .*redis:\/\//);
    }
    const badName = await runSam(['queue', 'status', '--redis', redis.url, '--queue', 'a:b']);
    expect(badName.code).toBe(2);
    expect(badName.stderr).toContain("BullMQ names cannot hold ':'");
  });

  it('clean removes the queue (not the outputs); status of a removed queue names the fix', async () => {
    const out = path.join(work.dir, 'clean');
    expect((await add('clean', path.join(images, 'a'), out)).code).toBe(0);
    const c = await runSam(['queue', 'clean', '--redis', redis.url, '--queue', 'clean']);
    expect(c.code, c.stderr).toBe(0);
    expect(c.stderr).toContain(`removed queue 'clean'`);
    const s = await runSam(['queue', 'status', '--redis', redis.url, '--queue', 'clean']);
    expect(s.code).toBe(2);
    expect(s.stderr).toContain("run 'sam queue add");
    // Created again with other settings now that it is empty.
    expect((await add('clean', path.join(images, 'a'), out, '--points-per-side', '4')).code).toBe(0);
  });
});

describe('queue settings and ids', () => {
  it('job ids are valid BullMQ ids, distinct for distinct keys, and decode back', () => {
    const keys = ['a/b', 'a:b', 'a%3Ab', '12', '012', '%31', '1', 'x/12', 'weird %:%'];
    const ids = keys.map(jobIdForKey);
    expect(new Set(ids).size).toBe(keys.length);
    for (const [i, id] of ids.entries()) {
      expect(id).not.toContain(':');
      expect(`${parseInt(id, 10)}` === id).toBe(false);
      expect(keyForJobId(id)).toBe(keys[i]);
    }
    expect(jobIdForKey('photos/cat')).toBe('photos/cat');
  });

  it('names the differing settings by their flags', () => {
    const base: QueueSettings = {
      version: 1,
      modelId: 'm1',
      model: 'models/m1',
      amg: { ...({} as QueueSettings['amg']), pointsPerSide: 32, predIouThresh: 0.88, pointGrids: null },
      outputMode: 'coco_rle',
      outDir: '/o',
      overlayDir: null,
      embeddingsDir: null,
      inputRoot: '/i',
    };
    expect(settingsDifferences(base, { ...base, inputRoot: '/elsewhere' })).toEqual([]);
    expect(settingsDifferences(base, { ...base, amg: { ...base.amg, predIouThresh: 0.5 }, outDir: '/p' })).toEqual([
      '--pred-iou-thresh 0.88 (given 0.5)',
      '--out "/o" (given "/p")',
    ]);
    expect(settingsDifferences(base, { ...base, modelId: 'm2', model: 'other' })[0]).toBe('--model: id "m1" of models/m1 (given "m2" of other)');
  });

  it('parses redis URLs and hides the password in messages', () => {
    expect(parseRedisUrl('redis://:secret@10.0.0.5:6380/2').shown).toBe('redis://:***@10.0.0.5:6380/2');
    expect(parseRedisUrl('rediss://host:6379').url).toBe('rediss://host:6379');
    expect(() => parseRedisUrl('10.0.0.5:6379')).toThrow(/redis:\/\//);
  });
});
