// What PostgreSQL adds to the index (issue #12) beyond the conformance suite (test/store-conformance-pg.test.ts):
// replicas sharing one database, migrations (fresh, again, racing), hostile names, BIGINT range, and the `index`
// config block. Outages are in test/pg-index-faults.test.ts. One throw-away PostgreSQL 15, a database per test.
import assert from 'node:assert/strict';
import { mkdtemp, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import { ConfigError, loadConfig } from '../src/config/load.ts';
import type { Digest } from '../src/oci/digest.ts';
import { PgDb } from '../src/store/pg/db.ts';
import { LOCK_CLASS, migrate, PG_SCHEMA_VERSION } from '../src/store/pg/migrations.ts';
import { PgIndex } from '../src/store/pg/pg-index.ts';
import { someDigest } from './support/conformance/index.ts';
import { waitUntil } from './support/links.ts';
import { type Postgres, startPostgres } from './support/postgres.ts';
import { removeTempDir } from './support/tmp.ts';

const MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const LAYER = 'application/vnd.oci.image.layer.v1.tar+gzip';

/** The catalog as migrations leave it: tables, columns, types, indexes. */
async function catalog(url: string): Promise<string> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    const cols = await c.query("SELECT table_name, column_name, data_type, is_nullable, column_default FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 2");
    const idx = await c.query("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1");
    return JSON.stringify([cols.rows, idx.rows]);
  } finally {
    await c.end();
  }
}

async function sql<T = Record<string, unknown>>(url: string, text: string, params: unknown[] = []): Promise<T[]> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return (await c.query(text, params)).rows as T[];
  } finally {
    await c.end();
  }
}

/** A loopback port nothing listens on (below 32768, where no outgoing connection takes it meanwhile). */
describe('the PostgreSQL index', () => {
  let server: Postgres;
  before(async () => {
    server = await startPostgres();
  });
  after(async () => {
    await server?.destroy();
  });

  test('the server is PostgreSQL 15', async () => {
    const [row] = await sql<{ v: string }>(server.url, "SELECT current_setting('server_version_num') AS v");
    assert.match(row!.v, /^15\d{4}$/);
  });

  test('two replicas on one database see each other’s tags, manifests, pins and access times at once', async () => {
    const url = await server.createDatabase();
    const a = await PgIndex.open({ url, poolSize: 4 });
    const b = await PgIndex.open({ url, poolSize: 4 });
    try {
      const layer = { digest: someDigest('layer'), size: 5000, mediaType: LAYER };
      const m = { upstream: 'docker.io', repository: 'library/app', digest: someDigest('m'), size: 900, mediaType: MANIFEST, children: [layer] };
      await a.recordManifest(m);
      assert.equal((await b.getBlob(m.digest))?.size, 900, 'b reads a’s manifest row with no delay');
      assert.deepEqual(await b.childrenOf(m.digest), [layer]);
      await a.putTag({ upstream: m.upstream, repository: m.repository, tag: '1', digest: m.digest, mediaType: MANIFEST, size: m.size, checkedAt: 1000 });
      assert.equal((await b.getTag(m.upstream, m.repository, '1'))?.checkedAt, 1000);
      // A tag revalidated by one replica is fresh for the other.
      await b.putTag({ upstream: m.upstream, repository: m.repository, tag: '1', digest: m.digest, mediaType: MANIFEST, size: m.size, checkedAt: 2000 });
      assert.equal((await a.getTag(m.upstream, m.repository, '1'))?.checkedAt, 2000);
      await b.deleteTag(m.upstream, m.repository, '1');
      assert.equal(await a.getTag(m.upstream, m.repository, '1'), undefined);
      // Eviction on one replica respects the other's pins.
      await a.putBlob(layer.digest, layer.size, null, 1);
      await b.pins.pin('docker.io/library/app:1', [layer.digest]);
      assert.ok(!(await a.evictable(10)).some((e) => e.digest === layer.digest));
      // Access times only move forward, whichever replica flushes last.
      await a.touch(layer.digest, 5000);
      await b.touch(layer.digest, 4000);
      await a.flushAccess();
      await b.flushAccess();
      assert.equal((await b.getBlob(layer.digest))?.accessedAt, 5000);
    } finally {
      await a.close();
      await b.close();
      await server.dropDatabase(url);
    }
  });

  test('concurrent recordManifest from two replicas, manifests sharing layers in opposite orders: all succeed, one set of rows', async () => {
    const url = await server.createDatabase();
    const a = await PgIndex.open({ url, poolSize: 4 });
    const b = await PgIndex.open({ url, poolSize: 4 });
    try {
      // Each repository gets two manifests naming the same 40 new layers in opposite orders, recorded at once on
      // both replicas: their reference rows are new, so the transactions meet on them row by row.
      const shared = Array.from({ length: 40 }, () => ({ digest: someDigest('shared'), size: 10, mediaType: LAYER }));
      const repositories = Array.from({ length: 6 }, (_, r) => `library/race-${r}`);
      const manifests = repositories.flatMap((repository, r) =>
        [false, true].map((reversed, i) => ({
          upstream: 'docker.io',
          repository,
          digest: someDigest('m'),
          size: 100 + 2 * r + i,
          mediaType: MANIFEST,
          children: reversed ? [...shared].reverse() : [...shared],
          ...(reversed ? { subject: someDigest('subject'), artifactType: 'application/x-sig' } : {}),
        })),
      );
      const same = manifests[0]!;
      const results = await Promise.allSettled([
        ...manifests.flatMap((m, i) => (i % 2 ? [b.recordManifest(m), a.recordManifest(m)] : [a.recordManifest(m), b.recordManifest(m)])),
        ...Array.from({ length: 10 }, (_, i) => (i % 2 ? a : b).recordManifest(same)),
      ]);
      const failed = results.filter((r) => r.status === 'rejected');
      assert.deepEqual(failed, [], 'no unique violation or deadlock reaches a caller');
      assert.deepEqual(await a.totals(), { total: manifests.reduce((s, m) => s + m.size, 0), count: manifests.length });
      for (const m of manifests) assert.equal((await b.childrenOf(m.digest)).length, shared.length);
      for (const l of shared) assert.equal((await a.refsOf(l.digest)).length, repositories.length);
      const [refs] = await sql<{ n: number }>(url, 'SELECT COUNT(*)::int AS n FROM refs');
      assert.equal(refs!.n, repositories.length * (2 + shared.length));
    } finally {
      await a.close();
      await b.close();
      await server.dropDatabase(url);
    }
  });

  test('two replicas replacing one pin at once: the reference ends up holding one of the two sets, never both merged', async () => {
    const url = await server.createDatabase();
    const a = await PgIndex.open({ url, poolSize: 2 });
    const b = await PgIndex.open({ url, poolSize: 2 });
    try {
      const [x, y, z] = [someDigest('x'), someDigest('y'), someDigest('z')];
      for (let i = 0; i < 15; i++) {
        await Promise.all([a.pins.pin('docker.io/library/app:1', [x, y]), b.pins.pin('docker.io/library/app:1', [z])]);
        const held = [...(await a.pins.digests())].sort().join(',');
        assert.ok(held === [x, y].sort().join(',') || held === z, `round ${i}: held ${held}`);
      }
    } finally {
      await a.close();
      await b.close();
      await server.dropDatabase(url);
    }
  });

  test('migrations: an empty database gets the whole schema; running them again changes nothing', async () => {
    const url = await server.createDatabase();
    try {
      const first = await PgIndex.open({ url });
      assert.deepEqual(first.migrated, { from: 0, to: PG_SCHEMA_VERSION });
      assert.equal(await first.schemaVersion(), PG_SCHEMA_VERSION);
      await first.putTag({ upstream: 'docker.io', repository: 'library/app', tag: 'kept', digest: someDigest(), mediaType: MANIFEST, size: 1, checkedAt: 1 });
      await first.close();
      const before = await catalog(url);
      assert.match(before, /"referrer_lists"/);
      const again = await PgIndex.open({ url });
      assert.deepEqual(again.migrated, { from: PG_SCHEMA_VERSION, to: PG_SCHEMA_VERSION }, 'a migrated database is left as it is');
      const db = new PgDb({ url });
      assert.deepEqual(await migrate(db), { from: PG_SCHEMA_VERSION, to: PG_SCHEMA_VERSION });
      await db.end();
      assert.equal(await catalog(url), before);
      assert.deepEqual(await sql(url, 'SELECT version FROM schema_version'), [{ version: PG_SCHEMA_VERSION }], 'one row');
      assert.deepEqual(await again.listTags('docker.io', 'library/app'), ['kept']);
      await again.close();
    } finally {
      await server.dropDatabase(url);
    }
  });

  test('migrations: a database at an older version is brought up to date and keeps its rows', async () => {
    const url = await server.createDatabase();
    try {
      const db = new PgDb({ url });
      assert.deepEqual(await migrate(db, 1), { from: 0, to: 1 });
      await db.end();
      const d = someDigest('old');
      await sql(url, "INSERT INTO tags (upstream, repository, tag, digest, media_type, size, checked_at) VALUES ('docker.io', 'library/old', 'latest', $1, $2, 7, 0)", [d, MANIFEST]);
      const index = await PgIndex.open({ url });
      try {
        assert.deepEqual(index.migrated, { from: 1, to: PG_SCHEMA_VERSION });
        assert.equal((await index.getTag('docker.io', 'library/old', 'latest'))?.accept, '*');
        await index.recordManifest({ upstream: 'docker.io', repository: 'library/old', digest: someDigest('sig'), size: 3, mediaType: MANIFEST, children: [], subject: d });
        assert.equal((await index.referrersOf('docker.io', 'library/old', d)).length, 1, 'the later step’s tables are there');
      } finally {
        await index.close();
      }
    } finally {
      await server.dropDatabase(url);
    }
  });

  test('two replicas migrating at once: one migrates, the other waits on the lock and finds it done', async () => {
    const url = await server.createDatabase();
    const holder = new pg.Client({ connectionString: url });
    await holder.connect();
    const opened: PgIndex[] = [];
    try {
      // Hold the migration lock, so that both replicas are provably inside migrate() at the same time.
      await holder.query('SELECT pg_advisory_lock($1, 0)', [LOCK_CLASS.migrate]);
      const both = [PgIndex.open({ url }), PgIndex.open({ url })];
      for (const p of both) p.then((ix) => opened.push(ix)).catch(() => {});
      await waitUntil(
        'both replicas waiting for the migration lock',
        async () => {
          const r = await holder.query("SELECT COUNT(*)::int AS n FROM pg_locks WHERE locktype = 'advisory' AND classid = $1::bigint::oid AND objid = 0 AND NOT granted", [LOCK_CLASS.migrate]);
          return r.rows[0].n === 2;
        },
        15_000,
      );
      assert.deepEqual((await holder.query("SELECT to_regclass('blobs') AS t")).rows, [{ t: null }], 'nothing migrated while the lock is held');
      await holder.query('SELECT pg_advisory_unlock($1, 0)', [LOCK_CLASS.migrate]);
      const [one, two] = await Promise.all(both);
      const outcomes = [one!.migrated, two!.migrated].sort((p, q) => p.from - q.from);
      assert.deepEqual(outcomes, [
        { from: 0, to: PG_SCHEMA_VERSION },
        { from: PG_SCHEMA_VERSION, to: PG_SCHEMA_VERSION },
      ]);
      await one!.putTag({ upstream: 'docker.io', repository: 'library/app', tag: '1', digest: someDigest(), mediaType: MANIFEST, size: 1, checkedAt: 1 });
      assert.deepEqual(await two!.listTags('docker.io', 'library/app'), ['1']);
    } finally {
      await holder.end();
      for (const ix of opened) await ix.close();
      await server.dropDatabase(url);
    }
  });

  test('SQL-injection-shaped names are stored and read back verbatim', async () => {
    const url = await server.createDatabase();
    const index = await PgIndex.open({ url });
    const tables = async () => (await sql<{ n: number }>(url, "SELECT COUNT(*)::int AS n FROM pg_tables WHERE schemaname = 'public'"))[0]!.n;
    const before = await tables();
    try {
      const upstream = `"quoted" \\ back\\slash '`;
      const repository = `library/x'); DROP TABLE tags; --`;
      const tags = ['$1', `'; DELETE FROM blobs; --`, '%_*', 'ünïcødé'];
      const m = { upstream, repository, digest: someDigest('m'), size: 10, mediaType: MANIFEST, children: [{ digest: someDigest('l'), size: 1, mediaType: `${LAYER}'--` }] };
      await index.recordManifest(m);
      for (const tag of tags) await index.putTag({ upstream, repository, tag, accept: `a'); --`, digest: m.digest, mediaType: MANIFEST, size: 10, checkedAt: 1 });
      assert.deepEqual(await index.listTags(upstream, repository), [...tags].sort());
      for (const tag of tags) assert.equal((await index.getTag(upstream, repository, tag))?.accept, `a'); --`);
      assert.deepEqual(await index.refsOf(m.digest), [{ upstream, repository }]);
      assert.deepEqual(await index.childrenOf(m.digest), m.children);
      assert.deepEqual(await index.repositories(), [{ upstream, repository }]);
      const reference = `docker.io/a:b'; DELETE FROM pins; --`;
      await index.pins.pin(reference, [m.digest]);
      assert.deepEqual(await index.pins.references(), [reference]);
      const t0 = Date.now();
      assert.equal(await index.getBlob(`sha256:'||pg_sleep(3)||'` as Digest), undefined);
      assert.ok(Date.now() - t0 < 2000, 'nothing in a value is executed');
      assert.deepEqual(await index.deleteTagsOf(upstream, repository, m.digest), [...tags].sort());
      assert.equal(await tables(), before, 'every table is still there');
    } finally {
      await index.close();
      await server.dropDatabase(url);
    }
  });

  test('BIGINT: sizes and times beyond 2^53 are refused on the way in and on the way out, never rounded', async () => {
    const url = await server.createDatabase();
    const index = await PgIndex.open({ url });
    try {
      const d = someDigest('huge');
      await assert.rejects(index.putBlob(d, 2 ** 53 + 2, null), RangeError);
      await assert.rejects(index.putBlob(d, 1.5, null), RangeError);
      await assert.rejects(index.putTag({ upstream: 'u', repository: 'r', tag: 't', digest: d, mediaType: MANIFEST, size: 2 ** 60, checkedAt: 1 }), RangeError);
      assert.equal(await index.getBlob(d), undefined, 'nothing was written');
      await index.putBlob(d, 2 ** 53 - 1, null, 1);
      assert.equal((await index.getBlob(d))?.size, 2 ** 53 - 1, 'the largest safe size round-trips as a number');
      // A row some other program wrote past 2^53: an error, not a silently rounded size.
      await sql(url, 'UPDATE blobs SET size = 1152921504606846977 WHERE digest = $1', [d]);
      await assert.rejects(index.getBlob(d), /beyond 2\^53/);
      await assert.rejects(index.totals(), /beyond 2\^53/);
      await sql(url, 'UPDATE blobs SET size = 5 WHERE digest = $1', [d]);
      assert.deepEqual(await index.totals(), { total: 5, count: 1 }, 'and the index answers again');
    } finally {
      await index.close();
      await server.dropDatabase(url);
    }
  });
});

describe('config: the index block', () => {
  const load = async (yaml: string) => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'berth-pg-config-'));
    try {
      const file = path.join(dir, 'berth.yaml');
      await writeFile(file, yaml);
      return loadConfig({ config: file }, {});
    } finally {
      await removeTempDir(dir);
    }
  };

  test('sqlite by default; postgres takes a URL and a pool size (10 by default)', async () => {
    assert.deepEqual((await load('{}\n')).index, { driver: 'sqlite' });
    assert.deepEqual((await load('index: {driver: postgres, postgres: {url: "postgres://berth:pw@db:5432/berth"}}\n')).index, {
      driver: 'postgres',
      postgres: { url: 'postgres://berth:pw@db:5432/berth', poolSize: 10 },
    });
  });

  test('postgres without a URL, another scheme, an unknown driver or field: clear errors that never echo the URL', async () => {
    await assert.rejects(load('index: {driver: postgres}\n'), (e: Error) => e instanceof ConfigError && /index\.postgres\.url: is required with driver: postgres/.test(e.message));
    await assert.rejects(
      load('index: {driver: postgres, postgres: {url: "mysql://berth:SECRETPW@db/berth"}}\n'),
      (e: Error) => /index\.postgres\.url: must be a postgres:\/\/ or postgresql:\/\/ URL/.test(e.message) && !e.message.includes('SECRETPW'),
    );
    await assert.rejects(load('index: {driver: mysql}\n'), /index\.driver/);
    await assert.rejects(load('index: {driver: postgres, postgres: {url: "postgres://db/berth", poolSize: 0}}\n'), /index\.postgres\.poolSize/);
    await assert.rejects(load('index: {driver: postgres, postgres: {url: "postgres://db/berth", password: x}}\n'), /index\.postgres/);
  });
});
