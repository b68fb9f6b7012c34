// One fill across the cluster (issue #12): three berth replicas sharing PostgreSQL and one S3 bucket (Ceph
// RGW, storage.driver s3), in front of one real docker-registry behind a bandwidth-limited relay. 24 clients
// over the three ask for one cold 200 MB blob: the upstream serves it once, and the bucket gets it once (one
// upload, per radosgw's own access log; nothing left under ingest/). The owning replica is SIGKILLed
// mid-fill: the clients of the others finish with correct bytes, the upstream sends at most the missing part
// again, and the bucket holds the blob once, hashing to its name. A replica whose cluster.secret differs gets
// 401 from its peers and fetches from the upstream itself. (Clusters on filesystem storage, each replica its
// own directory: cluster-restart, cluster-quota and the redteam-cluster tests.)
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { GetObjectCommand, ListMultipartUploadsCommand, ListObjectsV2Command } from '@aws-sdk/client-s3';
import { makeS3Client } from '../src/store/s3/client.ts';
import { blobBytesServed } from './support/accesslog.ts';
import { type Ceph, startCeph } from './support/ceph.ts';
import { CLUSTER_SECRET, peerHeaders, query, type Replica, startReplica } from './support/cluster.ts';
import { type HashedGet, hashedGet, request } from './support/http.ts';
import { buildImage, type Image, pushImage } from './support/images.ts';
import { upstreamTrafficSince, waitUntil } from './support/links.ts';
import { type Postgres, startPostgres } from './support/postgres.ts';
import { type Relay, startRelay } from './support/relay.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const MB = 1_000_000;
/** The replicas' key prefix in the bucket. */
const PREFIX = 'fills/';
/** The relay's downstream rate: a 200 MB fill takes about eight seconds. */
const RATE = 25 * MB;

let work: string;
let ceph: Ceph;
let pgServer: Postgres;
let pgUrl: string;
let up: Upstream;
let relay: Relay;
let big: Image;
let second: Image;
let third: Image;
const replicas: Replica[] = [];

async function replica(name: string, extra: { secret?: string } = {}): Promise<Replica> {
  const s3 = { endpoint: ceph.endpoint, bucket: ceph.bucket, prefix: PREFIX, accessKeyId: ceph.accessKeyId, secretAccessKey: ceph.secretAccessKey };
  const r = await startReplica(name, { pgUrl, upstreams: [{ host: up.host, url: relay.url() }], fills: { maxPerClient: 100 }, s3, ...extra });
  replicas.push(r);
  return r;
}

const blobPath = (img: Image) => `/v2/lab/big/blobs/${img.layers[0]!.digest}`;

function fleet(rs: Replica[], perReplica: number, img: Image): Array<Promise<HashedGet & { replica: string }>> {
  return rs.flatMap((r) => Array.from({ length: perReplica }, () => hashedGet(`${r.url}${blobPath(img)}`).then((g) => ({ ...g, replica: r.name }))));
}

/** The bucket's keys under blobs/ and ingest/, and its open multipart uploads, under PREFIX. */
async function inBucket(): Promise<{ blobs: string[]; ingest: string[]; uploads: string[] }> {
  const client = makeS3Client({
    endpoint: ceph.endpoint,
    region: 'us-east-1',
    bucket: ceph.bucket,
    prefix: '',
    accessKeyId: ceph.accessKeyId,
    secretAccessKey: ceph.secretAccessKey,
    forcePathStyle: true,
  });
  try {
    const keys = async (Prefix: string) => ((await client.send(new ListObjectsV2Command({ Bucket: ceph.bucket, Prefix }))).Contents ?? []).map((o) => o.Key!);
    const uploads = await client.send(new ListMultipartUploadsCommand({ Bucket: ceph.bucket, Prefix: PREFIX }));
    return { blobs: await keys(`${PREFIX}blobs/`), ingest: await keys(`${PREFIX}ingest/`), uploads: (uploads.Uploads ?? []).map((u) => u.Key!) };
  } finally {
    client.destroy();
  }
}

/** sha256 of the object under `key`, read from the bucket. */
async function objectDigest(key: string): Promise<string> {
  const client = makeS3Client({
    endpoint: ceph.endpoint,
    region: 'us-east-1',
    bucket: ceph.bucket,
    prefix: '',
    accessKeyId: ceph.accessKeyId,
    secretAccessKey: ceph.secretAccessKey,
    forcePathStyle: true,
  });
  try {
    const res = await client.send(new GetObjectCommand({ Bucket: ceph.bucket, Key: key }));
    const hash = createHash('sha256');
    for await (const chunk of res.Body as AsyncIterable<Buffer>) hash.update(chunk);
    return `sha256:${hash.digest('hex')}`;
  } finally {
    client.destroy();
  }
}

const blobKey = (digest: string) => `${PREFIX}blobs/sha256/${digest.slice(7, 9)}/${digest.slice(7)}`;

/**
 * The uploads of `digest` radosgw answered since request number `from` of its log: multipart uploads started
 * (an ingest key names the digest's first 12 hex digits) and bytes of their parts, and PUTs into blobs/.
 */
async function uploadsSince(from: number, digest: string): Promise<{ started: number; partBytes: number; intoPlace: number; mark: number }> {
  const all = await ceph.requests();
  const mine = all.slice(from).filter((r) => r.path.startsWith(`/${ceph.bucket}/${PREFIX}`));
  const ingest = mine.filter((r) => r.path.includes(`/ingest/`) && r.path.includes(`.${digest.slice(7, 19)}.`));
  return {
    started: ingest.filter((r) => r.method === 'POST' && r.path.includes('?uploads')).length,
    partBytes: ingest.filter((r) => r.method === 'PUT' && r.path.includes('partNumber=')).reduce((n, r) => n + r.bytes, 0),
    intoPlace: mine.filter((r) => r.method === 'PUT' && r.path.split('?')[0] === `/${ceph.bucket}/${blobKey(digest)}`).length,
    mark: all.length,
  };
}

before(async () => {
  work = await makeTempDir('cluster-fills');
  await Promise.all([
    // A port block of its own (cluster-s3 31470, s3-store 31830, store-conformance-s3 31810, s3-faults 31250, shared-drivers-ops 31490).
    startCeph({ port: 31730, sizeGb: 3 }).then((c) => (ceph = c)),
    (async () => {
      pgServer = await startPostgres();
      pgUrl = await pgServer.createDatabase();
      up = await startUpstream();
      relay = await startRelay({ target: { host: '127.0.0.1', port: up.port }, rateBytesPerSec: RATE });
      big = await buildImage({ format: 'oci', layers: [{ randomBytes: 200 * MB, dir: work }] });
      second = await buildImage({ format: 'oci', layers: [{ randomBytes: 150 * MB, dir: work }] });
      third = await buildImage({ format: 'oci', layers: [{ randomBytes: 50 * MB, dir: work }] });
      await pushImage(up, 'lab/big', '1', big);
      await pushImage(up, 'lab/big', '2', second);
      await pushImage(up, 'lab/big', '3', third);
    })(),
  ]);
});

after(async () => {
  for (const r of replicas) await r.stop().catch(() => {});
  await relay?.close();
  await up?.stop();
  await pgServer?.destroy();
  await ceph?.stop();
  if (work) await removeTempDir(work);
});

describe('three replicas, one upstream read', () => {
  let a: Replica;
  let b: Replica;
  let c: Replica;
  before(async () => {
    [a, b, c] = await Promise.all([replica('a'), replica('b'), replica('c')]);
  });

  test('24 clients over three replicas, one cold 200 MB blob: one upstream GET, 1.0x the bytes, correct bytes everywhere; one upload to the bucket', async () => {
    const layer = big.layers[0]!;
    const mark = up.logLineCount();
    const rgwMark = (await ceph.requests()).length;
    const started = performance.now();
    const results = await Promise.all(fleet([a, b, c], 8, big));
    const wall = performance.now() - started;
    for (const g of results) {
      assert.equal(g.status, 200, `client on ${g.replica}`);
      assert.equal(g.digest, layer.digest, `client on ${g.replica} got the blob's bytes`);
      assert.equal(g.bytes, layer.size);
    }
    const traffic = await upstreamTrafficSince(up, mark);
    const gets = traffic.filter((e) => e.method === 'GET' && e.path.split('?')[0]!.endsWith(`/blobs/${layer.digest}`));
    const bytes = blobBytesServed(traffic, layer.digest);
    console.log(`24 clients: ${gets.length} upstream GET(s), ${(bytes / layer.size).toFixed(4)}x the blob's bytes, ${Math.round(wall)} ms wall`);
    // Time to the first byte (response headers: they go once bytes are on disk), on the owner and on the others.
    const owners = await Promise.all([a, b, c].map(async (r) => ((await request(r.url, '/metrics')).body.toString().match(/berth_cluster_fill_leases_total\{how="new"\} (\d+)/)?.[1] ?? '0') !== '0'));
    for (const [i, r] of [a, b, c].entries()) {
      const mine = results.filter((g) => g.replica === r.name);
      const ttfb = mine.map((g) => Math.round(g.headersAt - started));
      const done = mine.map((g) => Math.round(g.doneAt - started));
      console.log(`  ${r.name}${owners[i] ? ' (owner)' : ''}: first byte after ${Math.min(...ttfb)}-${Math.max(...ttfb)} ms, last after ${Math.min(...done)}-${Math.max(...done)} ms`);
    }
    assert.equal(gets.length, 1, `one upstream GET of the blob, got ${JSON.stringify(gets)}`);
    assert.equal(bytes, layer.size, 'the upstream sent the blob once');
    // The bucket: the blob once, nothing under ingest/, no open upload; and one upload of it, not one per replica.
    const uploads = await uploadsSince(rgwMark, layer.digest);
    console.log(`  bucket: ${uploads.started} upload(s) of the blob started, ${(uploads.partBytes / layer.size).toFixed(2)}x its bytes in parts, ${uploads.intoPlace} copy(ies) into blobs/`);
    const bucket = await inBucket();
    assert.deepEqual(
      bucket.blobs.filter((k) => k.includes(layer.digest.slice(7))),
      [blobKey(layer.digest)],
    );
    assert.deepEqual(bucket.ingest, [], 'nothing left under ingest/');
    assert.deepEqual(bucket.uploads, [], 'no multipart upload left open');
    assert.equal(uploads.started, 1, 'one replica uploaded the blob; the others found it in the bucket');
    assert.equal(uploads.partBytes, layer.size);
    assert.equal(uploads.intoPlace, 1);
    // Every replica has it committed now: a second round reads no upstream byte.
    const mark2 = up.logLineCount();
    const again = await Promise.all([a, b, c].map((r) => hashedGet(`${r.url}${blobPath(big)}`)));
    for (const g of again) assert.equal(g.digest, layer.digest);
    assert.equal(blobBytesServed(await upstreamTrafficSince(up, mark2), layer.digest), 0);
    // Leases of committed fills are gone.
    assert.deepEqual(await query(pgUrl, 'SELECT * FROM fill_leases WHERE digest = $1', [layer.digest]), []);
  });

  test('SIGKILL of the owning replica mid-fill: the others finish with correct bytes, the upstream sends at most the missing part again', async () => {
    const layer = second.layers[0]!;
    const mark = up.logLineCount();
    const relayStart = relay.bytesDown;
    const rgwMark = (await ceph.requests()).length;
    const all = [a, b, c];
    const running = all.map((r) => ({
      r,
      gets: fleet([r], 4, second).map((p) =>
        p.then(
          (g) => ({ ok: true as const, g }),
          (err: Error) => ({ ok: false as const, err }),
        ),
      ),
    }));
    const lease = await waitUntil(
      'a fill lease row',
      async () => (await query<{ url: string; owner: string }>(pgUrl, 'SELECT url, owner FROM fill_leases WHERE digest = $1', [layer.digest]))[0],
      30_000,
      50,
    );
    const owner = all.find((r) => r.url === lease.url)!;
    assert.ok(owner, `the lease names one of the replicas: ${lease.url}`);
    await waitUntil('40% of the blob on its way', () => relay.bytesDown - relayStart >= 0.4 * layer.size || undefined, 60_000, 20);
    const killedAt = performance.now();
    await owner.kill('SIGKILL');
    const taken = await waitUntil(
      'a survivor took the lease over',
      async () => (await query<{ url: string; owner: string }>(pgUrl, 'SELECT url, owner FROM fill_leases WHERE digest = $1', [layer.digest]))[0]?.owner !== lease.owner || undefined,
      30_000,
      50,
    );
    assert.ok(taken);
    const takeoverMs = performance.now() - killedAt;
    for (const { r, gets } of running) {
      if (r === owner) continue;
      for (const res of await Promise.all(gets)) {
        assert.ok(res.ok, `client on ${r.name}: ${res.ok ? '' : res.err.message}`);
        assert.equal(res.g.status, 200);
        assert.equal(res.g.digest, layer.digest, `client on ${r.name} got the blob's bytes`);
      }
    }
    const doneMs = performance.now() - killedAt;
    const traffic = await upstreamTrafficSince(up, mark);
    const bytes = blobBytesServed(traffic, layer.digest);
    const gets = traffic.filter((e) => e.method === 'GET' && e.path.split('?')[0]!.endsWith(`/blobs/${layer.digest}`));
    console.log(
      `SIGKILL of ${owner.name}: lease taken over ${Math.round(takeoverMs)} ms after the kill, clients done ${Math.round(doneMs)} ms after it; upstream ${gets.length} GETs, ${(bytes / layer.size).toFixed(4)}x the blob's bytes`,
    );
    assert.equal(gets.length, 2, "the dead owner's GET and the survivor's resume, nothing else");
    const survivors = all.filter((r) => r !== owner && r.log().includes('took over the fill'));
    assert.equal(survivors.length, 1, 'one survivor took the fill over');
    const from = Number(/"from":(\d+),"msg":"cluster: took over the fill/.exec(survivors[0]!.log())?.[1]);
    // The survivor asked the upstream for exactly what it was missing…
    assert.equal(gets[1]!.bytes, layer.size - from, `the resume sent the survivor's missing part (from ${from})`);
    // …and the rest of the total is what the dead owner had been sent beyond what reached the survivor: bytes in
    // the upstream's, the relay's and the owner's socket buffers, and the owner's lead over its readers.
    const overlap = bytes - layer.size;
    console.log(`  the dead owner was sent ${gets[0]!.bytes} bytes, the survivor had ${from}: overlap ${overlap} bytes (${((100 * overlap) / layer.size).toFixed(1)}% of the blob)`);
    assert.ok(overlap <= 16 * 1024 * 1024, `upstream sent ${bytes} bytes for a ${layer.size}-byte blob`);
    // The bucket holds the blob once, hashing to its name; no upload of it is left open or half-done.
    const uploads = await uploadsSince(rgwMark, layer.digest);
    console.log(`  bucket: ${uploads.started} upload(s) of the blob started, ${(uploads.partBytes / layer.size).toFixed(2)}x its bytes in parts, ${uploads.intoPlace} copy(ies) into blobs/`);
    const bucket = await inBucket();
    assert.deepEqual(
      bucket.blobs.filter((k) => k.includes(layer.digest.slice(7))),
      [blobKey(layer.digest)],
    );
    assert.equal(await objectDigest(blobKey(layer.digest)), layer.digest, 'the object hashes to its name');
    assert.deepEqual(bucket.ingest, [], 'nothing left under ingest/');
    assert.deepEqual(bucket.uploads, [], 'no multipart upload left open');
    assert.equal(uploads.started, 1, 'the survivor that took over uploaded it; the other found it in the bucket');
    replicas.splice(replicas.indexOf(owner), 1);
    await owner.stop();
  });

  test('a replica whose cluster.secret differs is refused by its peers (401) and fetches from the upstream itself', async () => {
    const good = [a, b, c].find((r) => r.process.running)!;
    // Straight at the endpoint: no secret, a wrong one, the right one.
    const p = `/_berth/cluster/blobs/${big.layers[0]!.digest}?upstream=${encodeURIComponent(up.host)}&repository=lab/big`;
    assert.equal((await request(good.url, p)).status, 401);
    assert.equal((await request(good.url, p, { headers: { authorization: 'Bearer not-the-cluster-secret-at-all' } })).status, 401);
    assert.equal((await request(good.url, p, { headers: { authorization: `Bearer ${CLUSTER_SECRET}` } })).status, 401, 'the secret itself is no signature');
    assert.equal((await request(good.url, p, { headers: peerHeaders(good.url, p, 'bytes=0-99', 'not-the-cluster-secret-at-all') })).status, 401);
    const right = await request(good.url, p, { headers: peerHeaders(good.url, p, 'bytes=0-99') });
    assert.equal(right.status, 206);
    assert.equal(right.body.length, 100);
    // The endpoint never starts a fill: an uncached blob with no fill running is a 404.
    const cold = `/_berth/cluster/blobs/${third.layers[0]!.digest}?upstream=${encodeURIComponent(up.host)}&repository=lab/big`;
    assert.equal((await request(good.url, cold, { headers: peerHeaders(good.url, cold) })).status, 404);

    const wrong = await replica('wrong', { secret: 'a-different-secret-of-this-replica' });
    const layer = third.layers[0]!;
    const mark = up.logLineCount();
    const first = hashedGet(`${good.url}${blobPath(third)}`);
    await waitUntil(
      'the good replica holds the lease',
      async () => (await query<{ url: string }>(pgUrl, 'SELECT url FROM fill_leases WHERE digest = $1', [layer.digest]))[0]?.url === good.url || undefined,
      30_000,
      20,
    );
    const [g1, g2] = await Promise.all([first, hashedGet(`${wrong.url}${blobPath(third)}`)]);
    assert.equal(g1.digest, layer.digest);
    assert.equal(g2.digest, layer.digest, 'the refused replica still serves its client');
    assert.match(wrong.log(), /a peer refused this replica \(cluster\.secret differs\)/);
    assert.match(good.log(), /refused a peer request with a wrong or missing cluster\.secret/);
    const gets = (await upstreamTrafficSince(up, mark)).filter((e) => e.method === 'GET' && e.path.split('?')[0]!.endsWith(`/blobs/${layer.digest}`));
    assert.equal(gets.length, 2, 'the refused replica read the upstream itself');
    const metrics = await request(wrong.url, '/metrics');
    assert.match(metrics.body.toString(), /berth_cluster_peer_errors_total\{kind="unauthorized"\} [1-9]/);
    assert.match((await request(good.url, '/metrics')).body.toString(), /berth_cluster_refused_total [1-9]/);
  });
});
