/**
 * One call per key at a time: callers that ask for a key while its call is in flight share that call's
 * promise. With `memoMs`, a success keeps answering for that long after it settled (for answers that
 * cannot change, such as a digest's size); a failure is forgotten at once, so the next caller tries again.
 * Memo timers are unref'd: they never hold the process open.
 */
export class SingleFlight<V> {
  private readonly calls = new Map<string, Promise<V>>();

  constructor(private readonly memoMs = 0) {}

  /** The promise of the call in flight (or memoised) for `key`, else of a new `work()`. */
  run(key: string, work: () => Promise<V>): Promise<V> {
    const running = this.calls.get(key);
    if (running !== undefined) return running;
    let p: Promise<V>;
    try {
      p = work();
    } catch (err) {
      return Promise.reject(err);
    }
    this.calls.set(key, p);
    // Only this call's own entry is removed: a later call under the same key is not.
    const forget = () => {
      if (this.calls.get(key) === p) this.calls.delete(key);
    };
    p.then(() => {
      if (this.memoMs > 0) setTimeout(forget, this.memoMs).unref();
      else forget();
    }, forget);
    return p;
  }

  /** Whether a call for `key` is in flight or memoised (a caller that must know it joined one). */
  has(key: string): boolean {
    return this.calls.has(key);
  }

  /** Keys in flight or memoised. */
  get size(): number {
    return this.calls.size;
  }
}
