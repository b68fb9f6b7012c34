import Database from 'better-sqlite3';
import { LRUCache } from 'lru-cache';
import type { Digest } from '../oci/digest.ts';
import type { ReferrerDescriptor } from '../oci/referrers.ts';
import { EstargzTable } from './estargz-table.ts';
import type { BlobRow, ChildDescriptor, ManifestRecord, RegistryIndex, TagInput, TagRow } from './index-roles.ts';
import { LOCAL_UPSTREAM } from './index-roles.ts';
import { migrate } from './migrations.ts';
import { Pins } from './pins.ts';
import { ReferrerTable } from './referrer-table.ts';
import { TagTable } from './tag-table.ts';

export type { BlobRow, TagInput, TagRow } from './index-roles.ts';

const SCHEMA = `
CREATE TABLE IF NOT EXISTS blobs (
  digest TEXT PRIMARY KEY,
  size INTEGER NOT NULL,
  media_type TEXT,
  created_at INTEGER NOT NULL,
  accessed_at INTEGER NOT NULL
);
-- tags: src/store/migrations.ts creates and changes that table (src/store/tag-table.ts)
-- which upstream repository referenced a digest: routes blob requests that carry neither ns nor prefix,
-- and says which manifests' declared sizes count for a repository (descriptorSize)
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
-- the local registry (issue #10): a repository's references (catalog, tags/list of an empty repository)
CREATE INDEX IF NOT EXISTS refs_repository ON refs(upstream, repository);
`;

/**
 * The SQLite index of the storage directory (WAL, every statement prepared once), implementing
 * src/store/index-roles.ts. The blob files are the truth about content; this index is what is known
 * about them and can be rebuilt from them. Access times are kept in memory and written in one
 * transaction now and then, never per request. The database handle stays in here (and in the tables
 * and pins it hands it to): everything outside src/store/ goes through the methods.
 */
export class StoreIndex implements RegistryIndex {
  private readonly db: Database.Database;
  private readonly pendingAccess = new Map<string, number>();
  /**
   * Rows read on every hot request (a tag, its manifest's row) are kept for a second: a SQLite read in
   * WAL mode costs ~10 µs of locking, which was a fifth of the CPU of serving a cached tag. This process's
   * own writes update the caches; another process's (`berth rm` beside a running server) show within 1 s.
   */
  private readonly blobRows = new LRUCache<string, BlobRow | false>({ max: 20_000, ttl: 1000 });
  private readonly tags: TagTable;
  private readonly referrers: ReferrerTable;
  readonly pins: Pins;
  readonly estargz: EstargzTable;
  private readonly s;

  /**
   * `tagJournal`: an append-only file of tag changes (JSON lines), so that a rebuilt index gets its tags
   * back — blob files name themselves, tags exist nowhere else.
   */
  constructor(file: string, tagJournal?: string) {
    try {
      this.db = new Database(file, { timeout: 5000 });
      this.db.pragma('journal_mode = WAL');
      this.db.pragma('synchronous = NORMAL');
      this.db.exec(SCHEMA);
      this.db.prepare('SELECT COUNT(*) FROM blobs').get();
      // Reading works under another process's lock; writing is what berth needs, so probe for it now.
      this.db.exec('BEGIN IMMEDIATE; ROLLBACK');
      migrate(this.db);
    } catch (err) {
      throw indexError(file, err);
    }
    this.tags = new TagTable(this.db, tagJournal);
    this.pins = new Pins(this.db);
    this.referrers = new ReferrerTable(this.db);
    this.estargz = new EstargzTable(this.db);
    const p = (sql: string) => this.db.prepare(sql);
    this.s = {
      getBlob: p('SELECT digest, size, media_type AS mediaType, created_at AS createdAt, accessed_at AS accessedAt FROM blobs WHERE digest = ?'),
      putBlob: p(`INSERT INTO blobs (digest, size, media_type, created_at, accessed_at) VALUES (?, ?, ?, ?, ?)
                  ON CONFLICT(digest) DO UPDATE SET size = excluded.size, media_type = COALESCE(excluded.media_type, blobs.media_type)`),
      deleteBlob: p('DELETE FROM blobs WHERE digest = ?'),
      touch: p('UPDATE blobs SET accessed_at = ? WHERE digest = ? AND accessed_at < ?'),
      addRef: p('INSERT OR IGNORE INTO refs (digest, upstream, repository) VALUES (?, ?, ?)'),
      refsOf: p('SELECT upstream, repository FROM refs WHERE digest = ?'),
      addChild: p('INSERT OR IGNORE INTO children (parent, child, size, media_type) VALUES (?, ?, ?, ?)'),
      descriptorSize: p(`SELECT c.size FROM children c JOIN refs r ON r.digest = c.parent
                         WHERE c.child = ? AND r.upstream = ? AND r.repository = ? AND c.size >= 0 LIMIT 1`),
      totalSize: p('SELECT COALESCE(SUM(size), 0) AS total, COUNT(*) AS count FROM blobs'),
      // Local content (a reference of the local registry reaches it) is the site's own: never evicted.
      evictable: p(`SELECT digest, size FROM blobs WHERE digest NOT IN (SELECT digest FROM pins)
                    AND NOT EXISTS (SELECT 1 FROM refs r WHERE r.digest = blobs.digest AND r.upstream = '${LOCAL_UPSTREAM}')
                    ORDER BY accessed_at ASC, created_at ASC LIMIT ?`),
      parentsOf: p('SELECT COUNT(*) AS n FROM children WHERE child = ?'),
      deleteChildren: p('DELETE FROM children WHERE parent = ?'),
      allDigests: p('SELECT digest FROM blobs'),
      childrenOf: p('SELECT child AS digest, size, media_type AS mediaType FROM children WHERE parent = ?'),
      newest: p('SELECT digest, size FROM blobs ORDER BY created_at DESC LIMIT 1'),
      probe: p('SELECT 1 FROM blobs LIMIT 1'),
      // the local registry (issue #10)
      deleteRef: p('DELETE FROM refs WHERE digest = ? AND upstream = ? AND repository = ?'),
      hasRepository: p('SELECT 1 FROM refs WHERE upstream = ? AND repository = ? LIMIT 1'),
      repositories: p('SELECT DISTINCT upstream, repository FROM refs UNION SELECT DISTINCT upstream, repository FROM tags'),
      localManifests: p(`SELECT DISTINCT r.digest FROM refs r JOIN blobs b ON b.digest = r.digest
                         WHERE r.upstream = '${LOCAL_UPSTREAM}' AND b.media_type IS NOT NULL`),
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

  /**
   * One answer of a tag for callers that do not negotiate (`berth rm`, `ls`): the tag's own content when
   * known, else the most recently checked answer. Clients go through tagRows and src/oci/negotiation.ts.
   */
  getTag(upstream: string, repository: string, tag: string): TagRow | undefined {
    const rows = this.tags.rowsOf(upstream, repository, tag);
    return rows.find((r) => r.accept === '*') ?? [...rows].sort((a, b) => b.checkedAt - a.checkedAt)[0];
  }

  /** Every cached answer of a tag, one per negotiation. */
  tagRows(upstream: string, repository: string, tag: string): TagRow[] {
    return this.tags.rowsOf(upstream, repository, tag);
  }

  putTag(t: TagInput): void {
    this.tags.put(t);
  }

  listTags(upstream: string, repository: string): string[] {
    return this.tags.list(upstream, repository);
  }

  /** Remembers that `repository` on `upstream` referenced these digests. */
  addRefs(upstream: string, repository: string, digests: Iterable<Digest>): void {
    this.db.transaction(() => {
      for (const d of digests) this.s.addRef.run(d, upstream, repository);
    })();
  }

  /** Every (upstream, repository) whose manifests referenced `d`. */
  refsOf(d: Digest): Array<{ upstream: string; repository: string }> {
    return this.s.refsOf.all(d) as Array<{ upstream: string; repository: string }>;
  }

  /** A manifest's outgoing edges (rebuild, which has no repository to record; everyone else recordManifest). */
  addChildren(parent: Digest, children: readonly ChildDescriptor[]): void {
    this.db.transaction(() => {
      for (const c of children) {
        // INSERT OR IGNORE would drop a row that breaks NOT NULL without a word: refuse it instead, so a
        // manifest is recorded with all of its children or not at all.
        if (typeof c.digest !== 'string' || typeof c.mediaType !== 'string' || !Number.isSafeInteger(c.size)) {
          throw new TypeError(`manifest ${parent}: child ${String(c.digest)} is not a descriptor (digest, integer size, media type)`);
        }
        this.s.addChild.run(parent, c.digest, c.size, c.mediaType);
      }
    })();
  }

  recordManifest(m: ManifestRecord): void {
    this.db.transaction(() => {
      this.putBlob(m.digest, m.size, m.mediaType);
      this.addChildren(m.digest, m.children);
      this.addRefs(m.upstream, m.repository, [m.digest, ...m.children.map((c) => c.digest)]);
      // A manifest with a subject is a referrer of it (pulled, pushed or imported alike).
      this.referrers.recordManifest(m);
    })();
    // A rolled-back putBlob already dropped its cached row: the next read sees the table as it is.
  }

  /**
   * The size that a cached manifest of this (upstream, repository) declared for `d`, if one did. Only the
   * repository's own manifests count: any repository can declare any digest with any size.
   */
  descriptorSize(d: Digest, where: { upstream: string; repository: string }): number | undefined {
    return (this.s.descriptorSize.get(d, where.upstream, where.repository) as { size: number } | undefined)?.size;
  }

  childrenOf(parent: Digest): ChildDescriptor[] {
    return this.s.childrenOf.all(parent) as ChildDescriptor[];
  }

  /** Bytes and count of everything indexed. */
  totals(): { total: number; count: number } {
    return this.s.totalSize.get() as { total: number; count: number };
  }

  /** Unpinned blobs that no local repository references, least recently used first. */
  evictable(limit: number): Array<{ digest: Digest; size: number }> {
    return this.s.evictable.all(limit) as Array<{ digest: Digest; size: number }>;
  }

  newest(): { digest: Digest; size: number } | undefined {
    return this.s.newest.get() as { digest: Digest; size: number } | undefined;
  }

  /** Every tag row, every negotiation of each tag (gc walks them all). */
  allTags(): TagRow[] {
    return this.tags.all();
  }

  /** Forgets a tag, every negotiation of it. */
  deleteTag(upstream: string, repository: string, tag: string): void {
    this.tags.delete(upstream, repository, tag);
  }

  /** Whether any tag or cached manifest still points at `d`. */
  isReferenced(d: Digest): boolean {
    return this.tags.countOf(d) > 0 || (this.s.parentsOf.get(d) as { n: number }).n > 0;
  }

  /** Forgets a manifest's outgoing edges (when the manifest itself is removed). */
  deleteChildren(parent: Digest): void {
    this.s.deleteChildren.run(parent);
  }

  referrersOf(upstream: string, repository: string, subject: Digest): ReferrerDescriptor[] {
    return this.referrers.of(upstream, repository, subject);
  }

  referrerDigests(subject: Digest): Digest[] {
    return this.referrers.digestsOf(subject);
  }

  putUpstreamReferrers(upstream: string, repository: string, subject: Digest, list: readonly ReferrerDescriptor[], checkedAt: number): void {
    this.referrers.putListed(upstream, repository, subject, list, checkedAt);
  }

  referrersCheckedAt(upstream: string, repository: string, subject: Digest): number | undefined {
    return this.referrers.checkedAt(upstream, repository, subject);
  }

  forgetReferrer(d: Digest): void {
    this.referrers.forget(d);
  }

  allDigests(): Digest[] {
    return (this.s.allDigests.all() as Array<{ digest: Digest }>).map((r) => r.digest);
  }

  /**
   * Reads a row and takes the write lock and gives it back: fails on a read-only file, a full disk's
   * journal, a lock held elsewhere. better-sqlite3 waits for a lock synchronously, so the probe must not
   * hold the event loop for the connection's full busy timeout (5 s) while another process writes.
   */
  probe(): void {
    const timeout = this.db.pragma('busy_timeout', { simple: true }) as number;
    try {
      this.db.pragma('busy_timeout = 250');
      this.s.probe.get();
      this.db.exec('BEGIN IMMEDIATE; ROLLBACK');
    } finally {
      this.db.pragma(`busy_timeout = ${Math.floor(timeout)}`);
    }
  }

  // The local registry (issue #10): deletes and the catalog.

  /**
   * Forgets that `repository` on `upstream` references `d` (a DELETE of a local manifest or blob, gc). A
   * manifest the repository no longer holds is no referrer there either: the referrers API lists only what
   * the repository can serve.
   */
  deleteRef(upstream: string, repository: string, d: Digest): boolean {
    return this.db.transaction(() => {
      this.referrers.forgetIn(upstream, repository, d);
      return this.s.deleteRef.run(d, upstream, repository).changes > 0;
    })();
  }

  /** Whether anything is known of the repository: a reference or a tag. */
  hasRepository(upstream: string, repository: string): boolean {
    return this.s.hasRepository.get(upstream, repository) !== undefined || this.tags.list(upstream, repository).length > 0;
  }

  /** Every (upstream, repository) the index knows content or tags of, unsorted. */
  repositories(): Array<{ upstream: string; repository: string }> {
    return this.s.repositories.all() as Array<{ upstream: string; repository: string }>;
  }

  /** Forgets the tags of a repository that name `d` (every negotiation); returns them. */
  deleteTagsOf(upstream: string, repository: string, d: Digest): string[] {
    const gone = this.tags.list(upstream, repository).filter((t) => this.tags.rowsOf(upstream, repository, t).some((r) => r.digest === d));
    for (const t of gone) this.tags.delete(upstream, repository, t);
    return gone;
  }

  /** Manifests some local repository holds (pushed, tagged or not): roots for gc, as the site's own. */
  localManifests(): Digest[] {
    return (this.s.localManifests.all() as Array<{ digest: Digest }>).map((r) => r.digest);
  }

  schemaVersion(): number {
    return Number(this.db.pragma('user_version', { simple: true }));
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
