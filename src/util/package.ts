import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Walk up from this module to the folder holding the package's package.json (works from src/ and dist/src/). */
export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pkg = join(dir, 'package.json');
    if (existsSync(pkg)) {
      try {
        if ((JSON.parse(readFileSync(pkg, 'utf8')) as { name?: string }).name === 'sam-cli') return dir;
      } catch {
        // A broken package.json further down the tree is not ours; keep walking.
      }
    }
    const up = dirname(dir);
    if (up === dir) throw new Error('internal: package root of sam-cli not found above ' + fileURLToPath(import.meta.url));
    dir = up;
  }
}

let version: string | undefined;

/** The version in sam-cli's package.json ('0' when unreadable). */
export function packageVersion(): string {
  if (version === undefined) {
    try {
      version = (JSON.parse(readFileSync(join(packageRoot(), 'package.json'), 'utf8')) as { version?: string }).version ?? '0';
    } catch {
      version = '0';
    }
  }
  return version;
}
