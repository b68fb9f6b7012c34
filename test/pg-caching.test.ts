// The per-replica cache in front of the PostgreSQL index (src/store/pg/caching-index.ts): it answers the index
// conformance suite as the database does, keeps the hot rows of a hit (blob row, children, references, an
// upstream tag) off the network, reads `@local` tags through (a push on one replica is pullable from the next
// at once), sees another replica's upstream tag within its time to live, and drops what its own writes change.
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Digest } from '../src/oci/digest.ts';
import { asyncIndex } from '../src/store/async-index-roles.ts';
import { LOCAL_UPSTREAM } from '../src/store/index-roles.ts';
import { CachingIndex } from '../src/store/pg/caching-index.ts';
import { PgIndex } from '../src/store/pg/pg-index.ts';
import { StoreIndex } from '../src/store/store-index.ts';
import { indexConformance, someDigest } from './support/conformance/index.ts';
import { type Postgres, startPostgres } from './support/postgres.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';

const MANIFEST = 'application/vnd.oci.image.manifest.v1+json';

let server: Postgres | undefined;
before(async () => {
  server = await startPostgres();
});
after(async () => {
  await server?.destroy();
});

indexConformance('PgIndex behind CachingIndex', async () => {
  if (!server) throw new Error('PostgreSQL did not start');
  const pg = server;
  const url = await pg.createDatabase();
  let index = new CachingIndex(await PgIndex.open({ url, poolSize: 4 }));
  return {
    get index() {
      return index;
    },
    async reopen() {
      await index.close();
      index = new CachingIndex(await PgIndex.open({ url, poolSize: 4 }));
      return index;
    },
    async cleanup() {
      await index.close();
      await pg.dropDatabase(url);
    },
  };
});

describe('CachingIndex: two replicas on one PostgreSQL', () => {
  let url: string;
  let a: CachingIndex;
  let b: CachingIndex;
  const TAG_TTL = 300;

  before(async () => {
    url = await server!.createDatabase();
    // References kept longer than stopping PostgreSQL takes, so the outage case below does not race their expiry.
    a = new CachingIndex(await PgIndex.open({ url, poolSize: 2 }), { tagTtlMs: TAG_TTL, refTtlMs: 60_000 });
    b = new CachingIndex(await PgIndex.open({ url, poolSize: 2 }), { tagTtlMs: TAG_TTL });
  });
  after(async () => {
    await a?.close();
    await b?.close();
    await server?.dropDatabase(url);
  });

  const tag = (upstream: string, digest: Digest, checkedAt: number) => ({ upstream, repository: 'lab/app', tag: '1', digest, mediaType: MANIFEST, size: 10, accept: '*', checkedAt });

  test('an @local tag one replica pushes is the other replica’s at once, even right after it read the old one', async () => {
    const [first, second] = [someDigest(), someDigest()];
    await a.putTag(tag(LOCAL_UPSTREAM, first, 1));
    assert.equal((await b.getTag(LOCAL_UPSTREAM, 'lab/app', '1'))?.digest, first);
    await a.putTag(tag(LOCAL_UPSTREAM, second, 2));
    assert.equal((await b.getTag(LOCAL_UPSTREAM, 'lab/app', '1'))?.digest, second);
    assert.equal((await b.tagRows(LOCAL_UPSTREAM, 'lab/app', '1'))[0]?.digest, second);
  });

  test('an upstream tag another replica revalidated is seen within the tag time to live; this replica’s own write at once', async () => {
    const [first, second, third] = [someDigest(), someDigest(), someDigest()];
    await a.putTag(tag('docker.io', first, 1));
    assert.equal((await b.getTag('docker.io', 'lab/app', '1'))?.digest, first);
    await a.putTag(tag('docker.io', second, 2));
    assert.equal((await a.getTag('docker.io', 'lab/app', '1'))?.digest, second, 'its own write drops its entry');
    const deadline = Date.now() + TAG_TTL * 10;
    while ((await b.getTag('docker.io', 'lab/app', '1'))?.digest !== second) {
      assert.ok(Date.now() < deadline, 'the other replica never saw the moved tag');
      await new Promise((r) => setTimeout(r, 20));
    }
    await b.putTag(tag('docker.io', third, 3));
    assert.equal((await b.getTag('docker.io', 'lab/app', '1'))?.digest, third);
  });

  test('a delete drops this replica’s blob row at once; a recorded manifest’s children and references are seen by its recorder at once', async () => {
    const [m, layer] = [someDigest(), someDigest()];
    await a.putBlob(layer, 5, null);
    assert.equal((await a.getBlob(layer))?.size, 5);
    await a.deleteBlob(layer);
    assert.equal(await a.getBlob(layer), undefined);
    assert.deepEqual(await a.childrenOf(m), []);
    assert.deepEqual(await a.refsOf(layer), []);
    await a.recordManifest({ upstream: 'docker.io', repository: 'lab/app', digest: m, size: 10, mediaType: MANIFEST, children: [{ digest: layer, size: 5, mediaType: 'application/octet-stream' }] });
    assert.deepEqual(
      (await a.childrenOf(m)).map((c) => c.digest),
      [layer],
    );
    assert.deepEqual(await a.refsOf(layer), [{ upstream: 'docker.io', repository: 'lab/app' }]);
    assert.equal(await a.descriptorSize(layer, { upstream: 'docker.io', repository: 'lab/app' }), 5);
  });

  test('the rows of a hit are answered from memory while PostgreSQL is down; the rest fails as unavailable', async () => {
    const [m, layer] = [someDigest(), someDigest()];
    await a.putBlob(layer, 7, null);
    await a.putBlob(m, 10, MANIFEST);
    await a.recordManifest({ upstream: 'docker.io', repository: 'lab/app', digest: m, size: 10, mediaType: MANIFEST, children: [{ digest: layer, size: 7, mediaType: 'application/octet-stream' }] });
    const warm = async () => ({
      blob: (await a.getBlob(layer))?.size,
      children: (await a.childrenOf(m)).length,
      refs: (await a.refsOf(layer)).length,
      size: await a.descriptorSize(layer, { upstream: 'docker.io', repository: 'lab/app' }),
    });
    const before = await warm();
    await server!.stop();
    try {
      assert.deepEqual(await warm(), before);
      await a.touch(layer);
      await assert.rejects(a.totals(), (err: Error & { unavailable?: boolean }) => err.unavailable === true && /PostgreSQL at 127\.0\.0\.1/.test(err.message));
      await assert.rejects(a.getBlob(someDigest()), (err: Error & { unavailable?: boolean }) => err.unavailable === true);
    } finally {
      await server!.start();
    }
    await a.flushAccess();
    assert.equal((await b.getBlob(layer))?.size, 7);
  });
});

test('the status page summaries from PostgreSQL are SQLite’s for the same rows', async () => {
  const url = await server!.createDatabase();
  const dir = await makeTempDir('pg-usage');
  const pg = await PgIndex.open({ url, poolSize: 2 });
  const sqlite = new StoreIndex(path.join(dir, 'berth.db'));
  try {
    const [index, child, layer, config, other] = [someDigest(), someDigest(), someDigest(), someDigest(), someDigest()];
    for (const ix of [pg, asyncIndex(sqlite)]) {
      await ix.putBlob(layer, 1000, null, 10);
      await ix.putBlob(config, 100, null, 11);
      await ix.putBlob(child, 50, MANIFEST, 12);
      await ix.putBlob(index, 40, 'application/vnd.oci.image.index.v1+json', 13);
      await ix.putBlob(other, 7, null, 14);
      await ix.recordManifest({
        upstream: 'docker.io',
        repository: 'lab/app',
        digest: child,
        size: 50,
        mediaType: MANIFEST,
        children: [
          { digest: layer, size: 1000, mediaType: 'x' },
          { digest: config, size: 100, mediaType: 'y' },
        ],
      });
      await ix.recordManifest({
        upstream: 'docker.io',
        repository: 'lab/app',
        digest: index,
        size: 40,
        mediaType: 'application/vnd.oci.image.index.v1+json',
        children: [{ digest: child, size: 50, mediaType: MANIFEST }],
      });
      await ix.addRefs('docker.io', 'lab/other', [other]);
      await ix.putTag({ upstream: 'docker.io', repository: 'lab/app', tag: '1', digest: index, mediaType: 'application/vnd.oci.image.index.v1+json', size: 40, checkedAt: 1 });
      await ix.putTag({ upstream: LOCAL_UPSTREAM, repository: 'site/x', tag: 'a', digest: child, mediaType: MANIFEST, size: 50, checkedAt: 2 });
      await ix.pins.pin('docker.io/lab/app:1', [index, child, layer, config]);
      await ix.touch(layer, 500);
      await ix.flushAccess();
    }
    const fromPg = await pg.usage(10);
    assert.ok(fromPg.largestRepositories.length === 2 && fromPg.largestTags.length === 2 && fromPg.pins.length === 1, JSON.stringify(fromPg));
    assert.deepEqual(fromPg, sqlite.usage(10));
  } finally {
    await pg.close();
    sqlite.close();
    await server!.dropDatabase(url);
    await removeTempDir(dir);
  }
});
