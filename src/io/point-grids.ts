import { readFile } from 'node:fs/promises';
import { inputError } from '../util/errors.js';

/**
 * `--point-grids FILE`: JSON array of grids, one per crop layer, each an array of [x, y] in [0, 1]
 * (SAM's point_grids argument), as the generator's flat Float64Array [n, 2] per layer.
 */
export async function readPointGrids(file: string): Promise<Float64Array[]> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(await readFile(file, 'utf8'));
  } catch (err) {
    throw inputError(`--point-grids ${file}: cannot read it as JSON (${(err as Error).message.split('\n')[0]}); give a JSON array of grids`, err);
  }
  const fix = 'expected a JSON array of grids (one per crop layer), each an array of [x, y] pairs in 0..1';
  if (!Array.isArray(parsed) || parsed.length === 0) throw inputError(`--point-grids ${file}: ${fix}`);
  return parsed.map((grid: unknown, layer) => {
    if (!Array.isArray(grid) || grid.length === 0) throw inputError(`--point-grids ${file}: grid ${layer} is not a non-empty array; ${fix}`);
    const out = new Float64Array(grid.length * 2);
    grid.forEach((p: unknown, i) => {
      const ok = Array.isArray(p) && p.length === 2 && p.every((v) => typeof v === 'number' && v >= 0 && v <= 1);
      if (!ok) throw inputError(`--point-grids ${file}: grid ${layer} point ${i} is ${JSON.stringify(p)}; ${fix}`);
      out[2 * i] = (p as number[])[0];
      out[2 * i + 1] = (p as number[])[1];
    });
    return out;
  });
}
