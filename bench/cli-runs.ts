/**
 * Whole `sam auto` runs for the bench, each in its own process (so peak RSS is that run's):
 * wall time, peak RSS (GNU time), the CLI's own stage times, masks and prompts.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { STAGES, type Stage } from '../src/core/timings.js';

export interface CliRun {
  label: string;
  wallS: number;
  peakRssMb?: number;
  stages: Partial<Record<Stage, number>>;
  masks: number;
  images: number;
  /** Decoder prompts run and those of the full grid (hierarchical runs print them). */
  prompts?: { run: number; grid: number };
}

const GNU_TIME = '/usr/bin/time';

/**
 * Run `argv` (a program and its arguments) as a child, under GNU time when the machine has it:
 * exit code, stderr, wall seconds and peak RSS in MB (NaN without GNU time).
 */
export async function timedProcess(argv: readonly string[]): Promise<{ code: number | null; stderr: string; wallS: number; rssMb: number }> {
  const useTime = existsSync(GNU_TIME);
  const [cmd, args] = useTime ? [GNU_TIME, ['-f', 'SAMBENCH %e %M', ...argv]] : [argv[0], argv.slice(1)];
  const t0 = performance.now();
  const { code, stderr } = await new Promise<{ code: number | null; stderr: string }>((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (d: string) => (err += d));
    child.on('error', reject);
    child.on('close', (c) => resolve({ code: c, stderr: err }));
  });
  const wall = (performance.now() - t0) / 1000;
  const timeLine = /SAMBENCH ([\d.]+) (\d+)/.exec(stderr);
  return { code, stderr, wallS: timeLine ? Number(timeLine[1]) : wall, rssMb: timeLine ? Number(timeLine[2]) / 1024 : NaN };
}

/** Run `sam auto IMAGES --out TMP ...args` and read its figures; throws when it fails. */
export async function runAuto(samBin: string, label: string, images: readonly string[], args: readonly string[]): Promise<CliRun> {
  const out = await mkdtemp(path.join(tmpdir(), 'sam-bench-out-'));
  const { code, stderr, wallS, rssMb } = await timedProcess([process.execPath, samBin, 'auto', ...images, '--out', out, ...args]);
  await rm(out, { recursive: true, force: true });
  if (code !== 0) throw new Error(`${label}: sam auto exited ${code}:\n${stderr.split('\n').slice(-6).join('\n')}`);
  const stageLine = /time by stage: (.*)/.exec(stderr)?.[1] ?? '';
  const stages: Partial<Record<Stage, number>> = {};
  for (const s of STAGES) {
    const m = new RegExp(`\\b${s} ([\\d.]+) s`).exec(stageLine);
    if (m) stages[s] = Number(m[1]);
  }
  const summary = /(\d+) done, \d+ skipped, \d+ failed, (\d+) masks(?:, (\d+) of (\d+) prompts)?/.exec(stderr);
  return {
    label,
    wallS,
    peakRssMb: Number.isNaN(rssMb) ? undefined : rssMb,
    stages,
    images: summary ? Number(summary[1]) : 0,
    masks: summary ? Number(summary[2]) : 0,
    prompts: summary?.[3] ? { run: Number(summary[3]), grid: Number(summary[4]) } : undefined,
  };
}
