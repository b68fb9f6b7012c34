// Issue #13, the status page's JSON (`GET /_berth/api/status`, src/http/status/status.ts): every field
// against a real docker-registry upstream behind a throttled relay and an in-process berth. A fill shows with
// growing bytes while it runs, then leaves the list and its tag shows in the cache; a dead upstream shows its
// breaker open; error responses show in the recent errors; the quota figures are the index's; and the
// endpoint has the admin guard of /metrics (credentials with client auth, loopback only on the main listener).
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import pkg from '../package.json' with { type: 'json' };
import { RecentBytes } from '../src/http/status/recent-bytes.ts';
import type { Status } from '../src/http/status/status.ts';
import { type BerthOptions, type InProcessBerth, startBerth } from './support/berth.ts';
import { request } from './support/http.ts';
import { buildImage, type Image, MediaTypes, pushImage } from './support/images.ts';
import { metricValue, waitUntil } from './support/links.ts';
import { type Relay, startRelay } from './support/relay.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const run = promisify(execFile);
const basic = (user: string, password: string): string => `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
const ACCEPT = { accept: MediaTypes.oci.manifest };
const LAYER_BYTES = 2_000_000;
const RATE = 400_000;

let up: Upstream;
let link: Relay;
let work: string;
let slow: Image;
let small: Image;
let lazy: Image;
let berth: InProcessBerth;
let deadPort: number;
const cleanups: Array<() => Promise<unknown>> = [];

async function unusedPort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((ok) => s.listen(0, '127.0.0.1', ok));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((ok) => s.close(ok));
  return port;
}

async function berthWith(o: BerthOptions): Promise<InProcessBerth> {
  const b = await startBerth(o);
  cleanups.push(() => b.stop());
  return b;
}

before(async () => {
  work = await makeTempDir('status-api');
  up = await startUpstream();
  slow = await buildImage({ format: 'oci', layers: [{ randomBytes: LAYER_BYTES, dir: work }] });
  small = await buildImage({ format: 'oci', layers: [{ files: { 'etc/motd': `status ${Date.now()}\n` } }] });
  await pushImage(up, 'lab/slow', '1', slow);
  await pushImage(up, 'lab/small', '1', small);
  lazy = await buildImage({ format: 'oci', layers: [{ randomBytes: LAYER_BYTES, dir: work }] });
  await pushImage(up, 'lab/lazy', '1', lazy);
  link = await startRelay({ target: { host: '127.0.0.1', port: up.port }, rateBytesPerSec: RATE });
  cleanups.push(() => link.close());
  // Port 9 (discard): nothing here listens there, and no test can take it (a port freed and handed back by the
  // kernel could be bound by another test's server meanwhile, and the upstream would not be down).
  deadPort = 9;
  berth = await berthWith({
    maxSize: '1GiB',
    bandwidth: { limit: '40MiB/s' },
    retries: { attempts: 1, backoff: '10ms' },
    upstreams: [
      { host: link.host, url: link.url(), bandwidth: '20MiB/s' },
      { host: 'dead.test', url: `http://127.0.0.1:${deadPort}`, timeouts: { connect: '1s', header: '1s', idle: '1s' } },
    ],
  });
});

after(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
  await up?.stop();
  if (work) await removeTempDir(work);
});

async function status(base: string, headers: Record<string, string> = {}): Promise<Status> {
  const res = await fetch(`${base}/_berth/api/status`, { headers });
  assert.equal(res.status, 200, await res.clone().text());
  assert.match(res.headers.get('content-type') ?? '', /^application\/json/);
  assert.equal(res.headers.get('cache-control'), 'no-store');
  return (await res.json()) as Status;
}

/** GETs `url` and reads the body to the end; resolves with its sha256 and length. */
function pull(url: string): Promise<{ status: number; digest: string; bytes: number }> {
  return new Promise((resolve, reject) => {
    http
      .get(url, { agent: false }, (res) => {
        const h = createHash('sha256');
        let bytes = 0;
        res.on('data', (c: Buffer) => {
          h.update(c);
          bytes += c.length;
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, digest: `sha256:${h.digest('hex')}`, bytes }));
        res.on('error', reject);
      })
      .on('error', reject);
  });
}

describe('GET /_berth/api/status', () => {
  test('version, uptime and mode', async () => {
    const s = await status(berth.url);
    assert.equal(s.version, pkg.version);
    assert.equal(s.offline, false);
    assert.ok(s.uptimeSeconds >= 0 && s.uptimeSeconds < 600, String(s.uptimeSeconds));
    assert.ok(Math.abs(Date.parse(s.startedAt) - Date.now()) < 600_000, s.startedAt);
  });

  test('a fill through the throttled link shows with growing bytes, then leaves; its tag and repository show in the cache; the upstream shows the bytes', async () => {
    const layer = slow.layers[0]!;
    const m = await fetch(`${berth.url}/v2/lab/slow/manifests/1`, { headers: ACCEPT });
    assert.equal(m.status, 200);
    await m.arrayBuffer();
    const started = Date.now();
    const pulling = pull(`${berth.url}/v2/lab/slow/blobs/${layer.digest}`);
    const first = await waitUntil('the fill to show with bytes on disk', async () => (await status(berth.url)).fills.find((f) => f.digest === layer.digest && f.bytesOnDisk > 0), 10_000);
    assert.equal(first.upstream, link.host);
    assert.equal(first.repository, 'lab/slow');
    assert.equal(first.size, layer.size);
    assert.ok(first.readers >= 1, `readers ${first.readers}`);
    assert.equal(first.priority, 'foreground');
    assert.equal(first.background, false);
    assert.deepEqual(first.lazyRanges, []);
    assert.ok(['sized', 'flowing'].includes(first.state), first.state);
    assert.ok(Math.abs(Date.parse(first.startedAt) - started) < 5_000, first.startedAt);
    const later = await waitUntil('the byte count to grow', async () => (await status(berth.url)).fills.find((f) => f.digest === layer.digest && f.bytesOnDisk > first.bytesOnDisk + 100_000), 10_000);
    assert.ok(later.bytesOnDisk < layer.size, 'the fill was already complete: the link is not throttled');
    // The rate is measured over the last seconds of polls: the relay's rate, give or take.
    assert.ok(later.rate > RATE / 10 && later.rate < RATE * 4, `rate ${later.rate} B/s through a ${RATE} B/s link`);
    const inUse = (await status(berth.url)).upstreams.find((x) => x.host === link.host)!.bandwidth.inUse;
    assert.ok(inUse.foreground > RATE / 10 && inUse.foreground < RATE * 4 && inUse.background === 0, `in use ${JSON.stringify(inUse)}`);
    const pulled = await pulling;
    assert.equal(pulled.digest, layer.digest);
    const done = await waitUntil('the fill to leave the list', async () => {
      const s = await status(berth.url);
      return !s.fills.some((f) => f.digest === layer.digest) && s;
    });
    const u = done.upstreams.find((x) => x.host === link.host)!;
    assert.ok(u.bytesLastMinute.foreground >= layer.size, `bytes in the last minute ${JSON.stringify(u.bytesLastMinute)}`);
    assert.equal(u.bandwidth.limit, 20 * 1024 * 1024);
    assert.equal(done.bandwidth.limit, 40 * 1024 * 1024);
    const cached = await waitUntil('the tag to show as cached', async () => (await status(berth.url)).cache.recentTags.find((t) => t.repository === 'lab/slow' && t.tag === '1'));
    assert.equal(cached.upstream, link.host);
    assert.equal(cached.digest, slow.manifestDigest);
    assert.ok(cached.bytes >= layer.size, `tag bytes ${cached.bytes}`);
    assert.ok(cached.lastUsed && Date.now() - Date.parse(cached.lastUsed) < 60_000, String(cached.lastUsed));
    const s = await status(berth.url);
    const repo = s.cache.largestRepositories.find((r) => r.repository === 'lab/slow');
    assert.ok(repo && repo.bytes >= layer.size && repo.blobs >= 2, JSON.stringify(repo));
    assert.ok(s.cache.recentRepositories.some((r) => r.repository === 'lab/slow'));
    assert.ok(s.cache.largestTags.some((t) => t.repository === 'lab/slow' && t.tag === '1'));
  });

  test('disk used and quota are the index totals and storage.maxSize; hits and misses are the counters', async () => {
    const hit = await pull(`${berth.url}/v2/lab/slow/blobs/${slow.layers[0]!.digest}`);
    assert.equal(hit.status, 200);
    const s = await status(berth.url);
    const totals = await berth.berth.index.totals();
    assert.equal(s.cache.usedBytes, totals.total);
    assert.equal(s.cache.blobs, totals.count);
    assert.equal(s.cache.quotaBytes, 1024 ** 3);
    assert.equal(s.cache.usedFraction, totals.total / 1024 ** 3);
    assert.equal(s.cache.usedBytes, await metricValue(berth.url, 'berth_storage_bytes'));
    const hits = (await berth.berth.metrics.hits.get()).values.reduce((n, v) => n + v.value, 0);
    const misses = (await berth.berth.metrics.misses.get()).values.reduce((n, v) => n + v.value, 0);
    assert.ok(hits >= 1 && misses >= 1, `${hits} hits, ${misses} misses`);
    assert.equal(s.cache.hits, hits);
    assert.equal(s.cache.misses, misses);
    assert.equal(s.cache.hitRatio, hits / (hits + misses));
  });

  test('a prewarmed, pinned image shows in the pins', async () => {
    const res = await fetch(`${berth.url}/_berth/prewarm`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ references: [`${link.host}/lab/small:1`] }) });
    assert.equal(res.status, 200);
    assert.match(await res.text(), /"type":"summary"/);
    const pin = await waitUntil('the pin to show', async () => (await status(berth.url)).cache.pins.find((p) => p.reference.includes('lab/small')));
    // the manifest, its config and its layer
    assert.equal(pin.blobs, 3, JSON.stringify(pin));
    assert.equal(pin.bytes, small.manifest.length + small.config.size + small.layers[0]!.size);
  });

  test('an upstream that is down shows unhealthy with its breaker open; the others stay healthy', async () => {
    const before = (await status(berth.url)).upstreams.find((u) => u.host === 'dead.test')!;
    assert.equal(before.breaker, 'closed');
    assert.equal(before.healthy, true);
    await waitUntil(
      'the breaker of dead.test to open',
      async () => {
        const r = await fetch(`${berth.url}/v2/lab/x/manifests/1?ns=dead.test`, { headers: ACCEPT });
        await r.arrayBuffer();
        return (await status(berth.url)).upstreams.find((u) => u.host === 'dead.test')!.breaker === 'open';
      },
      30_000,
      10,
    );
    const s = await status(berth.url);
    const dead = s.upstreams.find((u) => u.host === 'dead.test')!;
    assert.equal(dead.healthy, false);
    assert.equal(dead.trips, 1);
    assert.ok(dead.retryInMs > 0 && dead.retryInMs <= 30_000, String(dead.retryInMs));
    assert.equal(dead.url, `http://127.0.0.1:${deadPort}/`);
    assert.equal(dead.default, false);
    const live = s.upstreams.find((u) => u.host === link.host)!;
    assert.deepEqual([live.breaker, live.healthy, live.default], ['closed', true, true]);
    // …and the failures show in the recent errors
    assert.ok(
      s.errors.recent.some((e) => e.path === '/v2/lab/x/manifests/1' && e.status === 503),
      JSON.stringify(s.errors.recent.slice(0, 3)),
    );
    // a blob fetch through it: the fill fails, and shows as a fill failure beside the 503 its client got
    const missing = `sha256:${createHash('sha256').update(`status-api ${Date.now()}`).digest('hex')}`;
    const blob = await fetch(`${berth.url}/v2/lab/x/blobs/${missing}?ns=dead.test`);
    assert.equal(blob.status, 503);
    await blob.arrayBuffer();
    const failed = await waitUntil('the failed fill to show', async () => (await status(berth.url)).errors.recent.find((e) => e.kind === 'fill' && e.digest === missing));
    assert.equal(failed.repository, 'lab/x');
    assert.match(failed.message, /dead\.test/);
  });

  test('error responses show in the recent errors, newest first, with time, status, code, path and message', async () => {
    const before = (await status(berth.url)).errors.total;
    const r = await fetch(`${berth.url}/v2/lab/small/manifests/no-such-tag`, { headers: ACCEPT });
    assert.equal(r.status, 404);
    await r.arrayBuffer();
    const bad = await fetch(`${berth.url}/v2/lab/small/blobs/sha256:nothex`);
    assert.equal(bad.status, 400);
    await bad.arrayBuffer();
    const s = await status(berth.url);
    assert.equal(s.errors.total, before + 2);
    const [newest, next] = s.errors.recent;
    assert.equal(newest!.path, '/v2/lab/small/blobs/sha256:nothex');
    assert.equal(newest!.status, 400);
    assert.equal(newest!.code, 'DIGEST_INVALID');
    assert.equal(newest!.method, 'GET');
    assert.equal(newest!.kind, 'response');
    assert.ok(newest!.message.length > 0);
    assert.ok(Date.now() - Date.parse(newest!.time) < 30_000, newest!.time);
    assert.equal(next!.path, '/v2/lab/small/manifests/no-such-tag');
    assert.equal(next!.status, 404);
    assert.equal(next!.code, 'MANIFEST_UNKNOWN');
  });

  test('the ring keeps the last 50 errors and clips long client text', async () => {
    for (let i = 0; i < 55; i++) {
      const r = await fetch(`${berth.url}/v2/lab/small/manifests/missing-${i}-${'x'.repeat(i === 54 ? 100 : 0)}`, { headers: ACCEPT });
      await r.arrayBuffer();
    }
    const long = await fetch(`${berth.url}/v2/lab/${'a'.repeat(1500)}/manifests/1`, { headers: ACCEPT });
    await long.arrayBuffer();
    const s = await status(berth.url);
    assert.equal(s.errors.recent.length, 50);
    assert.ok(s.errors.recent[0]!.path!.length <= 501, String(s.errors.recent[0]!.path!.length));
    assert.ok(s.errors.recent[1]!.path!.startsWith('/v2/lab/small/manifests/missing-54-'));
  });

  test('a Range read far ahead of an uncached blob shows as a lazy range of its fill while it is fetched', async () => {
    const layer = lazy.layers[0]!;
    const m = await fetch(`${berth.url}/v2/lab/lazy/manifests/1`, { headers: ACCEPT });
    assert.equal(m.status, 200);
    await m.arrayBuffer();
    const [start, end] = [1_000_000, 1_599_999];
    const ranged = request(berth.url, `/v2/lab/lazy/blobs/${layer.digest}`, { headers: { range: `bytes=${start}-${end}` } });
    const f = await waitUntil('the lazy range to show', async () => (await status(berth.url)).fills.find((x) => x.digest === layer.digest && x.lazyRanges.length > 0), 10_000, 10);
    assert.ok(
      f.lazyRanges.some((r) => r.start <= start && r.end >= end),
      JSON.stringify(f.lazyRanges),
    );
    assert.equal(f.repository, 'lab/lazy');
    const res = await ranged;
    assert.equal(res.status, 206);
    assert.equal(res.body.length, end - start + 1);
  });

  test('only GET: a POST is 405 UNSUPPORTED, not a crash', async () => {
    const r = await fetch(`${berth.url}/_berth/api/status`, { method: 'POST' });
    assert.equal(r.status, 405);
    const body = (await r.json()) as { errors: Array<{ code: string }> };
    assert.equal(body.errors[0]!.code, 'UNSUPPORTED');
  });
});

describe('bytes in the last minute', () => {
  test('count by priority, forget what is older than a minute, and measure the rate over what was seen', () => {
    let now = 1_000_000;
    const r = new RecentBytes(() => now);
    assert.deepEqual(r.last('u'), { foreground: 0, background: 0 });
    r.add('u', 1000, 'foreground');
    r.add('u', 10, 'background');
    now += 1000;
    r.add('u', 1000, 'foreground');
    assert.deepEqual(r.last('u'), { foreground: 2000, background: 10 });
    assert.deepEqual(r.rate('u', 5), { foreground: 1000, background: 5 }, 'two seconds seen: over two, not five');
    now += 30_000;
    r.add('u', 500, 'foreground');
    assert.deepEqual(r.last('u'), { foreground: 2500, background: 10 });
    now += 30_500;
    assert.deepEqual(r.last('u'), { foreground: 500, background: 0 }, 'the first two seconds are over a minute ago');
    now += 120_000;
    assert.deepEqual(r.last('u'), { foreground: 0, background: 0 });
    assert.deepEqual(r.last('other'), { foreground: 0, background: 0 });
  });
});

describe('who may read the status', () => {
  let locked: InProcessBerth;
  before(async () => {
    const htpasswd = path.join(work, 'htpasswd');
    const users = await Promise.all([run('htpasswd', ['-Bbn', 'puller', 'pull-pw']), run('htpasswd', ['-Bbn', 'operator', 'op-pw'])]);
    await writeFile(htpasswd, `${users.map((u) => u.stdout.trim()).join('\n')}\n`);
    locked = await berthWith({ upstreams: [{ host: up.host, url: up.url }], auth: { htpasswd, admins: ['operator'] } });
  });

  test('with client auth on: 401 (basic challenge) without credentials, 403 for a user who is not an admin, 200 for an admin', async () => {
    for (const p of ['/_berth/api/status', '/_berth/', '/_berth']) {
      const anon = await fetch(`${locked.url}${p}`);
      assert.equal(anon.status, 401, p);
      assert.match(anon.headers.get('www-authenticate') ?? '', /^Basic realm=/);
      await anon.arrayBuffer();
      const user = await fetch(`${locked.url}${p}`, { headers: { authorization: basic('puller', 'pull-pw') } });
      assert.equal(user.status, 403, p);
      await user.arrayBuffer();
      const wrong = await fetch(`${locked.url}${p}`, { headers: { authorization: basic('operator', 'nope') } });
      assert.equal(wrong.status, 401, p);
      await wrong.arrayBuffer();
    }
    const s = await status(locked.url, { authorization: basic('operator', 'op-pw') });
    assert.equal(s.version, pkg.version);
  });

  test('on the main listener, a client that is not on this machine gets 403 (unless admin.allowRemote)', async () => {
    const open = await berthWith({ upstreams: [{ host: up.host, url: up.url }], admin: { allowRemote: true } });
    // All traffic stays on loopback, so the remote client is simulated: each connection these two berths
    // accept reports a LAN address as its peer, as a client on another machine would have.
    const ports = new Set([berth.port, open.port]);
    const proto = net.Server.prototype as unknown as { emit: (event: string, ...args: unknown[]) => boolean };
    const hadOwn = Object.hasOwn(proto, 'emit');
    const emit = proto.emit;
    proto.emit = function (this: net.Server, event: string, ...args: unknown[]) {
      const port = (this.address() as net.AddressInfo | null)?.port;
      if (event === 'connection' && port !== undefined && ports.has(port)) Object.defineProperty(args[0] as net.Socket, 'remoteAddress', { value: '192.168.7.7' });
      return emit.call(this, event, ...args);
    };
    try {
      // Fresh connections (request() pools nothing): a kept-alive one from before would still be loopback.
      for (const p of ['/_berth/api/status', '/_berth/']) {
        const r = await request(berth.url, p);
        assert.equal(r.status, 403, p);
        const body = JSON.parse(r.body.toString('utf8')) as { errors: Array<{ code: string; message: string }> };
        assert.equal(body.errors[0]!.code, 'DENIED');
        assert.match(body.errors[0]!.message, /admin\.allowRemote/);
        const allowed = await request(open.url, p);
        assert.equal(allowed.status, 200, p);
      }
      // the registry API is not an admin endpoint
      const v2 = await request(berth.url, '/v2/');
      assert.equal(v2.status, 200);
    } finally {
      if (hadOwn) proto.emit = emit;
      else delete (proto as { emit?: unknown }).emit;
    }
  });

  test('with admin.listen, the status is served there, and is 404 on the main listener', async () => {
    const adminPort = await unusedPort();
    const split = await berthWith({ upstreams: [{ host: up.host, url: up.url }], admin: { listen: `127.0.0.1:${adminPort}` } });
    for (const p of ['/_berth/api/status', '/_berth/']) {
      const main = await fetch(`${split.url}${p}`);
      assert.equal(main.status, 404, p);
      await main.arrayBuffer();
    }
    const s = await status(`http://127.0.0.1:${adminPort}`);
    assert.equal(s.upstreams[0]!.host, up.host);
    const page = await fetch(`http://127.0.0.1:${adminPort}/_berth/`);
    assert.equal(page.status, 200);
    assert.match(page.headers.get('content-type') ?? '', /^text\/html/);
    await page.arrayBuffer();
  });
});
