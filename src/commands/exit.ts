import { SamError, errorMessage } from '../errors.js';

/** Exit codes: the one place they are chosen. Documented in README "Exit codes". */
export const EXIT = {
  ok: 0,
  /** A bug or an unexpected system failure. */
  internal: 1,
  usage: 2,
  model: 3,
  input: 4,
  /** A batch finished but some images failed (listed on stderr). */
  someFailed: 5,
  output: 6,
} as const;

export function exitCodeFor(err: unknown): number {
  if (err instanceof SamError) return EXIT[err.kind];
  return EXIT.internal;
}

/** Report an error as one line on stderr and return the exit code. */
export function reportError(err: unknown): number {
  const code = exitCodeFor(err);
  const msg = errorMessage(err);
  process.stderr.write(`sam: error: ${msg}\n`);
  if (code === EXIT.internal && process.env.SAM_DEBUG) process.stderr.write(`${(err as Error).stack ?? ''}\n`);
  return code;
}
