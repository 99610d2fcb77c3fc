/**
 * The rooms of src/ and what each may import (README "Design notes"): a pure room imports no
 * Node built-in and no package; a room imports only rooms below it; no file-level import cycles.
 */
import { readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from './helpers/cli.js';

/** Room → the rooms it may import (besides itself). Order: lowest first. */
const ALLOWED: Record<string, readonly string[]> = {
  util: [],
  core: [],
  amg: ['core'],
  io: ['core', 'util'],
  output: ['core', 'io', 'util'],
  export: ['core', 'io', 'output', 'util'],
  engine: ['core', 'amg', 'io', 'util'],
  convert: ['core', 'engine', 'util'],
  pipeline: ['core', 'amg', 'io', 'output', 'engine', 'util'],
  hub: ['core', 'engine', 'convert', 'util'],
  queue: ['core', 'amg', 'io', 'output', 'engine', 'pipeline', 'hub', 'util'],
  commands: ['core', 'amg', 'io', 'output', 'export', 'engine', 'convert', 'pipeline', 'hub', 'queue', 'util'],
};
/** Typed arrays in, typed arrays out: no fs, no onnxruntime, no sharp. */
const PURE = new Set(['core', 'amg']);

const SRC = path.join(REPO_ROOT, 'src');

function tsFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    return e.isDirectory() ? tsFiles(p) : e.name.endsWith('.ts') ? [p] : [];
  });
}

/** Every module specifier of a file: static imports/exports and dynamic import(). */
export function specifiers(source: string): string[] {
  const out: string[] = [];
  const re = /(?:^|\n)\s*(?:import|export)\s[^'"]*?from\s*'([^']+)'|(?:^|\n)\s*import\s*'([^']+)'|\bimport\(\s*'([^']+)'\s*\)/g;
  for (let m = re.exec(source); m; m = re.exec(source)) out.push(m[1] ?? m[2] ?? m[3]);
  return out;
}

const roomOf = (file: string): string => path.relative(SRC, file).split(path.sep)[0];

const files = tsFiles(SRC);
const graph = new Map<string, string[]>();
for (const f of files) {
  graph.set(
    f,
    specifiers(readFileSync(f, 'utf8')).map((s) => (s.startsWith('.') ? path.resolve(path.dirname(f), s).replace(/\.js$/, '.ts') : s)),
  );
}

describe('src layout', () => {
  it('finds the rooms it knows and every file sits in one', () => {
    expect(files.length).toBeGreaterThan(40);
    const rooms = new Set(files.map(roomOf));
    expect([...rooms].sort()).toEqual(Object.keys(ALLOWED).sort());
  });

  it('the specifier scanner sees static, re-export and dynamic imports', () => {
    const s = "import a from 'x';\nimport type { B } from '../y.js';\nexport { c } from './z.js';\nconst m = await import('../w.js');\nimport 'side';";
    expect(specifiers(s).sort()).toEqual(['../w.js', '../y.js', './z.js', 'side', 'x']);
  });

  it('pure rooms import no Node built-in and no package', () => {
    const bad: string[] = [];
    for (const [f, deps] of graph) {
      if (!PURE.has(roomOf(f))) continue;
      for (const d of deps) if (!path.isAbsolute(d)) bad.push(`${path.relative(REPO_ROOT, f)} imports ${d}`);
    }
    expect(bad).toEqual([]);
  });

  it('rooms import only the rooms below them, never outside src/', () => {
    const bad: string[] = [];
    for (const [f, deps] of graph) {
      const from = roomOf(f);
      for (const d of deps) {
        if (!path.isAbsolute(d)) continue;
        const rel = path.relative(SRC, d);
        if (rel.startsWith('..')) {
          bad.push(`${path.relative(REPO_ROOT, f)} imports ${path.relative(REPO_ROOT, d)} (outside src/)`);
          continue;
        }
        const to = roomOf(d);
        if (to !== from && !ALLOWED[from].includes(to)) bad.push(`${path.relative(REPO_ROOT, f)} (${from}) imports ${path.relative(REPO_ROOT, d)} (${to})`);
      }
    }
    expect(bad).toEqual([]);
  });

  it('has no import cycle between files', () => {
    const state = new Map<string, 'open' | 'done'>();
    const cycles: string[] = [];
    const visit = (f: string, stack: string[]): void => {
      state.set(f, 'open');
      for (const d of graph.get(f) ?? []) {
        if (!graph.has(d)) continue;
        if (state.get(d) === 'open') cycles.push([...stack.slice(stack.indexOf(d)), d].map((p) => path.relative(SRC, p)).join(' → '));
        else if (!state.has(d)) visit(d, [...stack, d]);
      }
      state.set(f, 'done');
    };
    for (const f of graph.keys()) if (!state.has(f)) visit(f, [f]);
    expect(cycles).toEqual([]);
  });
});
