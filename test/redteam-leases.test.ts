// Red team (issue #12): the lease rows of src/cluster/leases.ts while PostgreSQL is away. A fill this replica
// owns must be able to resume its upstream body during an outage (nobody can take a lease while nobody can
// reach the database): before, every resume of a running fill asked PostgreSQL and failed, so a broken
// upstream body during an outage failed the fill for every reader on every replica. A fill it does not own is
// still refused (it cannot know who fetches). Heartbeats during the outage fail quietly, and the same Leases
// keeps its leases once PostgreSQL is back.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import pino from 'pino';
import { Leases } from '../src/cluster/leases.ts';
import { PgDb } from '../src/store/pg/db.ts';
import { migrate } from '../src/store/pg/migrations.ts';
import { query } from './support/cluster.ts';
import { waitUntil } from './support/links.ts';
import { type Postgres, startPostgres } from './support/postgres.ts';

const D = `sha256:${'cd'.repeat(32)}`;
const E = `sha256:${'ef'.repeat(32)}`;
const log = pino({ level: 'silent' });

let server: Postgres;
let url: string;
let db: PgDb;

before(async () => {
  server = await startPostgres();
  url = await server.createDatabase();
  db = new PgDb({ url, poolSize: 4, connectTimeoutMs: 1000, queryTimeoutMs: 2000 });
  await migrate(db);
});

after(async () => {
  await db?.end();
  await server?.destroy();
});

describe('leases while PostgreSQL is away', () => {
  test('the owner resumes its own fill during an outage; anyone else is refused; after it, the lease is still the owner’s', async () => {
    const a = new Leases(db, { url: 'http://10.0.0.1:5000', timeoutMs: 2000, log });
    const b = new Leases(db, { url: 'http://10.0.0.2:5000', timeoutMs: 2000, log });
    assert.equal((await a.takeFill('docker.io', D)).mine, true);
    a.start();
    await server.stop();
    try {
      const again = await a.takeFill('docker.io', D);
      assert.equal(again.mine, true, 'the owner of a running fill may resume it');
      // Not ours: nobody can say who fetches it.
      await assert.rejects(a.takeFill('docker.io', E), (err: Error & { unavailable?: boolean }) => err.unavailable === true);
      await assert.rejects(b.takeFill('docker.io', D), (err: Error & { unavailable?: boolean }) => err.unavailable === true);
      // Heartbeats fail quietly meanwhile.
      await a.heartbeat();
    } finally {
      await server.start();
    }
    // Back: the heartbeat renews the row, so b finds it live, not stale.
    await waitUntil(
      'a heartbeat after the restart',
      async () => {
        const [row] = await query<{ fresh: boolean }>(url, "SELECT heartbeat_at > now() - interval '1 second' AS fresh FROM fill_leases WHERE digest = $1", [D]);
        return row?.fresh === true;
      },
      15_000,
      200,
    );
    const seen = await b.takeFill('docker.io', D);
    assert.equal(seen.mine, false);
    assert.equal(seen.owner, a.id);
    await a.stop();
    await b.stop();
  });
});
