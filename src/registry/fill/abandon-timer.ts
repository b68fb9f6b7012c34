/**
 * The one timer of a fill that nobody reads: armed when its last reader leaves (or its request read
 * nothing), cleared when a reader comes back or the fill ends; on expiry the fill is dropped.
 */
export class AbandonTimer {
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly expired: (afterMs: number) => void) {}

  get armed(): boolean {
    return this.timer !== undefined;
  }

  arm(ms: number): void {
    this.clear();
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.expired(ms);
    }, ms);
    this.timer.unref();
  }

  clear(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }
}
