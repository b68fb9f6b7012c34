// The lease rows of src/cluster/leases.ts on a real PostgreSQL 15: one owner per (upstream, digest) among
// racers, a live lease kept by heartbeats, a stale one taken over, released rows, a named lease.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import pino from 'pino';
import { Leases } from '../src/cluster/leases.ts';
import { PgDb } from '../src/store/pg/db.ts';
import { migrate } from '../src/store/pg/migrations.ts';
import { query } from './support/cluster.ts';
import { waitUntil } from './support/links.ts';
import { type Postgres, startPostgres } from './support/postgres.ts';

const D = `sha256:${'ab'.repeat(32)}`;
const TIMEOUT = 2000;
const log = pino({ level: 'silent' });

let server: Postgres;
let url: string;
let db: PgDb;

before(async () => {
  server = await startPostgres();
  url = await server.createDatabase();
  db = new PgDb({ url, poolSize: 8 });
  await migrate(db);
});

after(async () => {
  await db?.end();
  await server?.destroy();
});

const replica = (n: number) => new Leases(db, { url: `http://10.0.0.${n}:5000`, timeoutMs: TIMEOUT, log });

describe('fill leases', () => {
  test('eight replicas racing for one fill: exactly one owns it, the others see its URL; per upstream apart', async () => {
    const rs = Array.from({ length: 8 }, (_, i) => replica(i + 1));
    const got = await Promise.all(rs.map((r) => r.takeFill('Docker.io', D)));
    const owners = got.filter((h) => h.mine);
    assert.equal(owners.length, 1);
    const owner = rs[got.indexOf(owners[0]!)]!;
    for (const h of got) {
      assert.equal(h.owner, owner.id);
      assert.equal(h.url, got.find((x) => x.mine)!.url);
      if (!h.mine) assert.ok(h.expiresInMs > 0 && h.expiresInMs <= TIMEOUT, `expires in ${h.expiresInMs}`);
    }
    // Asking again as the owner keeps it; the key is case-blind in the upstream, as the fill table is.
    assert.equal((await owner.takeFill('docker.io', D)).mine, true);
    // Another upstream is another fill.
    const other = rs.find((r) => r !== owner)!;
    assert.equal((await other.takeFill('quay.io', D)).mine, true);
    await owner.releaseFill('docker.io', D);
    await other.releaseFill('quay.io', D);
    assert.deepEqual(await query(url, 'SELECT * FROM fill_leases'), []);
  });

  test('heartbeats keep a lease past its timeout; without them it goes stale and is taken over', async () => {
    const a = replica(1);
    const b = replica(2);
    assert.equal((await a.takeFill('docker.io', D)).mine, true);
    a.start();
    await sleep(TIMEOUT + 1000);
    const still = await b.takeFill('docker.io', D);
    assert.equal(still.mine, false, 'a heartbeats: its lease is live');
    assert.equal(still.owner, a.id);
    // a stops heartbeating without deleting (a SIGKILL): b waits for the stale heartbeat, then takes it.
    await a.stop().catch(() => {});
    await a.takeFill('docker.io', D);
    const stopped = Date.now();
    const taken = await waitUntil('b takes the lease over', async () => {
      const h = await b.takeFill('docker.io', D);
      return h.mine ? h : undefined;
    });
    assert.equal(taken.tookOver, true);
    assert.ok(Date.now() - stopped >= TIMEOUT - 200, `taken over after ${Date.now() - stopped} ms`);
    // a's next heartbeat finds it lost (a restart would be a new owner id anyway).
    assert.equal((await a.takeFill('docker.io', D)).mine, false);
    await b.releaseFill('docker.io', D);
  });

  test('fillHolder says who holds a fill lease without taking it, also once it went stale', async () => {
    const a = replica(1);
    const b = replica(2);
    assert.equal(await b.fillHolder('docker.io', D), undefined, 'nobody');
    assert.equal((await a.takeFill('docker.io', D)).mine, true);
    const seen = await b.fillHolder('Docker.io', D);
    assert.equal(seen?.mine, false);
    assert.equal(seen?.owner, a.id);
    assert.equal(seen?.url, a.url);
    assert.ok(seen!.expiresInMs > 0 && seen!.expiresInMs <= TIMEOUT, `expires in ${seen!.expiresInMs}`);
    assert.equal((await a.fillHolder('docker.io', D))?.mine, true);
    // Not heartbeated: it goes stale, and looking at it does not take it.
    await waitUntil('the lease goes stale', async () => ((await b.fillHolder('docker.io', D))?.expiresInMs === 0 ? true : undefined));
    assert.equal((await query<{ owner: string }>(url, 'SELECT owner FROM fill_leases WHERE digest = $1', [D]))[0]?.owner, a.id);
    await a.releaseFill('docker.io', D);
    assert.equal(await b.fillHolder('docker.io', D), undefined);
  });

  test('stop() deletes every lease of the replica at once, fill and named', async () => {
    const a = replica(1);
    a.start();
    assert.equal((await a.takeFill('docker.io', D)).mine, true);
    assert.equal((await a.takeNamed('quota')).mine, true);
    assert.ok(a.holds('quota'));
    await a.stop();
    assert.deepEqual(await query(url, 'SELECT owner FROM fill_leases UNION ALL SELECT owner FROM leases'), []);
    const b = replica(2);
    assert.equal((await b.takeNamed('quota')).mine, true, 'free for the next replica without waiting');
    assert.equal((await replica(3).takeNamed('quota')).mine, false);
    await b.stop();
  });
});
