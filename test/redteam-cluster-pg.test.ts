// Red team (issue #12): two berth replicas with `cluster:` sharing one PostgreSQL, which goes away while they
// work. PostgreSQL stopped mid-fill: the owner cannot heartbeat, yet its fill finishes, every client of both
// replicas gets the blob's bytes, the upstream sends it once, nothing answers 500 and no process exits.
// PostgreSQL back: the same processes take, release and hand over leases again without a restart.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { blobBytesServed } from './support/accesslog.ts';
import { query, type Replica, startReplica } from './support/cluster.ts';
import { type HashedGet, hashedGet } from './support/http.ts';
import { buildImage, type Image, pushImage } from './support/images.ts';
import { upstreamTrafficSince, waitUntil } from './support/links.ts';
import { type Postgres, startPostgres } from './support/postgres.ts';
import { type Relay, startRelay } from './support/relay.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const MB = 1_000_000;

let work: string;
let pgServer: Postgres;
let pgUrl: string;
let up: Upstream;
let relay: Relay;
let first: Image;
let second: Image;
let third: Image;
let a: Replica;
let b: Replica;

const blobPath = (img: Image) => `/v2/lab/pg/blobs/${img.layers[0]!.digest}`;
const settle = <T>(p: Promise<T>) =>
  p.then(
    (v) => ({ ok: true as const, v }),
    (err: Error) => ({ ok: false as const, err }),
  );

before(async () => {
  work = await makeTempDir('redteam-cluster-pg');
  [pgServer, up] = await Promise.all([startPostgres(), startUpstream()]);
  pgUrl = await pgServer.createDatabase();
  relay = await startRelay({ target: { host: '127.0.0.1', port: up.port }, rateBytesPerSec: 6 * MB });
  first = await buildImage({ format: 'oci', layers: [{ randomBytes: 24 * MB, dir: work }] });
  second = await buildImage({ format: 'oci', layers: [{ randomBytes: 2 * MB, dir: work }] });
  third = await buildImage({ format: 'oci', layers: [{ randomBytes: 1 * MB, dir: work }] });
  await pushImage(up, 'lab/pg', '1', first);
  await pushImage(up, 'lab/pg', '2', second);
  await pushImage(up, 'lab/pg', '3', third);
  const opts = { pgUrl, upstreams: [{ host: up.host, url: relay.url() }], leaseTimeout: '2s' };
  [a, b] = await Promise.all([startReplica('a', opts), startReplica('b', opts)]);
});

after(async () => {
  for (const r of [a, b]) await r?.stop().catch(() => {});
  await relay?.close();
  await up?.stop();
  await pgServer?.destroy();
  if (work) await removeTempDir(work);
});

describe('PostgreSQL goes away under a cluster', () => {
  test('stopped mid-fill: the owner finishes, clients of both replicas get the bytes, one upstream read, no 500', async () => {
    const layer = first.layers[0]!;
    const mark = up.logLineCount();
    const onA = [settle(hashedGet(`${a.url}${blobPath(first)}`)), settle(hashedGet(`${a.url}${blobPath(first)}`))];
    await waitUntil('a takes the lease', async () => (await query(pgUrl, 'SELECT owner FROM fill_leases WHERE digest = $1', [layer.digest])).length === 1);
    const onB = [settle(hashedGet(`${b.url}${blobPath(first)}`)), settle(hashedGet(`${b.url}${blobPath(first)}`))];
    await waitUntil('a third of the blob came down', () => relay.bytesDown > layer.size / 3, 20_000);
    await pgServer.stop();
    const started = performance.now();
    const results = await Promise.all([...onA, ...onB]);
    const wall = performance.now() - started;
    const seen = results.map((r) => (r.ok ? `${r.v.status} ${r.v.digest === layer.digest ? 'right' : 'WRONG'} ${r.v.bytes}` : `error ${r.err.message}`));
    console.log(`PostgreSQL stopped mid-fill: ${JSON.stringify(seen)} in ${Math.round(wall)} ms`);
    for (const r of results) {
      assert.ok(r.ok, `a client's GET broke: ${seen.join('; ')}`);
      assert.equal((r.v as HashedGet).status, 200, seen.join('; '));
      assert.equal((r.v as HashedGet).digest, layer.digest, seen.join('; '));
    }
    const traffic = await upstreamTrafficSince(up, mark);
    assert.equal(blobBytesServed(traffic, layer.digest), layer.size, 'the upstream sent the blob once');
    assert.ok(a.process.running && b.process.running, 'both replicas still run');
  });

  test('restarted: the same processes take and release leases again, and serve a new blob once', async () => {
    await pgServer.start();
    const layer = second.layers[0]!;
    const mark = up.logLineCount();
    const got = await waitUntil(
      'a cold blob through both replicas after PostgreSQL came back',
      async () => {
        const [ra, rb] = await Promise.all([hashedGet(`${a.url}${blobPath(second)}`), hashedGet(`${b.url}${blobPath(second)}`)]);
        return ra.status === 200 && rb.status === 200 ? [ra, rb] : undefined;
      },
      20_000,
      500,
    );
    for (const g of got) assert.equal(g.digest, layer.digest);
    assert.equal(blobBytesServed(await upstreamTrafficSince(up, mark), layer.digest), layer.size, 'one upstream read of the new blob');
    await waitUntil('the committed fill released its lease', async () => (await query(pgUrl, 'SELECT 1 FROM fill_leases WHERE digest = $1', [layer.digest])).length === 0);
    assert.ok(a.process.running && b.process.running, 'both replicas still run');
    for (const r of [a, b]) assert.doesNotMatch(r.log(), /unhandled|uncaught/i, `${r.name} logged an unhandled error`);
  });

  test('hung (SIGSTOP): a blob whose row is in memory is served at once, a cold one is a 503 within seconds, not a hang', async () => {
    // A hit on `second` (committed on both) puts its row in a's cache: the fill's own commit dropped it.
    assert.equal((await hashedGet(`${a.url}${blobPath(second)}`)).status, 200);
    pgServer.freeze();
    try {
      let t0 = performance.now();
      const hit = await hashedGet(`${a.url}${blobPath(second)}`);
      const hitMs = performance.now() - t0;
      // On a (a pooled connection to the hung server: the read timeout) and on b (maybe a new one: the connect timeout).
      t0 = performance.now();
      const cold = await hashedGet(`${a.url}${blobPath(third)}`);
      const coldMs = performance.now() - t0;
      t0 = performance.now();
      const coldB = await hashedGet(`${b.url}${blobPath(third)}`);
      const coldBMs = performance.now() - t0;
      console.log(`  cold on b: ${coldB.status} in ${Math.round(coldBMs)} ms`);
      assert.equal(coldB.status, 503);
      assert.ok(coldBMs < 10_000, `a miss on b waited ${Math.round(coldBMs)} ms on a hung PostgreSQL`);
      console.log(`PostgreSQL hung: cached ${hit.status} in ${Math.round(hitMs)} ms, cold ${cold.status} in ${Math.round(coldMs)} ms`);
      assert.equal(hit.status, 200);
      assert.equal(hit.digest, second.layers[0]!.digest);
      assert.ok(hitMs < 2000, `a hit took ${Math.round(hitMs)} ms`);
      assert.equal(cold.status, 503);
      assert.ok(coldMs < 10_000, `a miss waited ${Math.round(coldMs)} ms on a hung PostgreSQL`);
    } finally {
      pgServer.thaw();
    }
    const again = await waitUntil('the cold blob once PostgreSQL answers again', async () => ((await hashedGet(`${b.url}${blobPath(third)}`)).status === 200 ? true : undefined), 30_000, 500);
    assert.ok(again);
    assert.ok(a.process.running && b.process.running, 'both replicas still run');
  });
});
