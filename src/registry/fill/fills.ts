import { Failpoints } from '../../failpoints.ts';
import type { Digest } from '../../oci/digest.ts';
import { RegistryError } from '../../oci/errors.ts';
import type { Priority } from '../../upstream/bandwidth.ts';
import { type BlobSource, Fill, type FillOptions } from './fill.ts';

export interface FillLimits {
  /** Fills running at once, all clients together. */
  maxConcurrent: number;
  /** Fills one client address may have started and still running. */
  maxPerClient: number;
  /** Lazy completions going on with no reader left, at once (they count against neither cap above). */
  maxBackground?: number;
}

/**
 * At most one fill per (upstream, digest): every reader of an uncached blob through that upstream joins
 * the same one. Unverified bytes are never shared across upstreams (one could send wrong bytes for
 * another's digest). New fills beyond the limits are refused with 503 (containerd then falls back to the
 * next host); joining a running fill is always allowed. A lazy completion that goes on with no reader left
 * (Fill.background) is background work: it no longer counts against `maxConcurrent` nor against the
 * `maxPerClient` of the client that started it, and at most `maxBackground` of them go on at once (past
 * that, one whose readers left is dropped after the grace like any abandoned fill).
 */
export class Fills {
  private readonly fills = new Map<string, Fill>();
  private readonly opening = new Map<string, Promise<Fill>>();
  /** Failed fills (by key) still removing or checkpointing their ingest file: a new fill of the key waits. */
  private readonly settling = new Map<string, Promise<void>>();
  private readonly perClient = new Map<string, number>();
  /** When each running fill (by key) started, and through which upstream: for the status page. */
  private readonly since = new Map<string, { upstream: string; startedAt: number }>();

  constructor(
    private readonly hooks: {
      started: () => void;
      ended: (fill: Fill, ok: boolean) => void;
      /** Blob bytes read from `upstream` by any fill (status page: bytes in the last minute). */
      upstreamBytes?: (upstream: string, n: number, priority: Priority) => void;
    },
    private readonly limits: FillLimits = { maxConcurrent: Infinity, maxPerClient: Infinity },
    /** The crash points of the fault tests (config `failpoints`), for every fill and its commit. */
    readonly failpoints: Failpoints = new Failpoints(),
  ) {}

  private static key(upstream: string, d: Digest): string {
    return `${upstream.toLowerCase()} ${d}`;
  }

  /** The fill of `d` through `upstream`; without `upstream`, any fill of `d` (for tests and introspection). */
  get(d: Digest, upstream?: string): Fill | undefined {
    if (upstream !== undefined) return this.fills.get(Fills.key(upstream, d));
    for (const f of this.fills.values()) if (f.digest === d) return f;
    return undefined;
  }

  get active(): number {
    return this.fills.size;
  }

  /**
   * The running fill of `d` through `upstream`, or a new one. `joined` says whether it was already there.
   * `client` (an address) is counted against `maxPerClient` when a new fill starts for it.
   */
  async acquire(upstream: string, d: Digest, source: BlobSource, options: FillOptions, client?: string): Promise<{ fill: Fill; joined: boolean }> {
    const k = Fills.key(upstream, d);
    const existing = this.fills.get(k);
    if (existing) return { fill: existing, joined: true };
    const pending = this.opening.get(k);
    if (pending) return { fill: await pending, joined: true };
    if (this.foreground() + this.opening.size >= this.limits.maxConcurrent) {
      throw new RegistryError('UNAVAILABLE', `berth is already fetching ${this.limits.maxConcurrent} blobs, the most it fetches at once; try again shortly`);
    }
    if (client !== undefined && (this.perClient.get(client) ?? 0) >= this.limits.maxPerClient) {
      throw new RegistryError('UNAVAILABLE', `this client already has ${this.limits.maxPerClient} blob downloads starting upstream, the most one client may; try again when one is done`);
    }
    if (client !== undefined) this.perClient.set(client, (this.perClient.get(client) ?? 0) + 1);
    let counted = client !== undefined;
    const uncount = () => {
      if (!counted || client === undefined) return;
      counted = false;
      const n = (this.perClient.get(client) ?? 1) - 1;
      if (n <= 0) this.perClient.delete(client);
      else this.perClient.set(client, n);
    };
    const backgroundSlotFree = () => this.all().filter((f) => f.background).length < (this.limits.maxBackground ?? 4);
    const observe = this.hooks.upstreamBytes;
    const observed: FillOptions = observe
      ? {
          ...options,
          onUpstreamBytes: (n, priority) => {
            options.onUpstreamBytes?.(n, priority);
            observe(upstream, n, priority);
          },
        }
      : options;
    // The same (upstream, digest) is the same ingest path: a failed fill must be done with it first.
    const settling = this.settling.get(k);
    const opts: FillOptions = { ...observed, backgroundSlotFree, failpoints: this.failpoints };
    const p = settling !== undefined ? settling.then(() => Fill.open(d, source, opts)) : Fill.open(d, source, opts);
    this.opening.set(k, p);
    try {
      const fill = await p;
      this.fills.set(k, fill);
      this.since.set(k, { upstream, startedAt: Date.now() });
      this.hooks.started();
      const end = (ok: boolean) => {
        if (this.fills.get(k) === fill) {
          this.fills.delete(k);
          this.since.delete(k);
        }
        uncount();
        if (!ok) {
          const done = fill.settled;
          this.settling.set(k, done);
          void done.then(() => {
            if (this.settling.get(k) === done) this.settling.delete(k);
          });
        }
        this.hooks.ended(fill, ok);
      };
      fill.once('committed', () => end(true));
      fill.once('failed', () => end(false));
      // Its client left and it goes on as background work: that client may start other fills.
      fill.once('background', uncount);
      return { fill, joined: false };
    } catch (err) {
      uncount();
      throw err;
    } finally {
      this.opening.delete(k);
    }
  }

  /** Fills that count against maxConcurrent: all but lazy completions going on without readers. */
  private foreground(): number {
    let n = 0;
    for (const f of this.fills.values()) if (!f.background) n++;
    return n;
  }

  all(): Fill[] {
    return [...this.fills.values()];
  }

  /** The running fills with the upstream each reads from and when it started (read-only; status page). */
  running(): Array<{ fill: Fill; upstream: string; startedAt: number }> {
    return [...this.fills].map(([k, fill]) => ({ fill, ...(this.since.get(k) ?? { upstream: k.slice(0, k.indexOf(' ')), startedAt: Date.now() }) }));
  }
}
