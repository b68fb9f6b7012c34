import cliProgress from 'cli-progress';
import { formatBytes } from '../config/units.ts';
import type { PrewarmEvent } from '../registry/prewarm.ts';

/**
 * Progress for operator commands: live bars (one per image and one for the total, with bytes, rate and
 * ETA) on a terminal; plain log lines, at most one per image every few seconds, anywhere else (CI, a pipe).
 */
export interface Progress {
  image(ref: string, total: number): void;
  update(ref: string, done: number): void;
  finish(ref: string, ok: boolean, note?: string): void;
  stop(): void;
}

/** Shows a prewarm event (from this process or a server's NDJSON stream) on a Progress. */
export function showPrewarmEvent(progress: Progress, e: PrewarmEvent): void {
  if (e.type === 'image') progress.image(e.ref, e.bytes);
  else if (e.type === 'progress') progress.update(e.ref, e.done);
  else if (e.type === 'done') progress.finish(e.ref, true, `${formatBytes(e.fetched)} fetched`);
  else if (e.type === 'error') progress.finish(e.ref, false, e.message);
}

export function createProgress(stream: NodeJS.WriteStream = process.stderr): Progress {
  return stream.isTTY ? new Bars(stream) : new Lines(stream);
}

class Bars implements Progress {
  private readonly multi: cliProgress.MultiBar;
  private readonly bars = new Map<string, cliProgress.SingleBar>();
  private readonly done = new Map<string, number>();
  private readonly totals = new Map<string, number>();
  private readonly total: cliProgress.SingleBar;

  constructor(stream: NodeJS.WriteStream) {
    this.multi = new cliProgress.MultiBar(
      {
        stream,
        clearOnComplete: false,
        hideCursor: true,
        format: ' {bar} {percentage}% | {name} | {value_h}/{total_h} | {rate}/s | ETA {eta_formatted}',
        formatValue: (v, _o, type) => (type === 'value' || type === 'total' ? String(v) : String(v)),
      },
      cliProgress.Presets.shades_classic,
    );
    this.total = this.multi.create(1, 0, this.payload('total', 0, 1, 0));
  }

  private started = Date.now();

  private payload(name: string, value: number, total: number, rate: number) {
    return { name, value_h: formatBytes(value), total_h: formatBytes(total), rate: formatBytes(rate) };
  }

  private readonly startedAt = new Map<string, number>();

  private rate(ref: string, done: number): number {
    return done / Math.max(0.001, (Date.now() - (this.startedAt.get(ref) ?? this.started)) / 1000);
  }

  image(ref: string, total: number): void {
    this.totals.set(ref, total);
    this.startedAt.set(ref, Date.now());
    this.bars.set(ref, this.multi.create(Math.max(1, total), 0, this.payload(ref, 0, total, 0)));
    this.refreshTotal();
  }

  update(ref: string, done: number): void {
    this.done.set(ref, done);
    const total = this.totals.get(ref) ?? 1;
    this.bars.get(ref)?.update(done, this.payload(ref, done, total, this.rate(ref, done)));
    this.refreshTotal();
  }

  private refreshTotal(): void {
    const total = [...this.totals.values()].reduce((a, b) => a + b, 0);
    const done = [...this.done.values()].reduce((a, b) => a + b, 0);
    this.total.setTotal(Math.max(1, total));
    this.total.update(done, this.payload('total', done, total, done / Math.max(0.001, (Date.now() - this.started) / 1000)));
  }

  finish(ref: string, _ok: boolean, note?: string): void {
    const bar = this.bars.get(ref);
    const total = this.totals.get(ref) ?? 0;
    if (bar) bar.update(total, this.payload(`${ref} ${note ?? ''}`.trim(), total, total, this.rate(ref, this.done.get(ref) ?? total)));
  }

  stop(): void {
    this.multi.stop();
  }
}

class Lines implements Progress {
  private readonly last = new Map<string, number>();
  private readonly totals = new Map<string, number>();
  private readonly started = new Map<string, number>();

  constructor(private readonly stream: NodeJS.WriteStream) {}

  private line(s: string): void {
    this.stream.write(`${new Date().toISOString()} ${s}\n`);
  }

  image(ref: string, total: number): void {
    this.totals.set(ref, total);
    this.started.set(ref, Date.now());
    this.line(`${ref}: ${formatBytes(total)} to fetch`);
  }

  update(ref: string, done: number): void {
    const now = Date.now();
    if (now - (this.last.get(ref) ?? 0) < 5000) return;
    this.last.set(ref, now);
    const total = this.totals.get(ref) ?? 0;
    const secs = Math.max(0.001, (now - (this.started.get(ref) ?? now)) / 1000);
    this.line(`${ref}: ${formatBytes(done)} of ${formatBytes(total)} (${total ? Math.floor((done / total) * 100) : 100}%, ${formatBytes(done / secs)}/s)`);
  }

  finish(ref: string, ok: boolean, note?: string): void {
    this.line(`${ref}: ${ok ? 'done' : 'FAILED'}${note ? ` — ${note}` : ''}`);
  }

  stop(): void {}
}
