import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import { SingleFlight } from './single-flight.ts';

/** What the metrics read at scrape time, from the parts the composition root built. */
export interface MetricSources {
  /** What the index holds and the quota (a SUM over every blob row: asked once per scrape). */
  storage?: () => Promise<{ bytes: number; blobs: number; quota: number | undefined }>;
  /** Total milliseconds spent waiting for bandwidth budget, by priority. */
  bandwidthWait?: () => Record<string, number>;
}

/**
 * berth's Prometheus metrics. One registry per server instance (no module state), so two servers in
 * one process — as tests run them — count separately.
 */
export class Metrics {
  readonly registry = new Registry();
  readonly requests = new Counter({ name: 'berth_http_requests_total', help: 'HTTP requests by route, method and status', labelNames: ['route', 'method', 'status'], registers: [this.registry] });
  readonly latency = new Histogram({
    name: 'berth_http_request_duration_seconds',
    help: 'Time to the response headers, by route',
    labelNames: ['route'],
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [this.registry],
  });
  readonly hits = new Counter({ name: 'berth_cache_hits_total', help: 'Requests answered from the cache', labelNames: ['kind'], registers: [this.registry] });
  readonly misses = new Counter({ name: 'berth_cache_misses_total', help: 'Requests that needed the upstream', labelNames: ['kind'], registers: [this.registry] });
  readonly bytesServed = new Counter({ name: 'berth_bytes_served_total', help: 'Blob bytes sent to clients, by where they came from', labelNames: ['source'], registers: [this.registry] });
  readonly upstreamBytes = new Counter({ name: 'berth_upstream_bytes_total', help: 'Blob bytes read from upstreams', labelNames: ['upstream', 'priority'], registers: [this.registry] });
  readonly fillJoins = new Counter({ name: 'berth_fill_joins_total', help: 'Readers that joined a fill already running instead of starting one', registers: [this.registry] });
  readonly fillsStarted = new Counter({ name: 'berth_fills_started_total', help: 'Fills started', registers: [this.registry] });
  readonly fillsFailed = new Counter({ name: 'berth_fills_failed_total', help: 'Fills that failed', registers: [this.registry] });
  readonly fillsActive = new Gauge({ name: 'berth_fills_active', help: 'Fills in progress', registers: [this.registry] });
  readonly staleServed = new Counter({
    name: 'berth_stale_served_total',
    help: 'Tags served from cache because the upstream could not be asked',
    labelNames: ['upstream', 'reason'],
    registers: [this.registry],
  });
  readonly upstreamUp = new Gauge({ name: 'berth_upstream_up', help: '1 when the upstream is reachable, 0 while its circuit breaker is open', labelNames: ['upstream'], registers: [this.registry] });
  readonly clientAuth = new Counter({
    name: 'berth_client_auth_checks_total',
    help: 'Password checks of clients: ok, failed (wrong password or user), throttled (refused without a check)',
    labelNames: ['result'],
    registers: [this.registry],
  });
  readonly upstreamDuration = new Histogram({
    name: 'berth_upstream_request_duration_seconds',
    help: 'Time from an upstream request to its response headers (auth and redirects included), by upstream and operation',
    labelNames: ['upstream', 'operation'],
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [this.registry],
  });
  readonly upstreamErrors = new Counter({
    name: 'berth_upstream_errors_total',
    help: 'Upstream requests that failed, by upstream and kind (unreachable, timeout, server_error, rate_limited, circuit_open)',
    labelNames: ['upstream', 'kind'],
    registers: [this.registry],
  });
  readonly estargzConversions = new Counter({
    name: 'berth_estargz_conversions_total',
    help: 'Layers and images converted to eStargz (not counting conversions found done)',
    labelNames: ['kind'],
    registers: [this.registry],
  });
  readonly evictions = new Counter({ name: 'berth_evictions_total', help: 'Blobs evicted by the storage quota', registers: [this.registry] });
  readonly evictedBytes = new Counter({ name: 'berth_evicted_bytes_total', help: 'Bytes evicted by the storage quota', registers: [this.registry] });
  readonly storageBytes = new Gauge({
    name: 'berth_storage_bytes',
    help: 'Bytes of verified content in the cache (from the index)',
    registers: [this.registry],
    collect: async () => {
      const s = await this.storage();
      if (s) this.storageBytes.set(s.bytes);
    },
  });
  readonly storageBlobs = new Gauge({
    name: 'berth_storage_blobs',
    help: 'Blobs in the cache (from the index)',
    registers: [this.registry],
    collect: async () => {
      const s = await this.storage();
      if (s) this.storageBlobs.set(s.blobs);
    },
  });
  readonly storageQuota = new Gauge({
    name: 'berth_storage_quota_bytes',
    help: 'storage.maxSize in bytes (absent without a quota)',
    registers: [this.registry],
    collect: async () => {
      const s = await this.storage();
      if (s?.quota !== undefined) this.storageQuota.set(s.quota);
    },
  });
  readonly bandwidthWait = new Gauge({
    name: 'berth_bandwidth_wait_seconds',
    help: 'Time transfers spent waiting for bandwidth budget, by priority',
    labelNames: ['priority'],
    registers: [this.registry],
    collect: () => {
      for (const [priority, ms] of Object.entries(this.sources.bandwidthWait?.() ?? {})) this.bandwidthWait.set({ priority }, ms / 1000);
    },
  });

  /**
   * The three storage gauges are collected at once in each scrape (prom-client awaits every collect together):
   * they share one read of the source, so a scrape costs the index one SUM, not three. Nothing is memoised: the
   * next scrape reads afresh.
   */
  private readonly storageRead = new SingleFlight<Awaited<ReturnType<NonNullable<MetricSources['storage']>>> | undefined>();
  private storage() {
    return this.storageRead.run('storage', async () => this.sources.storage?.());
  }

  constructor(
    private readonly sources: MetricSources = {},
    withProcessMetrics = true,
  ) {
    if (withProcessMetrics) collectDefaultMetrics({ register: this.registry, prefix: 'berth_' });
  }
}
