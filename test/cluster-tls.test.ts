// Replicas that serve HTTPS and advertise https:// URLs (issue #12): the peer client trusts the CA named by
// cluster.ca beside the system roots, so a replica streams a blob another one is filling over TLS instead of
// reading the upstream a second time. Two replicas with certificates of a private CA, PostgreSQL, a real
// docker-registry behind a bandwidth-limited relay.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { Agent, request } from 'undici';
import { query, type Replica, startReplica } from './support/cluster.ts';
import { buildImage, type Image, pushImage } from './support/images.ts';
import { metricSamples, upstreamTrafficSince, waitUntil } from './support/links.ts';
import { type Postgres, startPostgres } from './support/postgres.ts';
import { type Relay, startRelay } from './support/relay.ts';
import { issueServerCert, makeCa, type TestCa } from './support/tls-ca.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const MB = 1_000_000;

let work: string;
let ca: TestCa;
let agent: Agent;
let pgServer: Postgres;
let pgUrl: string;
let up: Upstream;
let relay: Relay;
let img: Image;
const replicas: Replica[] = [];

before(async () => {
  work = await makeTempDir('cluster-tls');
  ca = await makeCa(path.join(work, 'ca'));
  agent = new Agent({ connect: { ca: await readFile(ca.caFile, 'utf8') } });
  pgServer = await startPostgres();
  pgUrl = await pgServer.createDatabase();
  up = await startUpstream();
  relay = await startRelay({ target: { host: '127.0.0.1', port: up.port }, rateBytesPerSec: 8 * MB });
  img = await buildImage({ format: 'oci', layers: [{ randomBytes: 24 * MB, dir: work }] });
  await pushImage(up, 'lab/tls', '1', img);
});

after(async () => {
  for (const r of replicas) await r.stop().catch(() => {});
  await agent?.close();
  await relay?.close();
  await up?.stop();
  await pgServer?.destroy();
  if (work) await removeTempDir(work);
});

async function replica(name: string): Promise<Replica> {
  const certFile = path.join(work, `${name}.crt`);
  const keyFile = path.join(work, `${name}.key`);
  await issueServerCert(ca, certFile, keyFile);
  const r = await startReplica(name, { pgUrl, upstreams: [{ host: up.host, url: relay.url() }], tls: { certificate: certFile, key: keyFile }, clusterCa: ca.caFile });
  replicas.push(r);
  return r;
}

/** GET over HTTPS (trusting the test CA), hashing the body as it streams. */
async function hashedHttpsGet(url: string): Promise<{ status: number; digest: string }> {
  const res = await request(url, { dispatcher: agent });
  const h = createHash('sha256');
  for await (const chunk of res.body) h.update(chunk as Buffer);
  return { status: res.statusCode, digest: `sha256:${h.digest('hex')}` };
}

test('two replicas on https:// advertise URLs: the second streams the blob from the first over TLS, one upstream read', async () => {
  const [a, b] = await Promise.all([replica('a'), replica('b')]);
  assert.match(a.url, /^https:/);
  const layer = img.layers[0]!;
  const path = `/v2/lab/tls/blobs/${layer.digest}`;
  const mark = up.logLineCount();
  const first = hashedHttpsGet(`${a.url}${path}`);
  await waitUntil(
    'a holds the fill lease, at its https:// URL',
    async () => (await query<{ url: string }>(pgUrl, 'SELECT url FROM fill_leases WHERE digest = $1', [layer.digest]))[0]?.url === a.url || undefined,
    30_000,
    20,
  );
  const [ga, gb] = await Promise.all([first, hashedHttpsGet(`${b.url}${path}`)]);
  assert.deepEqual(
    [ga, gb],
    [
      { status: 200, digest: layer.digest },
      { status: 200, digest: layer.digest },
    ],
  );
  const gets = (await upstreamTrafficSince(up, mark)).filter((e) => e.method === 'GET' && e.path.split('?')[0]!.endsWith(`/blobs/${layer.digest}`));
  assert.equal(gets.length, 1, 'one upstream GET of the layer');
  const metric = async (r: Replica, name: string) => {
    const res = await request(`${r.url}/metrics`, { dispatcher: agent });
    return metricSamples(await res.body.text(), name).reduce((n, s) => n + s.value, 0);
  };
  assert.equal(await metric(b, 'berth_cluster_peer_bytes_total'), layer.size, 'b read the layer from a');
  assert.equal(await metric(b, 'berth_cluster_peer_errors_total'), 0);
});
