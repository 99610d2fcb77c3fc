/**
 * `npm run bench -- --queue`: the queue against one process, on this machine, one run (figures,
 * never asserted):
 * 1. throughput: `sam auto --jobs 2 --threads 1` vs `sam queue add` + 2 `sam worker --jobs 1
 *    --threads 1` on the same photos (converted vit_t, real cost), in alternating pairs;
 * 2. queue overhead per job (add + take + complete): `sam worker` vs `sam auto` on many tiny
 *    images with the oracle at one prompt per image, the difference divided by the images; the
 *    add alone; Redis memory per job.
 */
import { copyFileSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import { RedisServer } from '../fixtures/redis-server.js';
import { table } from '../src/util/format.js';
import { timedProcess } from './cli-runs.js';

export interface QueueBenchPaths {
  sam: string;
  /** The converted vit_t. */
  model: string;
  oracle: string;
  shared: string;
  smallImage: string;
}

const out = (s = ''): void => void process.stdout.write(`${s}\n`);

async function run(argv: readonly string[], what: string): Promise<number> {
  const r = await timedProcess([process.execPath, ...argv]);
  if (r.code !== 0) throw new Error(`${what} exited ${r.code}:\n${r.stderr.split('\n').slice(-6).join('\n')}`);
  return r.wallS;
}

/** Wall seconds from `queue add` to the last of `workers` workers exiting (--exit-when-empty). */
async function queueRun(p: QueueBenchPaths, redis: string, queue: string, images: string, outDir: string, model: string, amg: string[], workers: number): Promise<{ addS: number; totalS: number }> {
  const t0 = performance.now();
  const addS = await run([p.sam, 'queue', 'add', images, '--redis', redis, '--queue', queue, '--model', model, '--out', outDir, '-q', ...amg], 'sam queue add');
  const w = Array.from({ length: workers }, () =>
    run([p.sam, 'worker', '--redis', redis, '--queue', queue, '--model', model, '--jobs', '1', '--threads', '1', '--exit-when-empty', '-q'], 'sam worker'),
  );
  await Promise.all(w);
  return { addS, totalS: (performance.now() - t0) / 1000 };
}

async function usedMemory(client: Redis): Promise<number> {
  const info = await client.info('memory');
  return Number(/used_memory:(\d+)/.exec(info)?.[1] ?? NaN);
}

export async function queueBench(p: QueueBenchPaths, pairs = 2): Promise<void> {
  const redis = await RedisServer.start();
  const work = mkdtempSync(path.join(tmpdir(), 'sam-queue-bench-'));
  try {
    // 1. Throughput on real photos.
    const photos = path.join(work, 'photos');
    mkdirSync(photos, { recursive: true });
    const n = 12;
    for (let i = 0; i < n; i++) copyFileSync(path.join(p.shared, 'images', i % 2 ? 'groceries.jpg' : 'dog.jpg'), path.join(photos, `p${String(i).padStart(2, '0')}.jpg`));
    const amg = ['--points-per-side', '16'];
    out(`\nqueue vs one process: ${n} photos (dog.jpg, groceries.jpg), ${p.model}, 16x16, default thresholds; ${pairs} pairs, order alternating`);
    const rows = [['pair', 'sam auto --jobs 2 (s)', '2 x sam auto --shard (s)', 'queue, 2 workers (s)', 'of which add (s)', 'queue / auto', 'queue / shards']];
    const ratios: number[] = [];
    const shardRatios: number[] = [];
    for (let i = 0; i < pairs; i++) {
      const autoOut = path.join(work, `auto-${i}`);
      const queueOut = path.join(work, `queue-${i}`);
      const doAuto = () => run([p.sam, 'auto', photos, '--model', p.model, '--out', autoOut, '--jobs', '2', '--threads', '1', '-q', ...amg], 'sam auto');
      const doQueue = () => queueRun(p, redis.url, `tp-${i}`, photos, queueOut, p.model, amg, 2);
      // The queue's process layout without the queue: two processes of one thread, a static half each.
      const doShards = async () => {
        const t0 = performance.now();
        await Promise.all(
          [0, 1].map((k) => run([p.sam, 'auto', photos, '--model', p.model, '--out', path.join(work, `shard-${i}`), '--shard', `${k}/2`, '--threads', '1', '-q', ...amg], 'sam auto --shard')),
        );
        return (performance.now() - t0) / 1000;
      };
      let autoS: number;
      let shardS: number;
      let q: { addS: number; totalS: number };
      if (i % 2 === 0) {
        autoS = await doAuto();
        shardS = await doShards();
        q = await doQueue();
      } else {
        q = await doQueue();
        shardS = await doShards();
        autoS = await doAuto();
      }
      ratios.push(autoS / q.totalS);
      shardRatios.push(shardS / q.totalS);
      rows.push([String(i + 1), autoS.toFixed(2), shardS.toFixed(2), q.totalS.toFixed(2), q.addS.toFixed(2), (autoS / q.totalS).toFixed(3), (shardS / q.totalS).toFixed(3)]);
    }
    const median = (v: number[]) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)].toFixed(3);
    rows.push(['median', '', '', '', '', median(ratios), median(shardRatios)]);
    out(table(rows, { right: [1, 2, 3, 4, 5, 6] }));
    out('(ratios are throughput: above 1 the queue is faster)');

    // 2. Overhead per job: the same tiny work with and without the queue.
    const tiny = path.join(work, 'tiny');
    mkdirSync(tiny, { recursive: true });
    const m = 500;
    for (let i = 0; i < m; i++) copyFileSync(p.smallImage, path.join(tiny, `t${String(i).padStart(4, '0')}.png`));
    const one = ['--points-per-side', '1'];
    const client = new Redis(redis.url);
    const mem0 = await usedMemory(client);
    const autoS = await run([p.sam, 'auto', tiny, '--model', p.oracle, '--out', path.join(work, 'tiny-auto'), '--jobs', '1', '--threads', '1', '-q', ...one], 'sam auto');
    const addS = await run([p.sam, 'queue', 'add', tiny, '--redis', redis.url, '--queue', 'tiny', '--model', p.oracle, '--out', path.join(work, 'tiny-queue'), '-q', ...one], 'sam queue add');
    const mem1 = await usedMemory(client);
    const workS = await run([p.sam, 'worker', '--redis', redis.url, '--queue', 'tiny', '--model', p.oracle, '--jobs', '1', '--threads', '1', '--exit-when-empty', '-q'], 'sam worker');
    const mem2 = await usedMemory(client);
    client.disconnect();
    out(`\nqueue overhead: ${m} images of 96x64, the oracle at 1 prompt per image, one process each`);
    out(
      table(
        [
          ['', 'seconds', 'ms per image'],
          ['sam auto --jobs 1', autoS.toFixed(2), ((autoS * 1000) / m).toFixed(2)],
          ['sam queue add', addS.toFixed(2), ((addS * 1000) / m).toFixed(2)],
          ['sam worker --jobs 1 (until empty, +1 s empty check)', workS.toFixed(2), ((workS * 1000) / m).toFixed(2)],
          ['overhead: add + (worker - auto)', (addS + workS - autoS).toFixed(2), (((addS + workS - autoS) * 1000) / m).toFixed(2)],
        ],
        { right: [1, 2] },
      ),
    );
    out(`Redis memory per job: ${((mem1 - mem0) / m).toFixed(0)} B waiting, ${((mem2 - mem0) / m).toFixed(0)} B completed (used_memory, ${m} jobs)`);
  } finally {
    await redis.close();
    rmSync(work, { recursive: true, force: true });
  }
}
