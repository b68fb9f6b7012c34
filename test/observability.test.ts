// Issue #8 item 18, what operators need to see: /healthz answered {"ok":true} whatever happened. Now
// /livez (the process answers), /readyz (index and storage writable; upstream state and offline mode in the
// body, not failing readiness) with /healthz as its alias; metrics for storage bytes and quota, evictions,
// upstream errors by kind and upstream latency; client address and user agent in the request log line.
// src/readiness.ts, src/metrics.ts, src/http/app.ts.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import pino from 'pino';
import { type InProcessBerth, startBerth } from './support/berth.ts';
import { ACCEPT_ALL_MANIFESTS, buildImage, type Image, pushImage } from './support/images.ts';
import { metricValue, waitUntil } from './support/links.ts';
import { describeOutcome, fetchOutcome, sha256Of } from './support/outcome.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

let up: Upstream;
let b: InProcessBerth;
let offline: InProcessBerth;
const images: Image[] = [];
const logLines: string[] = [];

interface Ready {
  ready: boolean;
  checks: { index: string; storage: string };
  offline: boolean;
  upstreams: Array<{ host: string; up: boolean }>;
}

before(async () => {
  up = await startUpstream();
  for (let i = 0; i < 2; i++) {
    // ~600 KB of incompressible layers each: two images do not fit the 1 MiB quota together.
    images.push(await buildImage({ format: 'oci', layers: [{ files: { 'a.bin': randomBytes(300_000) } }, { files: { 'b.bin': randomBytes(300_000) } }] }));
    await pushImage(up, `lab/obs-${i}`, '1', images[i]!);
  }
  const log = pino({ level: 'info' }, { write: (s: string) => void logLines.push(s) });
  b = await startBerth({ upstreams: [{ host: up.host, url: up.url }], maxSize: '1MiB' }, log);
  offline = await startBerth({ upstreams: [{ host: up.host, url: up.url }], offline: true });
});

after(async () => {
  await b?.stop();
  await offline?.stop();
  await up?.stop();
});

async function ready(base: string, p = '/readyz'): Promise<{ status: number; body: Ready }> {
  const r = await fetchOutcome(base, p);
  return { status: r.status!, body: JSON.parse(r.body.toString('utf8')) as Ready };
}

async function pull(i: number): Promise<void> {
  const m = await fetchOutcome(b.url, `/v2/lab/obs-${i}/manifests/1`, { headers: { accept: ACCEPT_ALL_MANIFESTS, 'user-agent': 'containerd/1.7.0 (observability test)' } });
  assert.equal(m.status, 200, describeOutcome(m));
  for (const blob of [images[i]!.config, ...images[i]!.layers]) {
    const r = await fetchOutcome(b.url, `/v2/lab/obs-${i}/blobs/${blob.digest}`);
    assert.equal(r.status, 200, describeOutcome(r));
    assert.equal(sha256Of(r.body), blob.digest);
  }
}

describe('health', () => {
  test('/livez answers while the process runs; /readyz and its alias /healthz report the checks, the upstreams and offline mode', async () => {
    const live = await fetchOutcome(b.url, '/livez');
    assert.equal(live.status, 200, describeOutcome(live));
    for (const p of ['/readyz', '/healthz']) {
      const r = await ready(b.url, p);
      assert.equal(r.status, 200, JSON.stringify(r.body));
      assert.deepEqual(r.body.checks, { index: 'ok', storage: 'ok' });
      assert.equal(r.body.offline, false);
      assert.deepEqual(r.body.upstreams, [{ host: up.host, up: true }]);
    }
    const o = await ready(offline.url);
    assert.equal(o.status, 200, `offline on purpose is ready: ${JSON.stringify(o.body)}`);
    assert.equal(o.body.offline, true);
  });

  test('a storage directory that cannot take files makes /readyz (and /healthz) 503, and ready again once it can', async () => {
    const tmp = path.join(b.storage, 'tmp');
    await rm(tmp, { recursive: true, force: true });
    await writeFile(tmp, 'not a directory'); // as root, permissions would not stop a write: a file in the way does
    try {
      for (const p of ['/readyz', '/healthz']) {
        const r = await ready(b.url, p);
        assert.equal(r.status, 503, `${p}: ${JSON.stringify(r.body)}`);
        assert.equal(r.body.ready, false);
        assert.match(r.body.checks.storage, /^failed/);
      }
      assert.equal((await fetchOutcome(b.url, '/livez')).status, 200, '/livez stays 200: restarting would not fix storage');
    } finally {
      await rm(tmp, { force: true });
      await mkdir(tmp);
    }
    assert.equal((await ready(b.url)).status, 200);
  });
});

describe('health: the index', () => {
  test('an index another process holds the write lock on makes /readyz 503 at once (not after the 5 s busy wait)', async () => {
    const other = new Database(path.join(b.storage, 'berth.db'), { timeout: 0 });
    other.exec('BEGIN IMMEDIATE');
    try {
      const r = await fetchOutcome(b.url, '/readyz');
      assert.equal(r.status, 503, describeOutcome(r));
      assert.match(JSON.parse(r.body.toString('utf8')).checks.index as string, /^failed/);
      assert.ok(r.ms < 2_000, `answered in ${Math.round(r.ms)} ms`);
    } finally {
      other.exec('ROLLBACK');
      other.close();
    }
    assert.equal((await ready(b.url)).status, 200);
  });
});

describe('metrics', () => {
  test('storage bytes, quota, evictions and upstream latency by operation', async () => {
    await pull(0);
    await pull(1);
    const quota = await metricValue(b.url, 'berth_storage_quota_bytes');
    assert.equal(quota, 1024 * 1024);
    await waitUntil('an eviction to be counted', async () => (await metricValue(b.url, 'berth_evictions_total')) >= 1, 10_000);
    const stored = await metricValue(b.url, 'berth_storage_bytes');
    const { total } = await b.berth.index.totals();
    assert.equal(stored, total, 'berth_storage_bytes is what the index holds');
    assert.ok(stored > 0 && stored <= quota, `stored ${stored} within the quota ${quota}`);
    assert.ok((await metricValue(b.url, 'berth_evicted_bytes_total')) > 0);
    for (const operation of ['manifest', 'blob']) {
      const n = await metricValue(b.url, 'berth_upstream_request_duration_seconds_count', { upstream: up.host, operation });
      assert.ok(n >= 1, `upstream ${operation} requests timed: ${n}`);
    }
  });

  test('the request log line names the client address and user agent', () => {
    const lines = logLines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.msg === 'request' && String(l.path).includes('/manifests/'));
    const line = lines.find((l) => l.userAgent === 'containerd/1.7.0 (observability test)');
    assert.ok(line, `a request line with the user agent: ${JSON.stringify(lines.slice(0, 2))}`);
    assert.equal(line.client, '127.0.0.1');
  });

  test('with the upstream down: errors by kind are counted, readiness reports it without failing', async () => {
    await up.halt();
    try {
      for (let i = 0; i < 7; i++) {
        const r = await fetchOutcome(b.url, `/v2/lab/cold-${i}/manifests/1`, { headers: { accept: ACCEPT_ALL_MANIFESTS } });
        assert.equal(r.status, 503, describeOutcome(r));
      }
      assert.ok((await metricValue(b.url, 'berth_upstream_errors_total', { upstream: up.host, kind: 'unreachable' })) >= 5);
      assert.ok((await metricValue(b.url, 'berth_upstream_errors_total', { upstream: up.host, kind: 'circuit_open' })) >= 1);
      const r = await ready(b.url);
      assert.equal(r.status, 200, `a down upstream does not make berth unready (the cache still serves): ${JSON.stringify(r.body)}`);
      assert.equal(r.body.upstreams[0]!.up, false);
    } finally {
      await up.restart();
    }
  });
});
