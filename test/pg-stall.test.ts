// PostgreSQL that hangs behind a link that still accepts TCP and passes nothing (issue #12, "Bad input and
// faults": during operation cached content on local disk is still served, what needs the index answers 503
// fast, and berth recovers without a restart). A stalling relay of the test's own sits between a real
// `berth serve` replica (config cluster, its pool and the lease pool both through the relay) and a real
// PostgreSQL 15; the upstream is a real docker-registry.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { CLUSTER_SECRET, type Replica, startReplica } from './support/cluster.ts';
import { hashedGet, request } from './support/http.ts';
import { buildImage, type Image, pushImage } from './support/images.ts';
import { waitUntil } from './support/links.ts';
import { type Postgres, startPostgres } from './support/postgres.ts';
import { type StallRelay, startStallRelay } from './support/stall-relay.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

/** The point reads a request waits on give up after 5 s (src/store/pg/db.ts pointTimeoutMs); the connect timeout is 3 s. */
const BOUND_MS = 9000;

describe('PostgreSQL hung behind a stalled link while berth serves', () => {
  let pg: Postgres;
  let relay: StallRelay;
  let up: Upstream;
  let work: string;
  let replica: Replica;
  let warm: Image;
  let cold: Image;
  /** Asked for only by digest while stalled (the tag request of `cold` stores its manifest on local disk). */
  let other: Image;

  before(async () => {
    work = await makeTempDir('pg-stall');
    [pg, up] = await Promise.all([startPostgres(), startUpstream()]);
    const direct = new URL(await pg.createDatabase());
    relay = await startStallRelay({ host: direct.hostname, port: Number(direct.port) });
    const viaRelay = new URL(direct);
    viaRelay.port = String(relay.port);
    warm = await buildImage({ format: 'oci', layers: [{ randomBytes: 1024 * 1024, dir: work }] });
    cold = await buildImage({ format: 'oci', layers: [{ randomBytes: 64 * 1024, dir: work }] });
    await pushImage(up, 'lab/warm', '1', warm);
    other = await buildImage({ format: 'oci', layers: [{ randomBytes: 64 * 1024, dir: work }] });
    await pushImage(up, 'lab/cold', '1', cold);
    await pushImage(up, 'lab/other', '1', other);
    replica = await startReplica('stall', { pgUrl: viaRelay.toString(), secret: CLUSTER_SECRET, upstreams: [{ host: 'docker.io', url: up.url }] });
  });

  after(async () => {
    await replica?.stop();
    await relay?.close();
    await up?.stop();
    await pg?.destroy();
    if (work) await removeTempDir(work);
  });

  test('stalled: a cached blob is served from local disk, manifests and a cold blob are 503 within seconds; passing again, the same requests succeed without a restart', async () => {
    const layer = warm.layers[0]!;
    const repo = (img: Image) => (img === warm ? 'warm' : img === cold ? 'cold' : 'other');
    const manifest = (ref: string, img: Image) => request(replica.url, `/v2/lab/${repo(img)}/manifests/${ref}`, { headers: { Accept: img.mediaType }, timeoutMs: 60_000 });
    assert.equal((await manifest('1', warm)).status, 200);
    assert.equal((await hashedGet(`${replica.url}/v2/lab/warm/blobs/${layer.digest}`)).digest, layer.digest);
    // A hit puts the row in the replica's cache (a fill's own commit drops it).
    assert.equal((await hashedGet(`${replica.url}/v2/lab/warm/blobs/${layer.digest}`)).status, 200);

    relay.stall();
    const timings: string[] = [];
    try {
      let t0 = performance.now();
      const hit = await hashedGet(`${replica.url}/v2/lab/warm/blobs/${layer.digest}`);
      const hitMs = performance.now() - t0;
      timings.push(`cached blob ${hit.status} in ${Math.round(hitMs)} ms`);
      assert.equal(hit.status, 200);
      assert.equal(hit.digest, layer.digest);
      assert.ok(hitMs < 2000, timings.join('; '));

      for (const [what, get] of [
        ['cold manifest by tag', () => manifest('1', cold)],
        ['cold manifest by digest', () => manifest(other.manifestDigest, other)],
        ['cold blob', () => request(replica.url, `/v2/lab/other/blobs/${other.layers[0]!.digest}`, { timeoutMs: 60_000 })],
      ] as const) {
        t0 = performance.now();
        const r = await get();
        const ms = performance.now() - t0;
        timings.push(`${what} ${r.status} in ${Math.round(ms)} ms`);
        assert.equal(r.status, 503, `${what}: ${r.status} ${r.body.toString('utf8').slice(0, 300)}`);
        assert.match(r.body.toString('utf8'), /PostgreSQL|UNAVAILABLE/);
        assert.ok(ms < BOUND_MS, timings.join('; '));
      }
    } finally {
      relay.pass();
      console.log(`PostgreSQL stalled: ${timings.join('; ')}`);
    }
    const t0 = performance.now();
    await waitUntil('the cold manifest once the link passes traffic again', async () => (await manifest('1', cold)).status === 200, 30_000, 250);
    console.log(`recovered ${Math.round(performance.now() - t0)} ms after the link passed traffic again`);
    for (const img of [cold, other]) {
      assert.equal((await manifest(img.manifestDigest, img)).status, 200);
      const blob = await hashedGet(`${replica.url}/v2/lab/${repo(img)}/blobs/${img.layers[0]!.digest}`);
      assert.equal(blob.status, 200);
      assert.equal(blob.digest, img.layers[0]!.digest);
    }
    assert.ok(replica.process.running, 'the replica still runs');
    assert.doesNotMatch(replica.log(), /"statusCode":500|unhandled|uncaught/i);
  });
});
