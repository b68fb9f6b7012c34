import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

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
  readonly staleServed = new Counter({ name: 'berth_stale_served_total', help: 'Tags served from cache because the upstream could not be asked', labelNames: ['upstream', 'reason'], registers: [this.registry] });
  readonly upstreamUp = new Gauge({ name: 'berth_upstream_up', help: '1 when the upstream is reachable, 0 while its circuit breaker is open', labelNames: ['upstream'], registers: [this.registry] });
  readonly clientAuth = new Counter({ name: 'berth_client_auth_checks_total', help: 'Password checks of clients: ok, failed (wrong password or user), throttled (refused without a check)', labelNames: ['result'], registers: [this.registry] });
  /** Set by the composition root: total milliseconds spent waiting for budget, by priority. */
  bandwidthWaitSource: (() => Record<string, number>) | undefined;
  readonly bandwidthWait = new Gauge({
    name: 'berth_bandwidth_wait_seconds',
    help: 'Time transfers spent waiting for bandwidth budget, by priority',
    labelNames: ['priority'],
    registers: [this.registry],
    collect: () => {
      for (const [priority, ms] of Object.entries(this.bandwidthWaitSource?.() ?? {})) this.bandwidthWait.set({ priority }, ms / 1000);
    },
  });

  constructor(withProcessMetrics = true) {
    if (withProcessMetrics) collectDefaultMetrics({ register: this.registry, prefix: 'berth_' });
  }
}
