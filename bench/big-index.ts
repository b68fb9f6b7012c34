// A storage directory whose index holds many blobs and tags, written straight into berth's own schema
// (StoreIndex creates it) with better-sqlite3: what a long-lived cache looks like at start-up.
import { randomBytes } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import Database from 'better-sqlite3';
import { StoreIndex } from '../src/store/store-index.ts';

const MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const LAYER = 'application/vnd.oci.image.layer.v1.tar+gzip';
const CHILDREN_PER_MANIFEST = 9;
const REPOSITORIES = 500;

const digest = (): string => `sha256:${randomBytes(32).toString('hex')}`;

/**
 * `blobs` rows (the first `tags` of them manifests, the rest layers and configs), `tags` tags over
 * 500 repositories, each manifest's children and every blob's referencing repository.
 */
export async function buildIndex(storage: string, blobs: number, tags: number): Promise<void> {
  await mkdir(storage, { recursive: true });
  // StoreIndex creates the schema (and migrates it); the rows go in through a connection of our own.
  new StoreIndex(path.join(storage, 'berth.db')).close();
  const db = new Database(path.join(storage, 'berth.db'));
  try {
    const putBlob = db.prepare('INSERT INTO blobs (digest, size, media_type, created_at, accessed_at) VALUES (?, ?, ?, ?, ?)');
    const putTag = db.prepare('INSERT INTO tags (upstream, repository, tag, digest, media_type, size, checked_at) VALUES (?, ?, ?, ?, ?, ?, ?)');
    const putRef = db.prepare('INSERT OR IGNORE INTO refs (digest, upstream, repository) VALUES (?, ?, ?)');
    const putChild = db.prepare('INSERT OR IGNORE INTO children (parent, child, size, media_type) VALUES (?, ?, ?, ?)');
    const now = Date.now();
    const manifests = Math.min(tags, blobs);
    const all = Array.from({ length: blobs }, digest);
    db.transaction(() => {
      for (let i = 0; i < blobs; i++) {
        const isManifest = i < manifests;
        const size = isManifest ? 1000 + (i % 3000) : 1_000_000 + i * 37;
        const repo = `bench/app${i % REPOSITORIES}`;
        putBlob.run(all[i], size, isManifest ? MANIFEST : null, now - i * 1000, now - i * 500);
        putRef.run(all[i], 'docker.io', repo);
      }
      for (let t = 0; t < tags; t++) {
        const m = t % manifests;
        putTag.run('docker.io', `bench/app${t % REPOSITORIES}`, `v${t}`, all[m], MANIFEST, 1000 + (m % 3000), now - t * 1000);
      }
      for (let m = 0; m < manifests; m++) {
        for (let c = 0; c < CHILDREN_PER_MANIFEST; c++) {
          const child = all[manifests + ((m * CHILDREN_PER_MANIFEST + c) % Math.max(1, blobs - manifests))];
          putChild.run(all[m], child, 1_000_000, LAYER);
        }
      }
    })();
  } finally {
    db.close();
  }
}
