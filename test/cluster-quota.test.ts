// Quota and eviction on one elected replica at a time (issue #12): two replicas sharing PostgreSQL, both over
// storage.maxSize. The first to need a pass takes the 'quota' lease and evicts; the other skips its passes
// while that lease is live. When the runner is SIGKILLed its lease goes stale and the other takes it over.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, test } from 'node:test';
import { query, type Replica, startReplica } from './support/cluster.ts';
import { hashedGet } from './support/http.ts';
import { buildImage, type Image, pushImage } from './support/images.ts';
import { waitUntil } from './support/links.ts';
import { type Postgres, startPostgres } from './support/postgres.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const MB = 1_000_000;

let pgServer: Postgres;
let pgUrl: string;
let up: Upstream;
let img: Image;
const replicas: Replica[] = [];

before(async () => {
  pgServer = await startPostgres();
  pgUrl = await pgServer.createDatabase();
  up = await startUpstream();
  img = await buildImage({ format: 'oci', layers: Array.from({ length: 10 }, (_, i) => ({ files: { [`l${i}.bin`]: randomBytes(4 * MB) } })) });
  await pushImage(up, 'lab/q', '1', img);
});

after(async () => {
  for (const r of replicas) await r.stop().catch(() => {});
  await up?.stop();
  await pgServer?.destroy();
});

async function pull(r: Replica, i: number): Promise<void> {
  const layer = img.layers[i]!;
  const g = await hashedGet(`${r.url}/v2/lab/q/blobs/${layer.digest}`);
  assert.equal(g.digest, layer.digest);
}

const quotaLease = async () => (await query<{ url: string; stale: boolean }>(pgUrl, `SELECT url, heartbeat_at < now() - interval '3 seconds' AS stale FROM leases WHERE name = 'quota'`))[0];

test('two replicas over their quota: only the holder of the quota lease evicts; a survivor takes it over from a killed runner', async () => {
  const [a, b] = await Promise.all([
    startReplica('qa', { pgUrl, upstreams: [{ host: up.host, url: up.url }], maxSize: '10MB' }),
    startReplica('qb', { pgUrl, upstreams: [{ host: up.host, url: up.url }], maxSize: '10MB' }),
  ]);
  replicas.push(a, b);
  for (const i of [0, 1, 2]) await pull(a, i);
  await waitUntil('a evicted', () => /quota: evicted least-recently-used blobs/.test(a.log()) || undefined, 20_000);
  assert.equal((await quotaLease())?.url, a.url, 'a holds the quota lease');
  assert.match(a.log(), /this replica runs quota and eviction/);

  for (const i of [3, 4, 5]) await pull(b, i);
  await waitUntil('b skipped its pass', () => /quota passes skipped: another replica runs quota and eviction/.test(b.log()) || undefined, 20_000);
  assert.doesNotMatch(b.log(), /quota: evicted/, 'b never evicts while a holds the lease');
  // Heartbeats keep a's lease fresh well past its timeout.
  await waitUntil(
    '4 s of heartbeats',
    async () => ((await query<{ age: number }>(pgUrl, `SELECT EXTRACT(EPOCH FROM now() - taken_at)::float8 AS age FROM leases WHERE name = 'quota'`))[0]?.age ?? 0) > 4 || undefined,
    10_000,
    200,
  );
  assert.equal((await quotaLease())?.stale, false);
  await pull(b, 6);
  assert.doesNotMatch(b.log(), /quota: evicted/);

  await a.kill('SIGKILL');
  await waitUntil("a's quota lease went stale", async () => (await quotaLease())?.stale || undefined, 20_000, 100);
  // Three more (12 MB, over the limit however the totals are counted: per replica, or in a shared index).
  for (const i of [7, 8, 9]) await pull(b, i);
  await waitUntil('b evicted', () => /quota: evicted least-recently-used blobs/.test(b.log()) || undefined, 20_000);
  assert.match(b.log(), /this replica runs quota and eviction/);
  assert.equal((await quotaLease())?.url, b.url, 'b holds the quota lease now');
});
