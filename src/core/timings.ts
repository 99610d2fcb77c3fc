/** Per-stage wall time, for `npm run bench` and the run summary. Pure: performance.now only. */
export const STAGES = ['decode', 'preprocess', 'encoder', 'decoder', 'postprocess', 'nms', 'rle', 'write'] as const;
export type Stage = (typeof STAGES)[number];

export class StageTimes {
  readonly ms: Record<Stage, number> = Object.fromEntries(STAGES.map((s) => [s, 0])) as Record<Stage, number>;

  add(stage: Stage, ms: number): void {
    this.ms[stage] += ms;
  }

  async time<T>(stage: Stage, fn: () => Promise<T>): Promise<T> {
    const t = performance.now();
    try {
      return await fn();
    } finally {
      this.add(stage, performance.now() - t);
    }
  }

  timeSync<T>(stage: Stage, fn: () => T): T {
    const t = performance.now();
    try {
      return fn();
    } finally {
      this.add(stage, performance.now() - t);
    }
  }

  merge(other: StageTimes): void {
    for (const s of STAGES) this.ms[s] += other.ms[s];
  }
}
