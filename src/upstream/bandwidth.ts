/**
 * The bandwidth budget: token buckets, one global and one per upstream, through which every byte read
 * from an upstream passes before berth reads the next. Not reading is what slows the sender (TCP flow
 * control), so the link itself is held to the limit.
 *
 * Two priorities. Foreground bytes (a client is waiting for them) are granted before any background
 * bytes (prewarm, completing a lazily-read blob); within a priority, waiters are served first come
 * first served, which shares the budget evenly between transfers reading similar chunk sizes.
 */
export type Priority = 'foreground' | 'background';

interface Waiter {
  bytes: number;
  resolve: () => void;
}

export class TokenBucket {
  private tokens: number;
  private last = performance.now();
  private readonly queues: Record<Priority, Waiter[]> = { foreground: [], background: [] };
  private timer: NodeJS.Timeout | undefined;
  /** Milliseconds callers spent waiting, by priority (for metrics). */
  readonly waitedMs: Record<Priority, number> = { foreground: 0, background: 0 };

  constructor(
    readonly rate: number,
    private readonly burst = Math.max(64 * 1024, rate / 20),
  ) {
    this.tokens = this.burst;
  }

  private refill(): void {
    const now = performance.now();
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) / 1000) * this.rate);
    this.last = now;
  }

  /** Resolves once `bytes` may be read. A grant may overdraw the bucket; the debt delays the next one. */
  take(bytes: number, priority: Priority): Promise<void> {
    this.refill();
    if (this.tokens > 0 && this.queues.foreground.length === 0 && (priority === 'foreground' || this.queues.background.length === 0)) {
      this.tokens -= bytes;
      return Promise.resolve();
    }
    const started = performance.now();
    return new Promise((resolve) => {
      this.queues[priority].push({
        bytes,
        resolve: () => {
          this.waitedMs[priority] += performance.now() - started;
          resolve();
        },
      });
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.timer) return;
    this.refill();
    while (this.tokens > 0) {
      const w = this.queues.foreground.shift() ?? this.queues.background.shift();
      if (!w) return;
      this.tokens -= w.bytes;
      w.resolve();
    }
    if (this.queues.foreground.length === 0 && this.queues.background.length === 0) return;
    const waitMs = Math.max(1, (-this.tokens / this.rate) * 1000 + 1);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.schedule();
    }, waitMs);
    this.timer.unref();
  }
}

/** The global bucket and the per-upstream ones; a chunk passes both. */
export class BandwidthBudget {
  private readonly global: TokenBucket | undefined;
  private readonly perUpstream = new Map<string, TokenBucket>();

  constructor(globalRate: number | undefined, upstreamRates: Iterable<[string, number | undefined]>) {
    this.global = globalRate ? new TokenBucket(globalRate) : undefined;
    for (const [host, rate] of upstreamRates) if (rate) this.perUpstream.set(host, new TokenBucket(rate));
  }

  get limited(): boolean {
    return this.global !== undefined || this.perUpstream.size > 0;
  }

  async take(upstream: string, bytes: number, priority: Priority): Promise<void> {
    const own = this.perUpstream.get(upstream);
    if (own) await own.take(bytes, priority);
    if (this.global) await this.global.take(bytes, priority);
  }

  /** Passes a body through the budget chunk by chunk. */
  async *throttle(upstream: string, body: AsyncIterable<Buffer>, priority: () => Priority): AsyncGenerator<Buffer> {
    const own = this.perUpstream.get(upstream);
    if (!own && !this.global) {
      yield* body;
      return;
    }
    for await (const chunk of body) {
      await this.take(upstream, chunk.length, priority());
      yield chunk;
    }
  }

  waitedMs(): Record<Priority, number> {
    const sum: Record<Priority, number> = { foreground: 0, background: 0 };
    for (const b of [this.global, ...this.perUpstream.values()]) {
      if (!b) continue;
      sum.foreground += b.waitedMs.foreground;
      sum.background += b.waitedMs.background;
    }
    return sum;
  }
}
