/**
 * A `sam` queue in Redis: BullMQ's jobs (one per image, id = the image key) plus three keys of
 * ours under the queue's own prefix, so `sam queue clean` (obliterate) removes them too:
 *   bull:<queue>:sam:settings  JSON QueueSettings, written by the first add
 *   bull:<queue>:sam:order     ZSET job id → add order (COCO collects in input order)
 *   bull:<queue>:sam:seq       the next add order
 */
import { Queue, type JobsOptions } from 'bullmq';
import type { Redis } from 'ioredis';
import type { InputImage } from '../io/inputs.js';
import { SamError, errorMessage, usageError } from '../util/errors.js';
import { connectOnce, type RedisTarget } from './redis.js';
import {
  SETTINGS_VERSION,
  commonFolder,
  imagePathOf,
  jobDataFor,
  jobIdForKey,
  settingsDifferences,
  settingsDigest,
  type ImageJobData,
  type QueueSettings,
} from './settings.js';

export const DEFAULT_QUEUE = 'sam';
const PREFIX = 'bull';
const JOB_NAME = 'auto';

/** Retries of transient failures (I/O, Redis): 5 tries, 2 s, 4 s, 8 s, 16 s apart. A bad image fails at once. */
export const JOB_OPTIONS: JobsOptions = {
  attempts: 5,
  backoff: { type: 'exponential', delay: 2000 },
  // Completed jobs stay: they make a second add of the same folder add nothing, and `collect` reads them.
  removeOnComplete: false,
  removeOnFail: false,
};

export function checkQueueName(name: string): string {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/.test(name)) {
    throw usageError(`--queue ${name}: use letters, digits, '.', '_' and '-' (BullMQ names cannot hold ':'), e.g. --queue coco-train`);
  }
  return name;
}

export type JobCounts = Record<'waiting' | 'active' | 'delayed' | 'completed' | 'failed' | 'prioritized', number>;

export interface FailedImage {
  key: string;
  path: string;
  error: string;
  attempts: number;
}

/** Pages of this many jobs for adds and listings: Redis round trips stay few, memory stays flat. */
const PAGE = 1000;

/** Errors of BullMQ/ioredis mid-command, as one line naming the fix. */
function redisFailure(target: RedisTarget, what: string, err: unknown): Error {
  if (err instanceof SamError) return err;
  return new SamError('service', `${what} on Redis at ${target.shown} failed (${errorMessage(err)}); check that Redis is up and rerun (nothing is lost: the command is safe to repeat)`, { cause: err });
}

export class SamQueue {
  private bull?: Queue<ImageJobData>;

  private constructor(
    readonly target: RedisTarget,
    readonly name: string,
    readonly client: Redis,
  ) {}

  static async open(target: RedisTarget, name: string, client?: Redis): Promise<SamQueue> {
    checkQueueName(name);
    return new SamQueue(target, name, client ?? (await connectOnce(target)));
  }

  /** BullMQ's Queue, made on first use: it writes the queue's meta key, which a mistyped --queue should not leave behind. */
  private get queue(): Queue<ImageJobData> {
    if (!this.bull) {
      this.bull = new Queue<ImageJobData>(this.name, { connection: this.client, prefix: PREFIX });
      // Errors reach the caller through the failing command (step()).
      this.bull.on('error', () => undefined);
    }
    return this.bull;
  }

  private key(part: string): string {
    return `${PREFIX}:${this.name}:sam:${part}`;
  }

  /** Run one Redis step, turning a dropped connection into a one-line service error. */
  private async step<T>(what: string, f: () => Promise<T>): Promise<T> {
    try {
      return await f();
    } catch (err) {
      throw redisFailure(this.target, what, err);
    }
  }

  async settings(): Promise<QueueSettings | undefined> {
    const text = await this.step('reading the queue settings', () => this.client.get(this.key('settings')));
    return text ? (JSON.parse(text) as QueueSettings) : undefined;
  }

  /** The stored settings, or a usage error naming `sam queue add` when the queue was never created. */
  async requireSettings(): Promise<QueueSettings> {
    const s = await this.settings();
    if (!s) {
      throw usageError(`queue '${this.name}' on ${this.target.shown} has no jobs and no settings: run 'sam queue add <images> --redis ${this.target.shown} --queue ${this.name} --model M --out DIR' first, or check --queue and --redis`);
    }
    if (s.version !== SETTINGS_VERSION) {
      throw usageError(`queue '${this.name}' was created by another version of sam (settings version ${s.version}, this sam reads ${SETTINGS_VERSION}); use that version or a new --queue`);
    }
    return s;
  }

  async counts(): Promise<JobCounts> {
    const c = await this.step('counting jobs', () => this.queue.getJobCounts('waiting', 'active', 'delayed', 'completed', 'failed', 'prioritized'));
    return { waiting: c.waiting ?? 0, active: c.active ?? 0, delayed: c.delayed ?? 0, completed: c.completed ?? 0, failed: c.failed ?? 0, prioritized: c.prioritized ?? 0 };
  }

  /**
   * Store `given` as the queue's settings, or check it against those stored. Different settings
   * are refused while the queue holds jobs (they would mix two runs' outputs).
   */
  async adoptSettings(given: Omit<QueueSettings, 'inputRoot'>, firstPaths: readonly string[]): Promise<QueueSettings> {
    const fresh: QueueSettings = { ...given, inputRoot: commonFolder(firstPaths) };
    const created = await this.step('storing the queue settings', () => this.client.set(this.key('settings'), JSON.stringify(fresh), 'NX'));
    if (created) return fresh;
    const stored = await this.requireSettings();
    const diff = settingsDifferences(stored, { ...fresh, inputRoot: stored.inputRoot });
    if (diff.length === 0) return stored;
    const c = await this.counts();
    const jobs = Object.values(c).reduce((a, b) => a + b, 0);
    if (jobs > 0) {
      throw usageError(
        `queue '${this.name}' holds ${jobs} job(s) made with other settings: ${diff.join('; ')}. Add with the same settings, use another --queue, or remove it first with 'sam queue clean --redis ${this.target.shown} --queue ${this.name}'`,
      );
    }
    await this.step('storing the queue settings', () => this.client.set(this.key('settings'), JSON.stringify(fresh)));
    return fresh;
  }

  /**
   * One job per image; images whose job exists (in any state) are left as they are. Returns how
   * many were added. Safe to repeat after a crash: BullMQ ignores an id it has.
   */
  async addImages(items: readonly InputImage[], settings: QueueSettings, onPage?: (done: number) => void): Promise<{ added: number; existing: number }> {
    const digest = settingsDigest(settings);
    let added = 0;
    for (let start = 0; start < items.length; start += PAGE) {
      const page = items.slice(start, start + PAGE).map((item) => ({ item, id: jobIdForKey(item.key) }));
      const exists = await this.step('checking jobs', () => {
        const p = this.client.pipeline();
        for (const { id } of page) p.exists(`${PREFIX}:${this.name}:${id}`);
        return p.exec();
      });
      const fresh = page.filter((_, i) => exists?.[i]?.[1] === 0);
      if (fresh.length > 0) {
        const last = await this.step('numbering jobs', () => this.client.incrby(this.key('seq'), fresh.length));
        await this.step('recording the add order', () => {
          const p = this.client.pipeline();
          fresh.forEach(({ id }, i) => p.zadd(this.key('order'), 'NX', last - fresh.length + i, id));
          return p.exec();
        });
        await this.step('adding jobs', () =>
          this.queue.addBulk(fresh.map(({ item, id }) => ({ name: JOB_NAME, data: jobDataFor(item, settings.inputRoot, digest), opts: { ...JOB_OPTIONS, jobId: id } }))),
        );
      }
      added += fresh.length;
      onPage?.(Math.min(items.length, start + PAGE));
    }
    return { added, existing: items.length - added };
  }

  /** Failed images, oldest failure first, a page at a time. */
  async *failed(settings: QueueSettings): AsyncGenerator<FailedImage> {
    for (let start = 0; ; start += PAGE) {
      const jobs = await this.step('listing failed jobs', () => this.queue.getFailed(start, start + PAGE - 1));
      for (const j of jobs) {
        const data = j.data as ImageJobData;
        yield { key: data.key, path: imagePathOf(data, settings.inputRoot), error: j.failedReason ?? '', attempts: j.attemptsMade };
      }
      if (jobs.length < PAGE) return;
    }
  }

  /** Move every failed job back to waiting; returns how many there were. */
  async retryFailed(): Promise<number> {
    const n = (await this.counts()).failed;
    if (n > 0) await this.step('retrying failed jobs', () => this.queue.retryJobs({ state: 'failed', count: PAGE }));
    return n;
  }

  /** Every image ever added, in add order, a page at a time (for `collect`). */
  async *imagesInOrder(settings: QueueSettings): AsyncGenerator<InputImage> {
    for (let start = 0; ; start += PAGE) {
      const ids = await this.step('reading the add order', () => this.client.zrange(this.key('order'), start, start + PAGE - 1));
      const datas = await this.step('reading jobs', () => {
        const p = this.client.pipeline();
        for (const id of ids) p.hget(`${PREFIX}:${this.name}:${id}`, 'data');
        return p.exec();
      });
      for (const [, text] of datas ?? []) {
        if (typeof text !== 'string') continue;
        const data = JSON.parse(text) as ImageJobData;
        yield { key: data.key, path: imagePathOf(data, settings.inputRoot) };
      }
      if (ids.length < PAGE) return;
    }
  }

  /** Finish times (ms) of the most recently completed jobs, newest first (throughput). */
  async recentFinishes(n: number): Promise<number[]> {
    const jobs = await this.step('reading completed jobs', () => this.queue.getJobs(['completed'], 0, n - 1, false));
    return jobs.map((j) => j.finishedOn ?? 0).filter((t) => t > 0).sort((a, b) => b - a);
  }

  async workers(): Promise<number> {
    return this.step('counting workers', () => this.queue.getWorkersCount());
  }

  /** Remove the queue, its jobs and our keys. Active jobs need `force` (their workers would fail to finish them). */
  async obliterate(force: boolean): Promise<void> {
    await this.step('removing the queue', () => this.queue.obliterate({ force }));
    await this.step('removing the queue settings', () => this.client.del(this.key('settings'), this.key('order'), this.key('seq')));
  }

  async close(): Promise<void> {
    await this.bull?.close().catch(() => undefined);
    this.client.disconnect();
  }
}
