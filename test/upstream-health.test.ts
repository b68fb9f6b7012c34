// Upstream health (issue #3, "unreliable links"): when the upstream keeps failing, berth's circuit breaker
// opens, so clients get a fast 503 (containerd then tries its next host; a 429 would make it retry berth)
// instead of each waiting for timeouts, cached tags are still served (stale-if-error, with a Warning
// header), and /metrics says the upstream is down. A slow upstream still gets the client its response
// headers as soon as berth knows the blob's size and digest, not after the body.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { type BerthOptions, type InProcessBerth, startBerth } from './support/berth.ts';
import { buildImage, type Image, MediaTypes, pushImage } from './support/images.ts';
import { httpRequest, metricValue, sha256, waitUntil } from './support/links.ts';
import { type Relay, type RelayOptions, startRelay } from './support/relay.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const MB = 1_000_000;

let up: Upstream;
let work: string;
let cached: Image;
let uncached: Image;
let slow: Image;
const cleanups: Array<() => Promise<unknown>> = [];

before(async () => {
  work = await makeTempDir('upstream-health');
  up = await startUpstream();
  cached = await buildImage({ format: 'oci', layers: [{ files: { 'etc/motd': `cached ${Date.now()}\n` } }] });
  uncached = await buildImage({ format: 'oci', layers: [{ files: { 'etc/motd': `never cached ${Date.now()}\n` } }] });
  slow = await buildImage({ format: 'oci', layers: [{ randomBytes: 4 * MB, dir: work }] });
  await pushImage(up, 'lab/cached', '1', cached);
  await pushImage(up, 'lab/uncached', '1', uncached);
  await pushImage(up, 'lab/slow', '1', slow);
});

after(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
  await up?.stop();
  if (work) await removeTempDir(work);
});

async function relay(o: Omit<RelayOptions, 'target'> = {}): Promise<Relay> {
  const r = await startRelay({ target: { host: '127.0.0.1', port: up.port }, ...o });
  cleanups.push(() => r.close());
  return r;
}

async function berthWith(o: BerthOptions): Promise<InProcessBerth> {
  const b = await startBerth(o);
  cleanups.push(() => b.stop());
  return b;
}

const ACCEPT = { accept: MediaTypes.oci.manifest };

describe('a failing or slow upstream', () => {
  test('after repeated upstream failures berth answers 503 at once, never 429, serves cached tags with a Warning, and /metrics shows the upstream down', async () => {
    const link = await relay();
    // tagTtl 0: every tag request asks the upstream; the production retry backoff (500 ms, 5 attempts)
    const berth = await berthWith({
      tagTtl: '0s',
      retries: { attempts: 5, backoff: '500ms' },
      upstreams: [{ host: link.host, url: link.url(), timeouts: { connect: '20s', header: '20s', idle: '20s' } }],
    });
    // cache lab/cached:1 completely
    const m = await httpRequest(berth.url, '/v2/lab/cached/manifests/1', { headers: ACCEPT });
    assert.equal(m.status, 200);
    for (const b of [cached.config, ...cached.layers]) {
      const res = await httpRequest(berth.url, `/v2/lab/cached/blobs/${b.digest}`);
      assert.equal(sha256(res.body), b.digest);
    }
    await waitUntil('every fill to commit', async () => (await metricValue(berth.url, 'berth_fills_active')) === 0, 10_000);
    assert.equal(await metricValue(berth.url, 'berth_upstream_up', { upstream: link.host }), 1);

    // the upstream goes away: its open connections close and new ones are refused
    await up.halt();
    const statuses: number[] = [];
    let open = false;
    for (let i = 0; i < 10 && !open; i++) {
      const res = await httpRequest(berth.url, '/v2/lab/uncached/manifests/1', { headers: ACCEPT });
      statuses.push(res.status);
      open = res.status === 503 && /marked down/.test(res.body.toString());
    }
    assert.ok(open, `the circuit breaker opened after repeated failures; statuses ${statuses.join(',')}`);
    assert.ok(
      statuses.every((s) => s === 503 || s === 502),
      `failures are 5xx, never 429: ${statuses.join(',')}`,
    );
    assert.equal(await metricValue(berth.url, 'berth_upstream_up', { upstream: link.host }), 0, '/metrics: berth_upstream_up is 0');

    // the upstream comes back hung (connections accepted, nothing answered): each request would now cost
    // 20 s; with the breaker open none of them even connects
    link.setPlan({ all: { stallAfterBytes: 0 } });
    await up.restart();
    const connections = link.connections;
    const manifest = await httpRequest(berth.url, '/v2/lab/uncached/manifests/1', { headers: ACCEPT, timeoutMs: 5_000 });
    assert.equal(manifest.status, 503);
    assert.ok(manifest.totalMs < 1_000, `an uncached manifest failed in ${Math.round(manifest.totalMs)} ms`);

    const tag = await httpRequest(berth.url, '/v2/lab/cached/manifests/1', { headers: ACCEPT, timeoutMs: 5_000 });
    assert.equal(tag.status, 200, 'a cached tag is still served');
    assert.equal(sha256(tag.body), cached.manifestDigest);
    assert.match(String(tag.headers.warning ?? ''), /^110 /, 'with a Warning: 110 (response is stale)');
    assert.ok(tag.totalMs < 1_000, `the stale tag came in ${Math.round(tag.totalMs)} ms`);
    const layer = await httpRequest(berth.url, `/v2/lab/cached/blobs/${cached.layers[0]!.digest}`, { timeoutMs: 5_000 });
    assert.equal(layer.status, 200, 'cached blobs are served as ever');

    const blob = await httpRequest(berth.url, `/v2/lab/uncached/blobs/${uncached.layers[0]!.digest}`, { timeoutMs: 3_000 }).catch((err: Error) => ({
      status: 0,
      totalMs: Infinity,
      error: err.message,
    }));
    assert.equal(blob.status, 503, `an uncached blob is a 503 too (${'error' in blob ? blob.error : ''})`);
    assert.ok(blob.totalMs < 2_000, `an uncached blob failed in ${Math.round(blob.totalMs)} ms, not after retrying a dead upstream`);
    assert.equal(link.connections, connections, 'no request tried the upstream while the breaker was open');
    assert.ok((await metricValue(berth.url, 'berth_stale_served_total')) >= 1, '/metrics counts the stale answers');
  });

  test('a slow upstream still gets the client its response headers as soon as the blob size and digest are known', async () => {
    const blob = slow.layers[0]!;
    const link = await relay({ latencyMs: 200, rateBytesPerSec: 1 * MB });
    const berth = await berthWith({ upstreams: [{ host: link.host, url: link.url() }] });
    const m = await httpRequest(berth.url, '/v2/lab/slow/manifests/1', { headers: ACCEPT });
    assert.equal(m.status, 200);

    let bytesAtHeaders = -1;
    const res = await httpRequest(berth.url, `/v2/lab/slow/blobs/${blob.digest}`, { onHeaders: () => (bytesAtHeaders = link.bytesDown) });
    assert.equal(res.status, 200);
    assert.equal(Number(res.headers['content-length']), blob.size);
    assert.equal(res.headers['docker-content-digest'], blob.digest);
    assert.equal(sha256(res.body), blob.digest);
    assert.ok(bytesAtHeaders >= 0 && bytesAtHeaders < blob.size / 2, `when the headers came the upstream had sent ${bytesAtHeaders} of ${blob.size} bytes`);
    assert.ok(res.headersMs < res.totalMs / 2, `headers after ${Math.round(res.headersMs)} ms, body done after ${Math.round(res.totalMs)} ms`);
  });
});
