// The store and index conformance suites (test/support/conformance/) run against the implementations
// berth has today: the filesystem BlobStore on a temp directory and StoreIndex on SQLite. No upstream,
// no server: seconds. Issue #12's S3 store and PostgreSQL index add their factories here.
import assert from 'node:assert/strict';
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { describe, test } from 'node:test';
import Database from 'better-sqlite3';
import type { Digest } from '../src/oci/digest.ts';
import { asyncIndex } from '../src/store/async-index-roles.ts';
import { BlobStore } from '../src/store/blob-store.ts';
import { collectGarbage } from '../src/store/gc.ts';
import type { RegistryIndex } from '../src/store/index-roles.ts';
import { StoragePaths } from '../src/store/paths.ts';
import { writeBlob } from '../src/store/roles.ts';
import { StoreIndex } from '../src/store/store-index.ts';
import { blobStoreConformance, digestOf } from './support/conformance/blob-store.ts';
import { indexConformance, someDigest } from './support/conformance/index.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';

/** Every file under `root`, relative to it (directories themselves do not count). */
async function filesUnder(root: string): Promise<string[]> {
  const entries = await readdir(root, { recursive: true, withFileTypes: true });
  return entries
    .filter((e) => e.isFile())
    .map((e) => path.relative(root, path.join(e.parentPath, e.name)))
    .sort();
}

blobStoreConformance('filesystem BlobStore', async () => {
  const dir = await makeTempDir('conformance-fs');
  const paths = new StoragePaths(dir);
  const store = new BlobStore(paths);
  await store.init();
  return {
    store,
    residue: () => filesUnder(dir),
    // ingest/ is where fills keep the files they hand to commitFile: the same filesystem as blobs/.
    scratch: paths.ingest,
    cleanup: () => removeTempDir(dir),
  };
});

/** The schema of a berth.db from before tags were keyed by negotiation (user_version 0). */
const SCHEMA_V0 = `
CREATE TABLE blobs (digest TEXT PRIMARY KEY, size INTEGER NOT NULL, media_type TEXT, created_at INTEGER NOT NULL, accessed_at INTEGER NOT NULL);
CREATE TABLE tags (upstream TEXT NOT NULL, repository TEXT NOT NULL, tag TEXT NOT NULL,
  digest TEXT NOT NULL, media_type TEXT NOT NULL, size INTEGER NOT NULL, checked_at INTEGER NOT NULL,
  PRIMARY KEY (upstream, repository, tag));
CREATE TABLE refs (digest TEXT NOT NULL, upstream TEXT NOT NULL, repository TEXT NOT NULL, PRIMARY KEY (digest, upstream, repository));
CREATE TABLE children (parent TEXT NOT NULL, child TEXT NOT NULL, size INTEGER NOT NULL, media_type TEXT NOT NULL, PRIMARY KEY (parent, child));
CREATE TABLE pins (digest TEXT NOT NULL, reference TEXT NOT NULL, PRIMARY KEY (digest, reference));
`;

indexConformance(
  'SQLite StoreIndex',
  async () => {
    const dir = await makeTempDir('conformance-sqlite');
    const file = path.join(dir, 'berth.db');
    const journal = path.join(dir, 'tags.jsonl');
    let index: RegistryIndex = new StoreIndex(file, journal);
    let open = true;
    return {
      get index() {
        return index;
      },
      async reopen() {
        index.close();
        index = new StoreIndex(file, journal);
        return index;
      },
      async cleanup() {
        if (open) index.close();
        open = false;
        await removeTempDir(dir);
      },
    };
  },
  {
    async openOldSchema() {
      const dir = await makeTempDir('conformance-sqlite-v0');
      const file = path.join(dir, 'berth.db');
      const tag = { upstream: 'docker.io', repository: 'library/old', tag: 'latest', digest: someDigest('old'), size: 321 };
      const db = new Database(file);
      db.exec(SCHEMA_V0);
      db.prepare('INSERT INTO blobs VALUES (?, ?, ?, ?, ?)').run(tag.digest, tag.size, 'application/vnd.oci.image.manifest.v1+json', 1, 1);
      db.prepare('INSERT INTO tags VALUES (?, ?, ?, ?, ?, ?, ?)').run(tag.upstream, tag.repository, tag.tag, tag.digest, 'application/vnd.oci.image.manifest.v1+json', tag.size, Date.now());
      db.close();
      const index = new StoreIndex(file);
      return {
        index,
        tag,
        async cleanup() {
          index.close();
          await removeTempDir(dir);
        },
      };
    },
  },
);

// gc is written against the roles (src/store/gc.ts): run it over the real pair of implementations.
describe('collectGarbage over a BlobStore and a StoreIndex', () => {
  test('blobs no tag or pin reaches and blobs the index does not know go; what a tag or a pin reaches stays', async () => {
    const dir = await makeTempDir('conformance-gc');
    const paths = new StoragePaths(dir);
    const store = new BlobStore(paths);
    await store.init();
    const index = new StoreIndex(paths.database);
    try {
      const put = async (what: string) => {
        const bytes = Buffer.from(`${what} ${dir}`);
        const d = digestOf(bytes);
        await writeBlob(store, d, [bytes]);
        return { d, size: bytes.length };
      };
      const layer = await put('layer');
      const manifest = await put('manifest');
      index.putBlob(layer.d, layer.size, null);
      index.recordManifest({
        upstream: 'docker.io',
        repository: 'lab/app',
        digest: manifest.d,
        size: manifest.size,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        children: [{ digest: layer.d, size: layer.size, mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip' }],
      });
      index.putTag({ upstream: 'docker.io', repository: 'lab/app', tag: '1', digest: manifest.d, mediaType: 'application/vnd.oci.image.manifest.v1+json', size: manifest.size, checkedAt: 1 });
      const pinned = await put('pinned');
      index.putBlob(pinned.d, pinned.size, null);
      index.pins.pin('docker.io/lab/pinned:1', [pinned.d]);
      const unreachable = await put('unreachable');
      index.putBlob(unreachable.d, unreachable.size, null);
      const unindexed = await put('unindexed');
      const a = asyncIndex(index);
      const deps = { index: a, pins: a.pins, store, staging: [paths.ingest, paths.tmp] };

      const dry = await collectGarbage(deps, { dryRun: true, minAgeMs: 0 });
      assert.deepEqual(dry.blobs, [{ digest: unreachable.d, size: unreachable.size }]);
      assert.deepEqual(dry.orphans, [unindexed.d]);
      assert.ok(await store.stat(unindexed.d), 'a dry run removes nothing');

      const r = await collectGarbage(deps, { dryRun: false, minAgeMs: 0 });
      assert.equal(r.freed, unreachable.size + unindexed.size);
      const left: string[] = [];
      for await (const b of store.list()) left.push(b.digest);
      assert.deepEqual(left.sort(), [layer.d, manifest.d, pinned.d].sort());
      assert.equal(index.getBlob(unreachable.d), undefined);
      assert.deepEqual(await filesUnder(paths.tmp), [], 'no temp file of the writes is left');
    } finally {
      index.close();
      await removeTempDir(dir);
    }
  });

  test('a referrer of a kept image stays with its blobs (and its own referrer); a referrer of a removed image goes', async () => {
    const dir = await makeTempDir('conformance-gc-referrers');
    const paths = new StoragePaths(dir);
    const store = new BlobStore(paths);
    await store.init();
    const index = new StoreIndex(paths.database);
    const MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
    try {
      const put = async (what: string) => {
        const bytes = Buffer.from(`${what} ${dir}`);
        const d = digestOf(bytes);
        await writeBlob(store, d, [bytes]);
        return { d, size: bytes.length };
      };
      const manifest = async (what: string, children: Array<{ d: Digest; size: number }>, subject?: Digest) => {
        const m = await put(what);
        for (const c of children) index.putBlob(c.d, c.size, null);
        index.recordManifest({
          upstream: 'docker.io',
          repository: 'lab/app',
          digest: m.d,
          size: m.size,
          mediaType: MANIFEST,
          children: children.map((c) => ({ digest: c.d, size: c.size, mediaType: 'application/octet-stream' })),
          ...(subject ? { subject, artifactType: 'application/vnd.dev.cosign.artifact.sig.v1+json' } : {}),
        });
        return m;
      };
      const kept = await manifest('kept image', [await put('kept layer')]);
      index.putTag({ upstream: 'docker.io', repository: 'lab/app', tag: 'kept', digest: kept.d, mediaType: MANIFEST, size: kept.size, checkedAt: 1 });
      const sigBlob = await put('signature blob');
      const sig = await manifest('signature of kept', [sigBlob], kept.d);
      const sigOfSig = await manifest('signature of the signature', [], sig.d);
      const removedLayer = await put('removed layer');
      const removed = await manifest('removed image (untagged)', [removedLayer]);
      const orphanSigBlob = await put('signature blob of removed');
      const orphanSig = await manifest('signature of removed', [orphanSigBlob], removed.d);

      const a = asyncIndex(index);
      const r = await collectGarbage({ index: a, pins: a.pins, store, staging: [paths.ingest, paths.tmp] }, { dryRun: false, minAgeMs: 0 });
      assert.deepEqual(r.blobs.map((b) => b.digest).sort(), [removed.d, removedLayer.d, orphanSig.d, orphanSigBlob.d].sort());
      for (const d of [kept.d, sig.d, sigBlob.d, sigOfSig.d]) assert.ok(await store.stat(d), `${d} stays`);
      assert.deepEqual(
        index.referrersOf('docker.io', 'lab/app', kept.d).map((x) => x.digest),
        [sig.d],
        'the kept referrer is still listed',
      );
      assert.deepEqual(index.referrersOf('docker.io', 'lab/app', removed.d), [], 'the removed one is listed no more');
    } finally {
      index.close();
      await removeTempDir(dir);
    }
  });
});
