import type { Priority } from '../../upstream/bandwidth.ts';

/** Seconds of history kept: the status page shows the last minute. */
const WINDOW_S = 60;

type Buckets = Record<Priority, Float64Array>;

/**
 * Bytes read from each upstream, in one-second buckets over the last minute, by priority: what the status
 * page shows as "bytes in the last minute" and as the bandwidth in use now (the last few seconds). Fed by
 * the fill table's upstreamBytes hook; constant memory per upstream.
 */
export class RecentBytes {
  private readonly perUpstream = new Map<string, { buckets: Buckets; second: number }>();

  constructor(private readonly now: () => number = Date.now) {}

  add(upstream: string, n: number, priority: Priority): void {
    const e = this.advance(upstream);
    e.buckets[priority][e.second % WINDOW_S]! += n;
  }

  /** Bytes in the last `seconds` (≤ 60), by priority. */
  last(upstream: string, seconds = WINDOW_S): Record<Priority, number> {
    const e = this.advance(upstream);
    const out: Record<Priority, number> = { foreground: 0, background: 0 };
    const span = Math.min(WINDOW_S, Math.max(1, seconds));
    for (let i = 0; i < span; i++) {
      const b = (e.second - i + WINDOW_S * 2) % WINDOW_S;
      out.foreground += e.buckets.foreground[b]!;
      out.background += e.buckets.background[b]!;
    }
    return out;
  }

  /** Moves the upstream's window to the current second, zeroing the buckets it passed. */
  private advance(upstream: string): { buckets: Buckets; second: number } {
    const second = Math.floor(this.now() / 1000);
    let e = this.perUpstream.get(upstream);
    if (!e) {
      e = { buckets: { foreground: new Float64Array(WINDOW_S), background: new Float64Array(WINDOW_S) }, second };
      this.perUpstream.set(upstream, e);
      return e;
    }
    const passed = Math.min(WINDOW_S, second - e.second);
    for (let i = 1; i <= passed; i++) {
      const b = (e.second + i) % WINDOW_S;
      e.buckets.foreground[b] = 0;
      e.buckets.background[b] = 0;
    }
    if (second > e.second) e.second = second;
    return e;
  }
}
