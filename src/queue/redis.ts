/**
 * `--redis URL` → ioredis clients. Short commands (`sam queue ...`) fail fast when Redis is not
 * there; a worker's clients reconnect forever (BullMQ needs maxRetriesPerRequest: null), and its
 * first connection is checked the same fast way so a wrong URL is an error, not a hang.
 */
import { Redis, type RedisOptions } from 'ioredis';
import { errorMessage, serviceError, usageError } from '../util/errors.js';

export interface RedisTarget {
  url: string;
  /** The URL without its password, for messages. */
  shown: string;
}

export function parseRedisUrl(text: string): RedisTarget {
  let u: URL;
  try {
    u = new URL(text);
  } catch {
    throw usageError(`--redis ${text}: not a URL; give redis://HOST:PORT (e.g. redis://127.0.0.1:6379, or redis://:PASSWORD@HOST:PORT/DB)`);
  }
  if (u.protocol !== 'redis:' && u.protocol !== 'rediss:') {
    throw usageError(`--redis ${text}: the scheme must be redis:// or rediss:// (TLS), not ${u.protocol}//`);
  }
  if (!u.hostname) throw usageError(`--redis ${text}: no host; give redis://HOST:PORT`);
  if (u.pathname && u.pathname !== '/' && !/^\/\d+$/.test(u.pathname)) {
    throw usageError(`--redis ${text}: the path must be a database number (redis://HOST:PORT/0), not ${u.pathname}`);
  }
  const shown = new URL(u.href);
  if (shown.password) shown.password = '***';
  return { url: u.href, shown: shown.href.replace(/\/$/, '') };
}

/** How long the first connection may take before the command gives up. */
const CONNECT_TIMEOUT_MS = 5000;

const unreachable = (target: RedisTarget, err: unknown): Error =>
  serviceError(
    `cannot reach Redis at ${target.shown} (${errorMessage(err) || 'connection failed'}); start redis-server there or fix --redis (and check its password and firewall)`,
    err,
  );

/** Wait for the first 'ready' (or fail with the reason after CONNECT_TIMEOUT_MS). */
async function firstConnect(client: Redis, target: RedisTarget): Promise<void> {
  let lastError: unknown;
  const onError = (err: unknown) => {
    lastError = err;
  };
  client.on('error', onError);
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(unreachable(target, lastError ?? new Error(`no answer in ${CONNECT_TIMEOUT_MS / 1000} s`))), CONNECT_TIMEOUT_MS);
      client.connect().then(
        () => {
          clearTimeout(timer);
          resolve();
        },
        (err: unknown) => {
          clearTimeout(timer);
          reject(unreachable(target, lastError ?? err));
        },
      );
    });
    await client.ping();
  } catch (err) {
    client.disconnect();
    throw err;
  } finally {
    client.off('error', onError);
  }
}

/** A client for a short command: gives up on a dead server instead of retrying forever. */
export async function connectOnce(target: RedisTarget): Promise<Redis> {
  const options: RedisOptions = {
    lazyConnect: true,
    connectTimeout: CONNECT_TIMEOUT_MS,
    maxRetriesPerRequest: 2,
    retryStrategy: (times) => (times > 3 ? null : 300),
  };
  const client = new Redis(target.url, options);
  // Later errors surface through the failing command; this keeps ioredis from printing them.
  client.on('error', () => undefined);
  await firstConnect(client, target);
  return client;
}

/**
 * A client for a long-running worker: commands wait while Redis is away (maxRetriesPerRequest:
 * null, offline queue on) and it reconnects with a backoff capped at 5 s.
 */
export async function connectForever(target: RedisTarget): Promise<Redis> {
  const options: RedisOptions = {
    lazyConnect: true,
    connectTimeout: CONNECT_TIMEOUT_MS,
    maxRetriesPerRequest: null,
    enableOfflineQueue: true,
    retryStrategy: (times) => Math.min(200 * times, 5000),
  };
  const client = new Redis(target.url, options);
  await firstConnect(client, target);
  return client;
}
