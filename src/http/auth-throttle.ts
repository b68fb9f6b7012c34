/**
 * Bounds the bcrypt work clients can cause. bcryptjs runs on the event loop, so every check costs the
 * serving thread its full price (~15 ms at cost 10): 20 clients sending wrong passwords took 80% of the
 * throughput. Two limits:
 *  - at most `concurrency` checks run at once, others wait in line (and a line past `maxQueue` is refused);
 *  - an address with `maxFailures` failed checks within `windowMs` is refused without a check for a backoff
 *    that doubles with each further lockout (1 s … 60 s); once locked out, a single further failure locks it
 *    again, until a success or `windowMs` without failures. Cached successful verifications bypass both.
 */
export interface ThrottleOptions {
  concurrency: number;
  maxQueue: number;
  maxFailures: number;
  windowMs: number;
  maxBackoffMs: number;
}

export const DEFAULT_THROTTLE: ThrottleOptions = { concurrency: 1, maxQueue: 64, maxFailures: 10, windowMs: 60_000, maxBackoffMs: 60_000 };

interface AddressState {
  failures: number[];
  lockouts: number;
  lockedUntil: number;
}

export class AuthThrottle {
  private running = 0;
  private readonly waiting: Array<() => void> = [];
  /** Bounded: the oldest addresses are forgotten first (a Map keeps insertion order). */
  private readonly addresses = new Map<string, AddressState>();

  constructor(private readonly o: ThrottleOptions = DEFAULT_THROTTLE) {}

  /** Milliseconds this address must still wait before its credentials are checked again, or 0. */
  retryInMs(address: string): number {
    const s = this.addresses.get(address);
    return s ? Math.max(0, s.lockedUntil - Date.now()) : 0;
  }

  /** Runs `check` within the concurrency bound; undefined when the line is full. */
  async run<T>(check: () => Promise<T>): Promise<T | undefined> {
    if (this.running >= this.o.concurrency) {
      if (this.waiting.length >= this.o.maxQueue) return undefined;
      await new Promise<void>((ok) => this.waiting.push(ok));
    }
    this.running++;
    try {
      return await check();
    } finally {
      this.running--;
      this.waiting.shift()?.();
    }
  }

  failed(address: string): void {
    const now = Date.now();
    let s = this.addresses.get(address);
    if (!s) {
      if (this.addresses.size >= 10_000) this.addresses.delete(this.addresses.keys().next().value!);
      s = { failures: [], lockouts: 0, lockedUntil: 0 };
      this.addresses.set(address, s);
    }
    const last = s.failures.at(-1) ?? s.lockedUntil;
    if (s.lockouts > 0 && now - Math.max(last, s.lockedUntil) > this.o.windowMs) s.lockouts = 0;
    s.failures = s.failures.filter((t) => now - t < this.o.windowMs);
    s.failures.push(now);
    if (s.failures.length >= (s.lockouts > 0 ? 1 : this.o.maxFailures)) {
      s.lockedUntil = now + Math.min(this.o.maxBackoffMs, 1000 * 2 ** s.lockouts);
      s.lockouts++;
      s.failures = [];
    }
  }

  succeeded(address: string): void {
    this.addresses.delete(address);
  }
}
