// The store and index conformance suites (test/support/conformance/) run against the implementations
// berth has today: the filesystem BlobStore on a temp directory and StoreIndex on SQLite. No upstream,
// no server: seconds. Issue #12's S3 store and PostgreSQL index add their factories here.
import Database from 'better-sqlite3';
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { BlobStore } from '../src/store/blob-store.ts';
import type { RegistryIndex } from '../src/store/index-roles.ts';
import { StoragePaths } from '../src/store/paths.ts';
import { StoreIndex } from '../src/store/store-index.ts';
import { blobStoreConformance } from './support/conformance/blob-store.ts';
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
