import { readFileSync } from 'node:fs';
import { Command, CommanderError } from 'commander';
import { registerAuto } from './auto.js';
import { registerEmbed } from './embed.js';
import { registerModels } from './models.js';
import { EXIT, reportError } from './exit.js';
import { registerSegment } from './segment.js';

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

export function buildProgram(setExit: (code: number) => void): Command {
  const program = new Command('sam')
    .description('Segment Anything (SAM) ONNX models from the command line: embeddings, prompted masks, automatic masks as COCO RLE')
    .version(version())
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride();
  registerEmbed(program, setExit);
  registerSegment(program, setExit);
  registerAuto(program, setExit);
  registerModels(program);
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
