import type { Digest } from '../../oci/digest.ts';
import type { ReferrerDescriptor } from '../../oci/referrers.ts';
import type { AsyncRegistryIndex } from '../async-index-roles.ts';
import type { BlobRow, ChildDescriptor, ManifestRecord, TagInput, TagRow } from '../index-roles.ts';
import { LOCAL_UPSTREAM } from '../index-roles.ts';
import type { CacheUsage } from '../usage.ts';
import { PgDb, type PgIndexOptions, PgUnavailableError, type Queryable, safeInt } from './db.ts';
import { migrate, schemaVersionOf } from './migrations.ts';
import { PgEstargz } from './pg-estargz.ts';
import { PgPins } from './pg-pins.ts';
import { PgReferrers } from './pg-referrers.ts';
import { PgTags } from './pg-tags.ts';
import { pgUsage } from './pg-usage.ts';

export type { PgIndexOptions } from './db.ts';

type Where = { upstream: string; repository: string };

/** Distinct, in byte order: rows inserted in one order by every replica take their locks in one order (no deadlock). */
const sortedUnique = (xs: Iterable<string>): string[] => [...new Set(xs)].sort();

/**
 * The index in PostgreSQL (issue #12), implementing the roles of src/store/index-roles.ts with promised
 * results: the same tables, keys and answers as the SQLite StoreIndex (src/store/store-index.ts), so several
 * berth replicas share one index. Unlike StoreIndex it caches no rows: what one replica writes, the others
 * read at once. Access times are the exception, as in SQLite: kept in memory and written in one statement by
 * flushAccess, never per request; the write only moves a time forward, so replicas flushing in any order
 * leave the latest read.
 */
export class PgIndex implements AsyncRegistryIndex {
  readonly pins: PgPins;
  readonly estargz: PgEstargz;
  /** The schema version found at open and the one left (equal when another replica or an earlier start migrated). */
  readonly migrated: { from: number; to: number };
  private readonly tags: PgTags;
  private readonly referrers: PgReferrers;
  private readonly pendingAccess = new Map<Digest, number>();
  private closed = false;

  private constructor(
    private readonly db: PgDb,
    migrated: { from: number; to: number },
    private readonly probeTimeoutMs: number,
  ) {
    this.migrated = migrated;
    this.tags = new PgTags(db, db.point);
    this.referrers = new PgReferrers(db);
    this.pins = new PgPins(db);
    this.estargz = new PgEstargz(db);
  }

  /**
   * Connects and migrates (under the migration lock, see migrations.ts). Fails with an error naming
   * PostgreSQL and where it is (never the password) when it cannot be reached, refuses the login, or the
   * role may not create the tables; nothing is left open then.
   */
  static async open(o: PgIndexOptions & { probeTimeoutMs?: number }): Promise<PgIndex> {
    const db = new PgDb(o);
    try {
      return new PgIndex(db, await migrate(db), o.probeTimeoutMs ?? 2000);
    } catch (err) {
      await db.end().catch(() => {});
      const why = (err as Error).message;
      throw new Error(err instanceof PgUnavailableError ? `cannot open the index: ${why}` : `cannot open the index on ${db.server}: ${why}`, { cause: err });
    }
  }

  // BlobIndex

  async getBlob(d: Digest): Promise<BlobRow | undefined> {
    const r = await this.db.point.run<BlobRow>('SELECT digest, size, media_type AS "mediaType", created_at AS "createdAt", accessed_at AS "accessedAt" FROM blobs WHERE digest = $1', [d]);
    return r.rows[0];
  }

  async putBlob(d: Digest, size: number, mediaType: string | null, now = Date.now()): Promise<void> {
    await this.putBlobIn(this.db, d, size, mediaType, now);
  }

  private async putBlobIn(q: Queryable, d: Digest, size: number, mediaType: string | null, now = Date.now()): Promise<void> {
    await q.run(
      `INSERT INTO blobs (digest, size, media_type, created_at, accessed_at) VALUES ($1, $2, $3, $4, $4)
       ON CONFLICT (digest) DO UPDATE SET size = excluded.size, media_type = COALESCE(excluded.media_type, blobs.media_type)`,
      [d, safeInt(`the size of ${d}`, size), mediaType, safeInt('a time', now)],
    );
  }

  async deleteBlob(d: Digest): Promise<void> {
    await this.db.run('DELETE FROM blobs WHERE digest = $1', [d]);
    this.pendingAccess.delete(d);
  }

  /** Records a read; written by flushAccess. */
  async touch(d: Digest, now = Date.now()): Promise<void> {
    this.pendingAccess.set(d, now);
  }

  /** Writes the recorded access times in one statement; on failure they stay pending for the next try. */
  async flushAccess(): Promise<void> {
    if (this.pendingAccess.size === 0) return;
    const entries = [...this.pendingAccess].sort((a, b) => (a[0] < b[0] ? -1 : 1));
    await this.db.run(
      `UPDATE blobs SET accessed_at = u.t FROM unnest($1::text[], $2::bigint[]) AS u(d, t)
       WHERE blobs.digest = u.d AND blobs.accessed_at < u.t`,
      [entries.map((e) => e[0]), entries.map((e) => e[1])],
    );
    for (const [d, t] of entries) if (this.pendingAccess.get(d) === t) this.pendingAccess.delete(d);
  }

  async totals(): Promise<{ total: number; count: number }> {
    // SUM of BIGINT is NUMERIC: cast back, so the int8 parser makes it a number (or refuses it past 2^53).
    return (await this.db.run<{ total: number; count: number }>('SELECT COALESCE(SUM(size), 0)::bigint AS total, COUNT(*) AS count FROM blobs')).rows[0]!;
  }

  /** Unpinned blobs that no local repository references, least recently used first (local content is the site's own). */
  async evictable(limit: number): Promise<Array<{ digest: Digest; size: number }>> {
    const r = await this.db.run<{ digest: Digest; size: number }>(
      `SELECT digest, size FROM blobs b WHERE NOT EXISTS (SELECT 1 FROM pins p WHERE p.digest = b.digest)
       AND NOT EXISTS (SELECT 1 FROM refs r WHERE r.digest = b.digest AND r.upstream = $2)
       ORDER BY accessed_at ASC, created_at ASC, digest COLLATE "C" LIMIT $1`,
      [safeInt('limit', limit), LOCAL_UPSTREAM],
    );
    return r.rows;
  }

  async newest(): Promise<{ digest: Digest; size: number } | undefined> {
    return (await this.db.run<{ digest: Digest; size: number }>('SELECT digest, size FROM blobs ORDER BY created_at DESC LIMIT 1')).rows[0];
  }

  async allDigests(): Promise<Digest[]> {
    return (await this.db.run<{ digest: Digest }>('SELECT digest FROM blobs')).rows.map((r) => r.digest);
  }

  // ManifestIndex

  /**
   * The row, the children, the references and the referrer row in one transaction. Every statement is an
   * upsert keyed like SQLite's, so two replicas recording the same manifest at once both succeed with one set
   * of rows: the second waits for the first's row locks and then finds the rows there (no unique violation).
   */
  async recordManifest(m: ManifestRecord): Promise<void> {
    await this.db.tx(async (q) => {
      await this.putBlobIn(q, m.digest, m.size, m.mediaType);
      await this.addChildrenIn(q, m.digest, m.children);
      await this.addRefsIn(q, m.upstream, m.repository, [m.digest, ...m.children.map((c) => c.digest)]);
      await this.referrers.recordManifest(q, m);
    });
  }

  private async addChildrenIn(q: Queryable, parent: Digest, children: readonly ChildDescriptor[]): Promise<void> {
    const first = new Map<Digest, ChildDescriptor>();
    for (const c of children) {
      // As in SQLite: a child that is not a descriptor fails the whole manifest (inside the transaction), rather than being dropped.
      if (typeof c.digest !== 'string' || typeof c.mediaType !== 'string' || !Number.isSafeInteger(c.size)) {
        throw new TypeError(`manifest ${parent}: child ${String(c.digest)} is not a descriptor (digest, integer size, media type)`);
      }
      if (!first.has(c.digest)) first.set(c.digest, c); // a layer listed twice: its first descriptor, as INSERT OR IGNORE kept
    }
    if (first.size === 0) return;
    const rows = [...first.values()].sort((a, b) => (a.digest < b.digest ? -1 : 1));
    await q.run(
      `INSERT INTO children (parent, child, size, media_type) SELECT $1, c, s, t FROM unnest($2::text[], $3::bigint[], $4::text[]) AS u(c, s, t)
       ON CONFLICT DO NOTHING`,
      [parent, rows.map((c) => c.digest), rows.map((c) => c.size), rows.map((c) => c.mediaType)],
    );
  }

  async childrenOf(parent: Digest): Promise<ChildDescriptor[]> {
    return (await this.db.point.run<ChildDescriptor>('SELECT child AS digest, size, media_type AS "mediaType" FROM children WHERE parent = $1 ORDER BY child COLLATE "C"', [parent])).rows;
  }

  async deleteChildren(parent: Digest): Promise<void> {
    await this.db.run('DELETE FROM children WHERE parent = $1', [parent]);
  }

  async addRefs(upstream: string, repository: string, digests: Iterable<Digest>): Promise<void> {
    await this.addRefsIn(this.db, upstream, repository, digests);
  }

  private async addRefsIn(q: Queryable, upstream: string, repository: string, digests: Iterable<Digest>): Promise<void> {
    const list = sortedUnique(digests);
    if (list.length === 0) return;
    await q.run('INSERT INTO refs (digest, upstream, repository) SELECT d, $2, $3 FROM unnest($1::text[]) AS d ON CONFLICT DO NOTHING', [list, upstream, repository]);
  }

  async refsOf(d: Digest): Promise<Where[]> {
    return (await this.db.point.run<Where>('SELECT upstream, repository FROM refs WHERE digest = $1 ORDER BY upstream COLLATE "C", repository COLLATE "C"', [d])).rows;
  }

  /** The size a manifest of this (upstream, repository) declared for `d`: only the repository's own manifests count. */
  async descriptorSize(d: Digest, where: Where): Promise<number | undefined> {
    const r = await this.db.point.run<{ size: number }>(
      `SELECT c.size FROM children c JOIN refs r ON r.digest = c.parent
       WHERE c.child = $1 AND r.upstream = $2 AND r.repository = $3 AND c.size >= 0 LIMIT 1`,
      [d, where.upstream, where.repository],
    );
    return r.rows[0]?.size;
  }

  async isReferenced(d: Digest): Promise<boolean> {
    const r = await this.db.point.run<{ yes: boolean }>('SELECT EXISTS (SELECT 1 FROM tags WHERE digest = $1) OR EXISTS (SELECT 1 FROM children WHERE child = $1) AS yes', [d]);
    return r.rows[0]!.yes;
  }

  /** Forgets one reference, and the manifest as a referrer in that repository (it lists only what the repository serves). */
  async deleteRef(upstream: string, repository: string, d: Digest): Promise<boolean> {
    return this.db.tx(async (q) => {
      await this.referrers.forgetIn(q, upstream, repository, d);
      return (await q.run('DELETE FROM refs WHERE digest = $1 AND upstream = $2 AND repository = $3', [d, upstream, repository])).rowCount > 0;
    });
  }

  async hasRepository(upstream: string, repository: string): Promise<boolean> {
    const r = await this.db.point.run<{ yes: boolean }>(
      `SELECT EXISTS (SELECT 1 FROM refs WHERE upstream = $1 AND repository = $2)
       OR EXISTS (SELECT 1 FROM tags WHERE upstream = $1 AND repository = $2) AS yes`,
      [upstream, repository],
    );
    return r.rows[0]!.yes;
  }

  async repositories(): Promise<Where[]> {
    return (await this.db.run<Where>('SELECT DISTINCT upstream, repository FROM refs UNION SELECT DISTINCT upstream, repository FROM tags')).rows;
  }

  async localManifests(): Promise<Digest[]> {
    const r = await this.db.run<{ digest: Digest }>('SELECT DISTINCT r.digest FROM refs r JOIN blobs b ON b.digest = r.digest WHERE r.upstream = $1 AND b.media_type IS NOT NULL', [LOCAL_UPSTREAM]);
    return r.rows.map((x) => x.digest);
  }

  // TagIndex

  /** The tag's own content when known, else the most recently checked answer (as StoreIndex.getTag). */
  async getTag(upstream: string, repository: string, tag: string): Promise<TagRow | undefined> {
    const rows = await this.tags.rowsOf(upstream, repository, tag);
    return rows.find((r) => r.accept === '*') ?? [...rows].sort((a, b) => b.checkedAt - a.checkedAt)[0];
  }

  tagRows(upstream: string, repository: string, tag: string): Promise<TagRow[]> {
    return this.tags.rowsOf(upstream, repository, tag);
  }

  putTag(t: TagInput): Promise<void> {
    return this.tags.put(t);
  }

  listTags(upstream: string, repository: string): Promise<string[]> {
    return this.tags.list(upstream, repository);
  }

  allTags(): Promise<TagRow[]> {
    return this.tags.all();
  }

  deleteTag(upstream: string, repository: string, tag: string): Promise<void> {
    return this.tags.delete(upstream, repository, tag);
  }

  deleteTagsOf(upstream: string, repository: string, d: Digest): Promise<string[]> {
    return this.tags.deleteTagsOf(upstream, repository, d);
  }

  // ReferrerIndex

  referrersOf(upstream: string, repository: string, subject: Digest): Promise<ReferrerDescriptor[]> {
    return this.referrers.of(upstream, repository, subject);
  }

  referrerDigests(subject: Digest): Promise<Digest[]> {
    return this.referrers.digestsOf(subject);
  }

  putUpstreamReferrers(upstream: string, repository: string, subject: Digest, list: readonly ReferrerDescriptor[], checkedAt: number): Promise<void> {
    return this.referrers.putListed(upstream, repository, subject, list, checkedAt);
  }

  referrersCheckedAt(upstream: string, repository: string, subject: Digest): Promise<number | undefined> {
    return this.referrers.checkedAt(upstream, repository, subject);
  }

  forgetReferrer(d: Digest): Promise<void> {
    return this.referrers.forget(d);
  }

  // RegistryIndex

  /**
   * One round trip within probeTimeoutMs (readiness must not hang on a stuck server): the server answers,
   * and it takes writes (`transaction_read_only` is on for a standby or a read-only default).
   */
  async probe(): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new PgUnavailableError(`${this.db.server} did not answer within ${this.probeTimeoutMs} ms`)), this.probeTimeoutMs);
    });
    try {
      const r = await Promise.race([this.db.run<{ ro: string }>("SELECT current_setting('transaction_read_only') AS ro"), late]);
      if (r.rows[0]?.ro !== 'off') throw new PgUnavailableError(`${this.db.server} is read-only: the index cannot take writes there`);
    } finally {
      clearTimeout(timer);
    }
  }

  /** The status page's repository, tag and pin summaries, with this replica's access times written first. */
  async usage(n: number): Promise<CacheUsage> {
    await this.flushAccess();
    return pgUsage(this.db, n);
  }

  schemaVersion(): Promise<number> {
    return schemaVersionOf(this.db);
  }

  /** Writes the pending access times, then ends the pool (once; a second close does nothing). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await this.flushAccess();
    } finally {
      await this.db.end();
    }
  }
}
