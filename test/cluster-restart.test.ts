// A replica SIGKILLed mid-fill and restarted on the same address (issue #12): its former self's lease is still
// live and names its own URL. It must not ask itself for the bytes; it waits until that lease goes stale,
// takes it, and resumes from its checkpoint against the upstream.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { blobBytesServed } from './support/accesslog.ts';
import { query, type Replica, startReplica } from './support/cluster.ts';
import { hashedGet } from './support/http.ts';
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
let img: Image;
let r: Replica | undefined;

before(async () => {
  work = await makeTempDir('cluster-restart');
  pgServer = await startPostgres();
  pgUrl = await pgServer.createDatabase();
  up = await startUpstream();
  relay = await startRelay({ target: { host: '127.0.0.1', port: up.port }, rateBytesPerSec: 10 * MB });
  img = await buildImage({ format: 'oci', layers: [{ randomBytes: 80 * MB, dir: work }] });
  await pushImage(up, 'lab/restart', '1', img);
});

after(async () => {
  await r?.stop().catch(() => {});
  await relay?.close();
  await up?.stop();
  await pgServer?.destroy();
  if (work) await removeTempDir(work);
});

test('restarted on its own address mid-fill, a replica waits out its former lease and resumes its checkpoint', async () => {
  // A lease timeout that outlasts a restart on a loaded machine (18 s seen), so the old lease is live when it is back.
  r = await startReplica('r', { pgUrl, upstreams: [{ host: up.host, url: relay.url() }], leaseTimeout: '30s' });
  const layer = img.layers[0]!;
  const path = `/v2/lab/restart/blobs/${layer.digest}`;
  const mark = up.logLineCount();
  const first = hashedGet(`${r.url}${path}`).catch((err: Error) => err);
  // Past the first 32 MiB checkpoint.
  await waitUntil('40 MB on their way', () => relay.bytesDown >= 40 * MB || undefined, 60_000, 20);
  const before = (await query<{ owner: string }>(pgUrl, 'SELECT owner FROM fill_leases WHERE digest = $1', [layer.digest]))[0];
  assert.ok(before, 'the fill holds a lease');
  await r.kill('SIGKILL');
  assert.ok((await first) instanceof Error, 'the client of the killed process saw a broken transfer');
  await r.restart();
  const got = await hashedGet(`${r.url}${path}`);
  assert.equal(got.status, 200);
  assert.equal(got.digest, layer.digest);
  assert.match(r.log(), /the fill lease is held by this replica from before a restart; waiting for it to expire/);
  assert.match(r.log(), /took over the fill of a replica that stopped heartbeating/);
  assert.match(r.log(), /resuming fill from checkpoint/);
  const bytes = blobBytesServed(await upstreamTrafficSince(up, mark), layer.digest);
  assert.ok(bytes < layer.size * 1.5, `resumed from the checkpoint: ${bytes} bytes for ${layer.size}`);
  assert.deepEqual(await query(pgUrl, 'SELECT * FROM fill_leases WHERE digest = $1', [layer.digest]), [], 'the lease went with the commit');
});
