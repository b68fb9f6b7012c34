// Operator commands on a shared PostgreSQL index evict only while they hold the replicas' quota lease
// (issue #12: "quota and eviction run on one elected replica at a time"). A holder of the lease is the
// replicas' own code (src/cluster/leases.ts, as a replica runs it); the commands are real `berth prewarm`
// processes with a replica's config, a real docker-registry upstream and PostgreSQL 15. What was evicted
// is read from the shared database.
import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import pino from 'pino';
import { stringify } from 'yaml';
import { QUOTA_LEASE } from '../src/cluster/cluster.ts';
import { Leases } from '../src/cluster/leases.ts';
import { PgDb } from '../src/store/pg/db.ts';
import { migrate } from '../src/store/pg/migrations.ts';
import { describeRun, runBerth } from './support/berth-cli.ts';
import { CLUSTER_SECRET, query } from './support/cluster.ts';
import { buildImage, type Image, pushImage } from './support/images.ts';
import { freePort } from './support/ports.ts';
import { type Postgres, startPostgres } from './support/postgres.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const MB = 1024 * 1024;

describe('operator commands take the quota lease on a PostgreSQL index', () => {
  let pg: Postgres;
  let up: Upstream;
  let work: string;
  let pgUrl: string;
  let config: string;
  let old: Image;
  let next: Image;
  let db: PgDb;

  const indexed = async (digests: string[]) => (await query<{ digest: string }>(pgUrl, 'SELECT digest FROM blobs WHERE digest = ANY($1)', [digests])).map((r) => r.digest);
  const leaseRows = async () => query<{ owner: string; url: string }>(pgUrl, 'SELECT owner, url FROM leases WHERE name = $1', [QUOTA_LEASE]);

  before(async () => {
    work = await makeTempDir('ops-quota-lease');
    [pg, up] = await Promise.all([startPostgres(), startUpstream()]);
    pgUrl = await pg.createDatabase();
    db = new PgDb({ url: pgUrl, poolSize: 2 });
    await migrate(db);
    old = await buildImage({ format: 'oci', layers: [{ randomBytes: 2 * MB, dir: work }] });
    next = await buildImage({ format: 'oci', layers: [{ randomBytes: 2 * MB, dir: work }] });
    await pushImage(up, 'lab/old', '1', old);
    await pushImage(up, 'lab/next', '1', next);
    const dir = path.join(work, 'ops');
    await mkdir(dir, { recursive: true });
    config = path.join(work, 'ops.yaml');
    // A replica's config (its cluster section is dropped by operator commands), 3 MB: the two images do not fit.
    await writeFile(
      config,
      stringify({
        storage: { path: dir, maxSize: '3MB' },
        index: { driver: 'postgres', postgres: { url: pgUrl } },
        cluster: { advertise: `http://127.0.0.1:${await freePort()}`, secret: CLUSTER_SECRET, leaseTimeout: '3s' },
        upstreams: [{ host: 'docker.io', url: up.url }],
        log: { level: 'warn' },
      }),
    );
  });

  after(async () => {
    await db?.end();
    await up?.stop();
    await pg?.destroy();
    if (work) await removeTempDir(work);
  });

  test('while a replica holds the quota lease a prewarm evicts nothing and says so; once it is free the prewarm evicts and gives the lease back', async () => {
    const oldLayer = old.layers[0]!.digest;
    const first = await runBerth(['prewarm', '--no-pin', 'docker.io/lab/old:1', '--config', config]);
    assert.equal(first.code, 0, describeRun(['prewarm', 'old'], first));
    assert.deepEqual(await indexed([oldLayer]), [oldLayer]);

    const replica = new Leases(db, { url: 'http://replica-a.test:5000', timeoutMs: 3000, log: pino({ level: 'silent' }) });
    const held = await replica.takeNamed(QUOTA_LEASE);
    assert.equal(held.mine, true);
    replica.start();
    try {
      const r = await runBerth(['prewarm', '--no-pin', 'docker.io/lab/next:1', '--config', config]);
      assert.equal(r.code, 0, describeRun(['prewarm', 'next'], r));
      assert.match(r.stderr, /quota: eviction skipped: http:\/\/replica-a\.test:5000 holds the quota lease/);
      assert.deepEqual(await indexed([oldLayer]), [oldLayer], 'the prewarm evicted while a replica held the quota lease');
      assert.deepEqual(
        (await leaseRows()).map((l) => l.owner),
        [replica.id],
        'the lease is still the replica’s',
      );
    } finally {
      await replica.stop();
    }

    // Free: the next command's pass (at start-up) runs, evicts the least recently used layer, and lets the lease go.
    const r = await runBerth(['prewarm', '--no-pin', 'docker.io/lab/next:1', '--config', config]);
    assert.equal(r.code, 0, describeRun(['prewarm', 'next again'], r));
    assert.doesNotMatch(r.stderr, /eviction skipped/);
    assert.deepEqual(await indexed([oldLayer]), [], 'the prewarm did not evict with the lease free');
    assert.deepEqual(await indexed([next.layers[0]!.digest]), [next.layers[0]!.digest], 'it evicted the wrong layer');
    assert.deepEqual(await leaseRows(), [], 'the command kept the quota lease after its pass');
  });
});
