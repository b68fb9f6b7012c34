// Replicas on one shared S3 store (Ceph RGW) and PostgreSQL (issue #12): a cold blob asked of all three at
// once is read from the upstream once and lands in the bucket; a replica started later (its own working
// directory and index) serves what the others cached, by digest, without a byte from the upstream.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { blobBytesServed } from './support/accesslog.ts';
import { type Ceph, startCeph } from './support/ceph.ts';
import { type Replica, startReplica } from './support/cluster.ts';
import { hashedGet } from './support/http.ts';
import { buildImage, type Image, pushImage } from './support/images.ts';
import { metricValue, upstreamTrafficSince } from './support/links.ts';
import { type Postgres, startPostgres } from './support/postgres.ts';
import { type Relay, startRelay } from './support/relay.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const MB = 1_000_000;

let work: string;
let ceph: Ceph;
let pgServer: Postgres;
let pgUrl: string;
let up: Upstream;
let relay: Relay;
let img: Image;
const replicas: Replica[] = [];

before(async () => {
  work = await makeTempDir('cluster-s3');
  await Promise.all([
    // A port block of its own (s3-store 31830, store-conformance-s3 31810, s3-faults 31250).
    startCeph({ port: 31470, sizeGb: 2 }).then((c) => (ceph = c)),
    (async () => {
      pgServer = await startPostgres();
      pgUrl = await pgServer.createDatabase();
      up = await startUpstream();
      relay = await startRelay({ target: { host: '127.0.0.1', port: up.port }, rateBytesPerSec: 10 * MB });
      img = await buildImage({ format: 'oci', layers: [{ randomBytes: 40 * MB, dir: work }] });
      await pushImage(up, 'lab/shared', '1', img);
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

async function replica(name: string): Promise<Replica> {
  const s3 = { endpoint: ceph.endpoint, bucket: ceph.bucket, prefix: 'cluster/', accessKeyId: ceph.accessKeyId, secretAccessKey: ceph.secretAccessKey };
  const r = await startReplica(name, { pgUrl, upstreams: [{ host: up.host, url: relay.url() }], s3 });
  replicas.push(r);
  return r;
}

test('three replicas on one bucket: one upstream read of a cold blob; a replica started later serves it and the config without the upstream', async () => {
  const [a, b, c] = await Promise.all([replica('a'), replica('b'), replica('c')]);
  const layer = img.layers[0]!;
  const mark = up.logLineCount();
  const got = await Promise.all([a, b, c, a, b, c].map((r) => hashedGet(`${r.url}/v2/lab/shared/blobs/${layer.digest}`)));
  for (const g of got) {
    assert.equal(g.status, 200);
    assert.equal(g.digest, layer.digest);
  }
  // The config too, through one replica.
  assert.equal((await hashedGet(`${a.url}/v2/lab/shared/blobs/${img.config.digest}`)).digest, img.config.digest);
  const traffic = await upstreamTrafficSince(up, mark);
  const gets = traffic.filter((e) => e.method === 'GET' && e.path.split('?')[0]!.endsWith(`/blobs/${layer.digest}`));
  assert.equal(gets.length, 1, 'one upstream GET of the layer');
  assert.equal(blobBytesServed(traffic, layer.digest), layer.size);
  // Each replica's metrics say where its bytes came from: summed over the replicas, the upstream's bytes are
  // what the upstream sent (a peer's bytes are not counted as upstream bytes twice over).
  const upstreamBytes = await Promise.all([a, b, c].map((r) => metricValue(r.url, 'berth_upstream_bytes_total')));
  const peerBytes = await Promise.all([a, b, c].map((r) => metricValue(r.url, 'berth_cluster_peer_bytes_total')));
  assert.equal(
    upstreamBytes.reduce((x, y) => x + y, 0),
    layer.size + img.config.size,
    `upstream bytes per replica ${upstreamBytes}, peer bytes ${peerBytes}`,
  );
  assert.equal(peerBytes.filter((n) => n > 0).length, 2, `two replicas read from the owner: ${peerBytes}`);
  for (const n of peerBytes) assert.ok(n === 0 || n === layer.size, `a reader of the owner got the layer from it once: ${peerBytes}`);

  const d = await replica('d');
  const mark2 = up.logLineCount();
  for (const blob of [layer, img.config]) {
    const g = await hashedGet(`${d.url}/v2/lab/shared/blobs/${blob.digest}`);
    assert.equal(g.status, 200);
    assert.equal(g.digest, blob.digest, 'the late replica serves it from the bucket');
  }
  const later = await upstreamTrafficSince(up, mark2);
  assert.deepEqual(
    later.filter((e) => e.path.includes('/blobs/')),
    [],
    'nothing asked of the upstream',
  );
});
