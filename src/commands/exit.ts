import { SamError, errorMessage } from '../util/errors.js';

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
  /** Redis (the queue) cannot be reached. */
  service: 7,
} as const;

/** Stacks of internal errors are printed with --verbose or SAM_DEBUG=1. */
export function debugEnabled(): boolean {
  return Boolean(process.env.SAM_DEBUG) && process.env.SAM_DEBUG !== '0';
}

export function exitCodeFor(err: unknown): number {
  if (err instanceof SamError) return EXIT[err.kind];
  return EXIT.internal;
}

/**
 * One line for an error: a SamError's message (problem and fix), or for anything else (a bug)
 * the message marked as internal with how to get the stack.
 */
export function describeError(err: unknown): string {
  const msg = errorMessage(err);
  if (err instanceof SamError) return msg;
  return `internal error: ${msg}${debugEnabled() ? '' : ' (rerun with --verbose or SAM_DEBUG=1 for the stack, and report it)'}`;
}

/** Print the stack of an internal error when debugging is on. */
export function reportStack(err: unknown): void {
  if (!(err instanceof SamError) && debugEnabled()) process.stderr.write(`${(err instanceof Error && err.stack) || String(err)}\n`);
}

/** Report an error as one line on stderr (plus the stack of a bug with --verbose) and return the exit code. */
export function reportError(err: unknown): number {
  process.stderr.write(`sam: error: ${describeError(err)}\n`);
  reportStack(err);
  return exitCodeFor(err);
}
