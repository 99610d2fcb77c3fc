/**
 * Every failure a user can act on is a SamError: a one-line message naming the problem and the
 * fix, and a kind that src/commands/exit.ts maps to the process exit code (the only place that
 * does so).
 */
export type ErrorKind =
  /** Bad command-line usage: malformed --points, unknown option values. */
  | 'usage'
  /** The model folder is missing, incomplete or does not fit the SAM ONNX contract. */
  | 'model'
  /** An input file (image, embedding, mask) is missing, unreadable or does not fit. */
  | 'input'
  /** Writing an output failed. */
  | 'output'
  /** A service the run needs (Redis for the queue) cannot be reached. */
  | 'service';

export class SamError extends Error {
  readonly kind: ErrorKind;
  constructor(kind: ErrorKind, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'SamError';
    this.kind = kind;
  }
}

export const usageError = (message: string): SamError => new SamError('usage', message);
export const modelError = (message: string, cause?: unknown): SamError => new SamError('model', message, { cause });
export const inputError = (message: string, cause?: unknown): SamError => new SamError('input', message, { cause });
export const outputError = (message: string, cause?: unknown): SamError => new SamError('output', message, { cause });
export const serviceError = (message: string, cause?: unknown): SamError => new SamError('service', message, { cause });

/** A Node system error (ENOENT, EACCES, ENOSPC, ...): it carries a string `code`. */
export function isSystemError(err: unknown): err is NodeJS.ErrnoException {
  return err instanceof Error && typeof (err as NodeJS.ErrnoException).code === 'string';
}

/** First line of an unknown error's message, for one-line reports. */
export function errorMessage(err: unknown): string {
  const text = err instanceof Error ? err.message : String(err);
  return text.split('\n')[0].trim();
}

/** An error as plain data, to cross a worker-thread boundary (structured clone drops SamError's class). */
export interface PlainError {
  kind?: ErrorKind;
  message: string;
  stack?: string;
}

export function toPlainError(err: unknown): PlainError {
  if (err instanceof SamError) return { kind: err.kind, message: err.message, stack: err.stack };
  if (err instanceof Error) return { message: err.message, stack: err.stack };
  return { message: String(err) };
}

/** The error again on this side: a SamError of its kind, else a plain Error (a bug), stack kept. */
export function fromPlainError(e: PlainError): Error {
  const err = e.kind ? new SamError(e.kind, e.message) : new Error(e.message);
  if (e.stack) err.stack = e.stack;
  return err;
}
