/**
 * A circuit breaker per upstream. After `threshold` failures in a row (connection refused, timeouts,
 * 5xx) the upstream is down for `coolOffMs`: requests fail at once instead of each waiting for a
 * timeout, and callers serve what is cached. The first request after the cool-off is let through to probe.
 */
export class UpstreamHealth {
  private failures = 0;
  private downUntil = 0;
  /** Times the breaker opened (for metrics). */
  trips = 0;

  constructor(
    private readonly threshold = 5,
    private readonly coolOffMs = 30_000,
    private readonly onChange: (down: boolean) => void = () => {},
  ) {}

  get down(): boolean {
    return Date.now() < this.downUntil;
  }

  /**
   * closed: requests go through. open: they fail at once until the cool-off ends. half-open: the cool-off
   * ended, the next request probes (a success closes it, a failure opens it again). For the status page.
   */
  get breaker(): 'closed' | 'open' | 'half-open' {
    if (this.down) return 'open';
    return this.downUntil > 0 ? 'half-open' : 'closed';
  }

  /** Failures in a row since the last success (the breaker opens at the threshold, then keeps threshold − 1). */
  get consecutiveFailures(): number {
    return this.failures;
  }

  /** Milliseconds until the next probe is allowed, or 0. */
  get retryInMs(): number {
    return Math.max(0, this.downUntil - Date.now());
  }

  success(): void {
    const wasDown = this.downUntil > 0;
    this.failures = 0;
    this.downUntil = 0;
    if (wasDown) this.onChange(false);
  }

  failure(): void {
    this.failures++;
    if (this.failures >= this.threshold) {
      this.downUntil = Date.now() + this.coolOffMs;
      this.failures = this.threshold - 1; // one more failure after the cool-off re-opens it
      this.trips++;
      this.onChange(true);
    }
  }
}
