import { appendFileSync } from 'node:fs';
import Database from 'better-sqlite3';
import { LRUCache } from 'lru-cache';
import type { Digest } from '../oci/digest.ts';

export interface BlobRow {
  digest: Digest;
  size: number;
  /** Set for manifests: the Content-Type the upstream sent, served back verbatim. */
  mediaType: string | null;
  createdAt: number;
  accessedAt: number;
}

export interface TagRow {
  upstream: string;
  repository: string;
  tag: string;
  digest: Digest;
  mediaType: string;
  size: number;
  checkedAt: number;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS blobs (
  digest TEXT PRIMARY KEY,
  size INTEGER NOT NULL,
  media_type TEXT,
  created_at INTEGER NOT NULL,
  accessed_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tags (
  upstream TEXT NOT NULL, repository TEXT NOT NULL, tag TEXT NOT NULL,
  digest TEXT NOT NULL, media_type TEXT NOT NULL, size INTEGER NOT NULL, checked_at INTEGER NOT NULL,
  PRIMARY KEY (upstream, repository, tag)
);
-- which upstream repository referenced a digest: routes blob requests that carry neither ns nor prefix
CREATE TABLE IF NOT EXISTS refs (
  digest TEXT NOT NULL, upstream TEXT NOT NULL, repository TEXT NOT NULL,
  PRIMARY KEY (digest, upstream, repository)
);
-- manifest -> the blobs and child manifests it names (for export, pinning, eviction and gc)
CREATE TABLE IF NOT EXISTS children (
  parent TEXT NOT NULL, child TEXT NOT NULL, size INTEGER NOT NULL, media_type TEXT NOT NULL,
  PRIMARY KEY (parent, child)
);
CREATE INDEX IF NOT EXISTS children_child ON children(child);
CREATE TABLE IF NOT EXISTS pins (digest TEXT NOT NULL, reference TEXT NOT NULL, PRIMARY KEY (digest, reference));
CREATE INDEX IF NOT EXISTS pins_reference ON pins(reference);
CREATE INDEX IF NOT EXISTS blobs_accessed ON blobs(accessed_at);
`;

/**
 * The SQLite index of the storage directory (WAL, every statement prepared once). The blob files are the
 * truth about content; this index is what is known about them and can be rebuilt from them.
 * Access times are kept in memory and written in one transaction now and then, never per request.
 */
export class StoreIndex {
  readonly db: Database.Database;
  private readonly pendingAccess = new Map<string, number>();
  /**
   * Rows read on every hot request (a tag, its manifest's row) are kept for a second: a SQLite read in
   * WAL mode costs ~10 µs of locking, which was a fifth of the CPU of serving a cached tag. This process's
   * own writes update the caches; another process's (`berth rm` beside a running server) show within 1 s.
   */
  private readonly blobRows = new LRUCache<string, BlobRow | false>({ max: 20_000, ttl: 1000 });
  private readonly tagRows = new LRUCache<string, TagRow | false>({ max: 20_000, ttl: 1000 });
  private readonly s;

  /**
   * `tagJournal`: an append-only file of tag changes (JSON lines), so that a rebuilt index gets its tags
   * back — blob files name themselves, tags exist nowhere else.
   */
  constructor(file: string, private readonly tagJournal?: string) {
    try {
      this.db = new Database(file, { timeout: 5000 });
      this.db.pragma('journal_mode = WAL');
      this.db.pragma('synchronous = NORMAL');
      this.db.exec(SCHEMA);
      this.db.prepare('SELECT COUNT(*) FROM blobs').get();
      // Reading works under another process's lock; writing is what berth needs, so probe for it now.
      this.db.exec('BEGIN IMMEDIATE; ROLLBACK');
    } catch (err) {
      throw indexError(file, err);
    }
    const p = (sql: string) => this.db.prepare(sql);
    this.s = {
      getBlob: p('SELECT digest, size, media_type AS mediaType, created_at AS createdAt, accessed_at AS accessedAt FROM blobs WHERE digest = ?'),
      putBlob: p(`INSERT INTO blobs (digest, size, media_type, created_at, accessed_at) VALUES (?, ?, ?, ?, ?)
                  ON CONFLICT(digest) DO UPDATE SET size = excluded.size, media_type = COALESCE(excluded.media_type, blobs.media_type)`),
      deleteBlob: p('DELETE FROM blobs WHERE digest = ?'),
      touch: p('UPDATE blobs SET accessed_at = ? WHERE digest = ? AND accessed_at < ?'),
      getTag: p('SELECT upstream, repository, tag, digest, media_type AS mediaType, size, checked_at AS checkedAt FROM tags WHERE upstream = ? AND repository = ? AND tag = ?'),
      putTag: p(`INSERT INTO tags (upstream, repository, tag, digest, media_type, size, checked_at) VALUES (?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT(upstream, repository, tag) DO UPDATE SET digest = excluded.digest, media_type = excluded.media_type,
                 size = excluded.size, checked_at = excluded.checked_at`),
      listTags: p('SELECT tag FROM tags WHERE upstream = ? AND repository = ? ORDER BY tag'),
      addRef: p('INSERT OR IGNORE INTO refs (digest, upstream, repository) VALUES (?, ?, ?)'),
      refOf: p('SELECT upstream, repository FROM refs WHERE digest = ? LIMIT 1'),
      addChild: p('INSERT OR IGNORE INTO children (parent, child, size, media_type) VALUES (?, ?, ?, ?)'),
      descriptorSize: p('SELECT size FROM children WHERE child = ? AND size >= 0 LIMIT 1'),
      totalSize: p('SELECT COALESCE(SUM(size), 0) AS total, COUNT(*) AS count FROM blobs'),
      evictable: p(`SELECT digest, size FROM blobs WHERE digest NOT IN (SELECT digest FROM pins)
                    ORDER BY accessed_at ASC, created_at ASC LIMIT ?`),
      allTags: p('SELECT upstream, repository, tag, digest, media_type AS mediaType, size, checked_at AS checkedAt FROM tags ORDER BY upstream, repository, tag'),
      deleteTag: p('DELETE FROM tags WHERE upstream = ? AND repository = ? AND tag = ?'),
      tagsOf: p('SELECT COUNT(*) AS n FROM tags WHERE digest = ?'),
      parentsOf: p('SELECT COUNT(*) AS n FROM children WHERE child = ?'),
      deleteChildren: p('DELETE FROM children WHERE parent = ?'),
      allDigests: p('SELECT digest FROM blobs'),
      childrenOf: p('SELECT child AS digest, size, media_type AS mediaType FROM children WHERE parent = ?'),
    };
  }

  getBlob(d: Digest): BlobRow | undefined {
    const hit = this.blobRows.get(d);
    if (hit !== undefined) return hit || undefined;
    const row = this.s.getBlob.get(d) as BlobRow | undefined;
    this.blobRows.set(d, row ?? false);
    return row;
  }

  putBlob(d: Digest, size: number, mediaType: string | null, now = Date.now()): void {
    this.s.putBlob.run(d, size, mediaType, now, now);
    this.blobRows.delete(d);
  }

  deleteBlob(d: Digest): void {
    this.s.deleteBlob.run(d);
    this.blobRows.delete(d);
    this.pendingAccess.delete(d);
  }

  /** Records a read; written to disk by flushAccess. */
  touch(d: Digest, now = Date.now()): void {
    this.pendingAccess.set(d, now);
  }

  /** Writes the recorded access times; on failure they stay pending for the next try. */
  flushAccess(): void {
    if (this.pendingAccess.size === 0) return;
    const entries = [...this.pendingAccess];
    this.db.transaction(() => {
      for (const [d, t] of entries) this.s.touch.run(t, d, t);
    })();
    for (const [d, t] of entries) if (this.pendingAccess.get(d) === t) this.pendingAccess.delete(d);
  }

  getTag(upstream: string, repository: string, tag: string): TagRow | undefined {
    const key = `${upstream}\n${repository}\n${tag}`;
    const hit = this.tagRows.get(key);
    if (hit !== undefined) return hit || undefined;
    const row = this.s.getTag.get(upstream, repository, tag) as TagRow | undefined;
    this.tagRows.set(key, row ?? false);
    return row;
  }

  putTag(t: TagRow): void {
    const before = this.tagJournal ? this.getTag(t.upstream, t.repository, t.tag) : undefined;
    this.s.putTag.run(t.upstream, t.repository, t.tag, t.digest, t.mediaType, t.size, t.checkedAt);
    this.tagRows.delete(`${t.upstream}\n${t.repository}\n${t.tag}`);
    if (this.tagJournal && before?.digest !== t.digest) {
      const { checkedAt: _c, ...entry } = t;
      appendFileSync(this.tagJournal, `${JSON.stringify(entry)}\n`);
    }
  }

  listTags(upstream: string, repository: string): string[] {
    return (this.s.listTags.all(upstream, repository) as Array<{ tag: string }>).map((r) => r.tag);
  }

  /** Remembers that `repository` on `upstream` referenced these digests. */
  addRefs(upstream: string, repository: string, digests: Iterable<Digest>): void {
    this.db.transaction(() => {
      for (const d of digests) this.s.addRef.run(d, upstream, repository);
    })();
  }

  refOf(d: Digest): { upstream: string; repository: string } | undefined {
    return this.s.refOf.get(d) as { upstream: string; repository: string } | undefined;
  }

  /** Every (upstream, repository) known to reference this digest (read-only; auth.rules checks digests with it). */
  repositoriesOf(d: Digest): Array<{ upstream: string; repository: string }> {
    return this.db.prepare('SELECT upstream, repository FROM refs WHERE digest = ?').all(d) as Array<{ upstream: string; repository: string }>;
  }

  addChildren(parent: Digest, children: Array<{ digest: Digest; size: number; mediaType: string }>): void {
    this.db.transaction(() => {
      for (const c of children) this.s.addChild.run(parent, c.digest, c.size, c.mediaType);
    })();
  }

  /** The size a cached manifest declared for this digest, if any did. */
  descriptorSize(d: Digest): number | undefined {
    return (this.s.descriptorSize.get(d) as { size: number } | undefined)?.size;
  }

  childrenOf(parent: Digest): Array<{ digest: Digest; size: number; mediaType: string }> {
    return this.s.childrenOf.all(parent) as Array<{ digest: Digest; size: number; mediaType: string }>;
  }

  /** Bytes and count of everything indexed. */
  totals(): { total: number; count: number } {
    return this.s.totalSize.get() as { total: number; count: number };
  }

  /** Unpinned blobs, least recently used first. */
  evictable(limit: number): Array<{ digest: Digest; size: number }> {
    return this.s.evictable.all(limit) as Array<{ digest: Digest; size: number }>;
  }

  allTags(): TagRow[] {
    return this.s.allTags.all() as TagRow[];
  }

  deleteTag(upstream: string, repository: string, tag: string): void {
    this.s.deleteTag.run(upstream, repository, tag);
    this.tagRows.delete(`${upstream}\n${repository}\n${tag}`);
  }

  /** Whether any tag or cached manifest still points at `d`. */
  isReferenced(d: Digest): boolean {
    return (this.s.tagsOf.get(d) as { n: number }).n > 0 || (this.s.parentsOf.get(d) as { n: number }).n > 0;
  }

  /** Forgets a manifest's outgoing edges (when the manifest itself is removed). */
  deleteChildren(parent: Digest): void {
    this.s.deleteChildren.run(parent);
  }

  allDigests(): Digest[] {
    return (this.s.allDigests.all() as Array<{ digest: Digest }>).map((r) => r.digest);
  }

  close(): void {
    try {
      this.flushAccess();
    } finally {
      this.db.close();
    }
  }
}

/** A clear start-up error for an index that cannot be used, with the way out. */
function indexError(file: string, err: unknown): Error {
  const code = (err as { code?: string }).code ?? '';
  const why = (err as Error).message;
  if (code === 'SQLITE_BUSY' || code.startsWith('SQLITE_BUSY') || code === 'SQLITE_LOCKED') {
    return new Error(`the index ${file} is locked by another process (${why}); is another berth using this storage directory?`);
  }
  if (code.startsWith('SQLITE_CORRUPT') || code === 'SQLITE_NOTADB' || code.startsWith('SQLITE_IOERR')) {
    return new Error(`the index ${file} is damaged (${code}: ${why}); rebuild it from the blob files with: berth index rebuild --storage <dir>`);
  }
  return new Error(`cannot open the index ${file}: ${why}`);
}
