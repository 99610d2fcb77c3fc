#!/usr/bin/env node
import { main } from '../src/commands/index.js';

// `sam ... --help | head`: a reader that closes the pipe early is not an error.
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0);
  throw err;
});

process.exitCode = await main(process.argv);
