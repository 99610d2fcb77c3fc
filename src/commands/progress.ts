import cliProgress from 'cli-progress';

export type ItemStatus = 'done' | 'skipped' | 'failed';

/**
 * Progress of a batch: a cli-progress bar with images/s and ETA on a TTY, one plain line per
 * image otherwise (logs, CI), nothing with --quiet. Failures always reach stderr.
 */
export class BatchProgress {
  private bar?: cliProgress.SingleBar;
  private count = 0;
  private total = 0;
  private readonly started = Date.now();

  constructor(
    private readonly quiet: boolean,
    private readonly stream: NodeJS.WriteStream = process.stderr,
  ) {}

  start(total: number, what = 'images'): void {
    this.total = total;
    if (this.quiet) return;
    if (this.stream.isTTY && total > 0) {
      this.bar = new cliProgress.SingleBar(
        {
          stream: this.stream,
          format: `{bar} {value}/{total} ${what} | {rate}/s | ETA {eta_formatted} | {item}`,
          hideCursor: true,
          etaBuffer: 20,
        },
        cliProgress.Presets.shades_classic,
      );
      this.bar.start(total, 0, { rate: '0.00', item: '' });
    }
  }

  tick(item: string, status: ItemStatus, detail?: string): void {
    this.count++;
    const secs = (Date.now() - this.started) / 1000;
    const rate = secs > 0 ? (this.count / secs).toFixed(2) : '0.00';
    if (status === 'failed') this.log(`failed ${item}: ${detail ?? ''}`);
    if (this.bar) {
      this.bar.update(this.count, { rate, item });
    } else if (!this.quiet && status !== 'failed') {
      this.stream.write(`[${this.count}/${this.total}] ${status} ${item}${detail ? ` (${detail})` : ''}\n`);
    }
  }

  /** A line that must not be drawn over by the bar. */
  log(line: string): void {
    if (this.bar) {
      this.stream.write('\r\x1b[K');
      this.stream.write(`${line}\n`);
      this.bar.render();
    } else {
      this.stream.write(`${line}\n`);
    }
  }

  stop(): void {
    this.bar?.stop();
    this.bar = undefined;
  }
}
