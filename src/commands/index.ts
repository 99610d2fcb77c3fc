import { Command, CommanderError } from 'commander';
import { packageVersion } from '../util/package.js';
import { registerAuto } from './auto.js';
import { registerEmbed } from './embed.js';
import { registerModels } from './models.js';
import { registerQueue } from './queue.js';
import { registerWorker } from './worker.js';
import { EXIT, reportError } from './exit.js';
import { registerSegment } from './segment.js';
import { registerExport } from './export.js';

export function buildProgram(setExit: (code: number) => void): Command {
  const program = new Command('sam')
    .description('Segment Anything (SAM) ONNX models from the command line: embeddings, prompted masks, automatic masks as COCO RLE')
    .version(packageVersion())
    .option('--verbose', 'print the stack of internal errors (same as SAM_DEBUG=1)')
    // One line per usage error, like every other error: commander's message plus where help is.
    .configureOutput({ outputError: (str, write) => write(`sam: ${str.trim().replace(/\n+/g, ' ')} (run with --help for usage)\n`) })
    .exitOverride()
    .hook('preAction', (cmd) => {
      if (cmd.opts<{ verbose?: boolean }>().verbose) process.env.SAM_DEBUG = '1';
    });
  registerEmbed(program, setExit);
  registerSegment(program, setExit);
  registerAuto(program, setExit);
  registerModels(program);
  registerQueue(program);
  registerWorker(program, setExit);
  registerExport(program, setExit);
  return program;
}

/** Parse, run, and map any failure to an exit code (see exit.ts). */
export async function main(argv: readonly string[]): Promise<number> {
  let code: number = EXIT.ok;
  const program = buildProgram((c) => {
    code = c;
  });
  try {
    await program.parseAsync(argv as string[]);
    return code;
  } catch (err) {
    if (err instanceof CommanderError) {
      // Help and version exit 0; every other commander error is a usage error (already printed).
      return err.exitCode === 0 || err.code === 'commander.helpDisplayed' || err.code === 'commander.version' ? EXIT.ok : EXIT.usage;
    }
    return reportError(err);
  }
}
