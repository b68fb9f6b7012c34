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
  private readonly perUpstream = new Map<string, { buckets: Buckets; second: number; firstSecond: number }>();

  constructor(private readonly now: () => number = Date.now) {}

  add(upstream: string, n: number, priority: Priority): void {
    const e = this.advance(upstream, true)!;
    e.buckets[priority][e.second % WINDOW_S]! += n;
  }

  /** Bytes in the last `seconds` (≤ 60), by priority. */
  last(upstream: string, seconds = WINDOW_S): Record<Priority, number> {
    const e = this.advance(upstream, false);
    const out: Record<Priority, number> = { foreground: 0, background: 0 };
    if (!e) return out;
    const span = Math.min(WINDOW_S, Math.max(1, seconds));
    for (let i = 0; i < span; i++) {
      const b = (e.second - i + WINDOW_S * 2) % WINDOW_S;
      out.foreground += e.buckets.foreground[b]!;
      out.background += e.buckets.background[b]!;
    }
    return out;
  }

  /**
   * Bytes per second over the last `seconds`, by priority; over less when the first byte from this
   * upstream came later than that (a transfer that began a second ago is not averaged over five).
   */
  rate(upstream: string, seconds: number): Record<Priority, number> {
    const e = this.advance(upstream, false);
    if (!e) return { foreground: 0, background: 0 };
    const span = Math.max(1, Math.min(seconds, e.second - e.firstSecond + 1));
    const b = this.last(upstream, span);
    return { foreground: Math.round(b.foreground / span), background: Math.round(b.background / span) };
  }

  /** Moves the upstream's window to now; `create`: start one for an upstream not seen yet (else undefined). */
  private advance(upstream: string, create: boolean): { buckets: Buckets; second: number; firstSecond: number } | undefined {
    const second = Math.floor(this.now() / 1000);
    let e = this.perUpstream.get(upstream);
    if (!e) {
      if (!create) return undefined;
      e = { buckets: { foreground: new Float64Array(WINDOW_S), background: new Float64Array(WINDOW_S) }, second, firstSecond: second };
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
