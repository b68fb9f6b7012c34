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

/** Time for the buckets: the real one, or a test's (unit tests advance it by hand instead of sleeping). */
export interface Clock {
  /** Milliseconds, monotonic. */
  now(): number;
  /** Calls `fn` after `ms`; the pending call must not keep the process alive. */
  after(ms: number, fn: () => void): void;
}

export const realClock: Clock = {
  now: () => performance.now(),
  after: (ms, fn) => void setTimeout(fn, ms).unref(),
};

interface Waiter {
  bytes: number;
  resolve: () => void;
}

export class TokenBucket {
  private tokens: number;
  private last: number;
  private readonly queues: Record<Priority, Waiter[]> = { foreground: [], background: [] };
  /** A wake-up is pending (at most one per bucket). */
  private wakeUpPending = false;
  /** Milliseconds callers spent waiting, by priority (for metrics). */
  readonly waitedMs: Record<Priority, number> = { foreground: 0, background: 0 };

  constructor(
    readonly rate: number,
    private readonly burst = Math.max(64 * 1024, rate / 20),
    private readonly clock: Clock = realClock,
  ) {
    this.tokens = this.burst;
    this.last = clock.now();
  }

  private refill(): void {
    const now = this.clock.now();
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
    const started = this.clock.now();
    return new Promise((resolve) => {
      this.queues[priority].push({
        bytes,
        resolve: () => {
          this.waitedMs[priority] += this.clock.now() - started;
          resolve();
        },
      });
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.wakeUpPending) return;
    this.refill();
    while (this.tokens > 0) {
      const w = this.queues.foreground.shift() ?? this.queues.background.shift();
      if (!w) return;
      this.tokens -= w.bytes;
      w.resolve();
    }
    if (this.queues.foreground.length === 0 && this.queues.background.length === 0) return;
    const waitMs = Math.max(1, (-this.tokens / this.rate) * 1000 + 1);
    this.wakeUpPending = true;
    this.clock.after(waitMs, () => {
      this.wakeUpPending = false;
      this.schedule();
    });
  }
}

/** The global bucket and the per-upstream ones; a chunk passes both. */
export class BandwidthBudget {
  private readonly global: TokenBucket | undefined;
  private readonly perUpstream = new Map<string, TokenBucket>();

  constructor(globalRate: number | undefined, upstreamRates: Iterable<[string, number | undefined]>, clock: Clock = realClock) {
    this.global = globalRate ? new TokenBucket(globalRate, undefined, clock) : undefined;
    for (const [host, rate] of upstreamRates) if (rate) this.perUpstream.set(host, new TokenBucket(rate, undefined, clock));
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

  /** The configured rates in bytes per second (for the status page): the global one, and per upstream. */
  limits(): { global: number | undefined; perUpstream: Map<string, number> } {
    return { global: this.global?.rate, perUpstream: new Map([...this.perUpstream].map(([h, b]) => [h, b.rate])) };
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
