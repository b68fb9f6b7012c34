import pkg from '../../../package.json' with { type: 'json' };
import type { Metrics } from '../../metrics.ts';
import type { Fills } from '../../registry/fill/fills.ts';
import type { Upstreams } from '../../registry/upstreams.ts';
import type { CacheUsage } from '../../store/usage.ts';
import type { BandwidthBudget, Priority } from '../../upstream/bandwidth.ts';
import type { RecentBytes } from './recent-bytes.ts';
import type { RecentError, RecentErrors } from './recent-errors.ts';

/**
 * The answer of `GET /_berth/api/status` (an admin endpoint: admin-guard.ts). Sizes are bytes, rates bytes
 * per second, times ISO 8601 (`lastUsed` too; null when never read).
 *
 *   version, startedAt, uptimeSeconds, offline
 *   upstreams[]: host, url, default (the default upstream), breaker ('closed' | 'open' | 'half-open'),
 *     healthy (breaker not open), consecutiveFailures, trips (times the breaker opened), retryInMs (until the
 *     next probe while open), bytesLastMinute {foreground, background}, bandwidth {limit (null: none),
 *     inUse {foreground, background} (rate over the last 5 s)}
 *   bandwidth: the global budget: limit (null: none), inUse {foreground, background}, waitedSeconds {…}
 *   fills[]: digest, upstream, repository, state (waiting | sized | flowing), size (null until known),
 *     bytesOnDisk, rate, readers, priority, background (a lazy completion going on without readers),
 *     lazyRanges [{start, end}] (Range fetches in flight, inclusive), startedAt
 *   cache: usedBytes, blobs, quotaBytes (null: no storage.maxSize), usedFraction (null without a quota),
 *     hits, misses, hitRatio (null before any request), largestRepositories / recentRepositories
 *     [{upstream, repository, bytes, blobs, lastUsed}], largestTags / recentTags [{upstream, repository,
 *     tag, digest, bytes, lastUsed}], pins [{reference, blobs, bytes}]
 *   errors: total (since start), recent [{time, kind ('response' | 'fill'), status, code, method, path,
 *     digest, repository, message}] newest first
 */
export interface Status {
  version: string;
  startedAt: string;
  uptimeSeconds: number;
  /** `except-parents`: only upstreams of kind: berth are reached. */
  offline: boolean | 'except-parents';
  upstreams: UpstreamStatus[];
  bandwidth: { limit: number | null; inUse: Record<Priority, number>; waitedSeconds: Record<Priority, number> };
  fills: FillStatus[];
  cache: CacheStatus;
  errors: { total: number; recent: RecentError[] };
}

export interface UpstreamStatus {
  host: string;
  url: string;
  default: boolean;
  breaker: 'closed' | 'open' | 'half-open';
  healthy: boolean;
  consecutiveFailures: number;
  trips: number;
  retryInMs: number;
  bytesLastMinute: Record<Priority, number>;
  bandwidth: { limit: number | null; inUse: Record<Priority, number> };
}

export interface FillStatus {
  digest: string;
  upstream: string;
  repository: string | null;
  state: string;
  size: number | null;
  bytesOnDisk: number;
  rate: number;
  readers: number;
  priority: Priority;
  background: boolean;
  lazyRanges: Array<{ start: number; end: number }>;
  startedAt: string;
}

type Dated<T> = Omit<T, 'lastUsed'> & { lastUsed: string | null };
type Usage = { [K in keyof CacheUsage]: CacheUsage[K] extends Array<infer R> ? Array<R extends { lastUsed: number } ? Dated<R> : R> : never };

export interface CacheStatus extends Usage {
  usedBytes: number;
  blobs: number;
  quotaBytes: number | null;
  usedFraction: number | null;
  hits: number;
  misses: number;
  hitRatio: number | null;
}

export interface StatusSources {
  startedAt: number;
  offline: boolean | 'except-parents';
  upstreams: Pick<Upstreams, 'clients' | 'defaultHost'>;
  budget: Pick<BandwidthBudget, 'limits' | 'waitedMs'>;
  recentBytes: RecentBytes;
  fills: Pick<Fills, 'running'>;
  index: { totals(): Promise<{ total: number; count: number }>; usage(n: number): Promise<CacheUsage> };
  quota: { limit(): Promise<number | undefined> };
  metrics: Pick<Metrics, 'hits' | 'misses'>;
  errors: RecentErrors;
}

/** Repositories and tags listed per table. */
const TOP_N = 10;
/**
 * The cache tables are summed in SQL (store/usage.ts), synchronously on the event loop: at most once a
 * second, and never more often than keeps them under 1/USAGE_DUTY of the time (85 ms + 126 ms for 1,000
 * repositories and 5,000 tags: every 10 s), however many pages poll.
 */
const USAGE_MIN_INTERVAL_MS = 1000;
const USAGE_DUTY = 50;
/** Fill rates and bandwidth in use are measured over this much of the recent past. */
const RATE_WINDOW_MS = 5000;

const iso = (ms: number): string => new Date(ms).toISOString();
const dated = <T extends { lastUsed: number }>(rows: T[]): Array<Dated<T>> => rows.map((r) => ({ ...r, lastUsed: r.lastUsed > 0 ? iso(r.lastUsed) : null }));

async function counterTotal(c: Metrics['hits']): Promise<number> {
  return (await c.get()).values.reduce((n, v) => n + v.value, 0);
}

/**
 * Builds the status answer from the parts the composition root made. Keeps only what a rate needs (recent
 * byte counts of each running fill) and a moment's cache of the index summaries.
 */
export class StatusBuilder {
  private readonly samples = new Map<string, Array<{ t: number; bytes: number }>>();
  private usage: { next: number; value: CacheUsage } | undefined;

  constructor(private readonly s: StatusSources) {}

  async build(now = Date.now()): Promise<Status> {
    const s = this.s;
    const limits = s.budget.limits();
    const rateSeconds = RATE_WINDOW_MS / 1000;
    const upstreams: UpstreamStatus[] = s.upstreams.clients.map((c) => {
      const h = c.health;
      const limit = limits.perUpstream.get(c.host) ?? null;
      return {
        host: c.host,
        url: c.base.href,
        default: c.host === s.upstreams.defaultHost,
        breaker: h.breaker,
        healthy: h.breaker !== 'open',
        consecutiveFailures: h.consecutiveFailures,
        trips: h.trips,
        retryInMs: h.retryInMs,
        bytesLastMinute: s.recentBytes.last(c.host),
        bandwidth: { limit, inUse: s.recentBytes.rate(c.host, rateSeconds) },
      };
    });
    const total = { foreground: 0, background: 0 };
    for (const c of s.upstreams.clients) {
      const b = s.recentBytes.rate(c.host, rateSeconds);
      total.foreground += b.foreground;
      total.background += b.background;
    }
    const waited = s.budget.waitedMs();
    const { total: usedBytes, count: blobs } = await s.index.totals();
    const quotaBytes = (await s.quota.limit()) ?? null;
    const [hits, misses] = await Promise.all([counterTotal(s.metrics.hits), counterTotal(s.metrics.misses)]);
    const usage = await this.cachedUsage(now);
    return {
      version: pkg.version,
      startedAt: iso(s.startedAt),
      uptimeSeconds: Math.round((now - s.startedAt) / 1000),
      offline: s.offline,
      upstreams,
      bandwidth: { limit: limits.global ?? null, inUse: total, waitedSeconds: { foreground: waited.foreground / 1000, background: waited.background / 1000 } },
      fills: this.fills(now),
      cache: {
        usedBytes,
        blobs,
        quotaBytes,
        usedFraction: quotaBytes ? usedBytes / quotaBytes : null,
        hits,
        misses,
        hitRatio: hits + misses > 0 ? hits / (hits + misses) : null,
        largestRepositories: dated(usage.largestRepositories),
        recentRepositories: dated(usage.recentRepositories),
        largestTags: dated(usage.largestTags),
        recentTags: dated(usage.recentTags),
        pins: usage.pins,
      },
      errors: { total: s.errors.total, recent: s.errors.list() },
    };
  }

  private async cachedUsage(now: number): Promise<CacheUsage> {
    if (this.usage && now < this.usage.next) return this.usage.value;
    const started = performance.now();
    const value = await this.s.index.usage(TOP_N);
    this.usage = { next: now + Math.max(USAGE_MIN_INTERVAL_MS, (performance.now() - started) * USAGE_DUTY), value };
    return value;
  }

  /** Running fills, with each one's rate over the last few seconds of polls (since its start, at first). */
  private fills(now: number): FillStatus[] {
    const seen = new Set<string>();
    const out = this.s.fills.running().map(({ fill, upstream, startedAt }): FillStatus => {
      const key = `${upstream} ${fill.digest}`;
      seen.add(key);
      const bytes = fill.extents.bytes;
      const list = this.samples.get(key) ?? [];
      list.push({ t: now, bytes });
      while (list.length > 2 && now - list[0]!.t > RATE_WINDOW_MS) list.shift();
      this.samples.set(key, list);
      const first = list[0]!;
      const rate = now - first.t >= 500 ? ((bytes - first.bytes) * 1000) / (now - first.t) : now > startedAt ? (bytes * 1000) / (now - startedAt) : 0;
      return {
        digest: fill.digest,
        upstream,
        repository: fill.repository ?? null,
        state: fill.state,
        size: fill.size ?? null,
        bytesOnDisk: bytes,
        rate: Math.max(0, Math.round(rate)),
        readers: fill.readers,
        priority: fill.priority,
        background: fill.background,
        lazyRanges: fill.lazyRanges,
        startedAt: iso(startedAt),
      };
    });
    for (const k of this.samples.keys()) if (!seen.has(k)) this.samples.delete(k);
    return out;
  }
}
