import pLimit from 'p-limit';
import { usageError } from '../util/errors.js';
import type { InputImage } from '../io/inputs.js';
import { EXIT, describeError, reportStack } from './exit.js';
import { BatchProgress, type ItemStatus } from './progress.js';

export function parseIntOption(name: string, min: number, max = Number.MAX_SAFE_INTEGER) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < min || n > max) throw usageError(`${name} ${value}: expected an integer from ${min} to ${max}`);
    return n;
  };
}

export function parseFloatOption(name: string, min: number, max: number) {
  return (value: string): number => {
    const n = Number(value);
    if (value.trim() === '' || !Number.isFinite(n) || n < min || n > max) throw usageError(`${name} ${value}: expected a number from ${min} to ${max}`);
    return n;
  };
}

export interface BatchSummary {
  done: number;
  skipped: number;
  failed: { item: InputImage; message: string }[];
  seconds: number;
}

/**
 * Run `work` over every input with `jobs` in flight. One image's failure is recorded and the run
 * carries on; `work` returns 'skipped' when the output was already complete.
 */
export async function runBatch(
  items: readonly InputImage[],
  work: (item: InputImage) => Promise<{ status: Exclude<ItemStatus, 'failed'>; detail?: string }>,
  options: { jobs: number; quiet: boolean; what?: string },
): Promise<BatchSummary> {
  const progress = new BatchProgress(options.quiet);
  const started = performance.now();
  const summary: BatchSummary = { done: 0, skipped: 0, failed: [], seconds: 0 };
  const limit = pLimit(options.jobs);
  progress.start(items.length, options.what);
  try {
    await Promise.all(
      items.map((item) =>
        limit(async () => {
          try {
            const r = await work(item);
            summary[r.status]++;
            progress.tick(item.key, r.status, r.detail);
          } catch (err) {
            // A bug in one image's path is reported as internal (with its stack under --verbose), not as the image's fault.
            reportStack(err);
            const message = describeError(err);
            summary.failed.push({ item, message });
            progress.tick(item.key, 'failed', message);
          }
        }),
      ),
    );
  } finally {
    progress.stop();
  }
  summary.seconds = (performance.now() - started) / 1000;
  return summary;
}

/** The end-of-run summary on stderr; returns the exit code (some failed → distinct code). */
export function finishBatch(summary: BatchSummary, extra = ''): number {
  const { done, skipped, failed, seconds } = summary;
  const lines = [`sam: ${done} done, ${skipped} skipped, ${failed.length} failed${extra} in ${seconds.toFixed(1)} s`];
  if (failed.length > 0) {
    lines.push('failed:');
    // Most messages already start with the file they are about.
    for (const f of failed) lines.push(`  ${f.message.startsWith(f.item.path) ? f.message : `${f.item.path}: ${f.message}`}`);
  }
  process.stderr.write(`${lines.join('\n')}\n`);
  return failed.length > 0 ? EXIT.someFailed : EXIT.ok;
}
