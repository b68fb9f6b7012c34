import { appendFileSync } from 'node:fs';
import type Database from 'better-sqlite3';
import { LRUCache } from 'lru-cache';
import type { Digest } from '../oci/digest.ts';
import { UNNEGOTIATED } from '../oci/negotiation.ts';
import type { TagInput, TagRow } from './index-roles.ts';

export type { TagInput, TagRow } from './index-roles.ts';

const COLUMNS = 'upstream, repository, tag, accept, digest, media_type AS mediaType, size, checked_at AS checkedAt';

/**
 * The tags table (created by src/store/migrations.ts): one row per (upstream, repository, tag,
 * negotiation). Rows of a tag are read on every hot request, so they are kept for a second (a SQLite read
 * in WAL mode costs ~10 µs of locking); this process's writes update the cache, another process's
 * (`berth rm` beside a running server) show within 1 s. Changes are journalled (tags.jsonl) because tags
 * exist nowhere else: `berth index rebuild` gets them back from there.
 */
export class TagTable {
  private readonly rows = new LRUCache<string, TagRow[]>({ max: 20_000, ttl: 1000 });
  private readonly s;

  constructor(
    db: Database.Database,
    private readonly journal?: string,
  ) {
    const p = (sql: string) => db.prepare(sql);
    this.s = {
      rowsOf: p(`SELECT ${COLUMNS} FROM tags WHERE upstream = ? AND repository = ? AND tag = ?`),
      put: p(`INSERT INTO tags (upstream, repository, tag, accept, digest, media_type, size, checked_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
              ON CONFLICT(upstream, repository, tag, accept) DO UPDATE SET digest = excluded.digest, media_type = excluded.media_type,
              size = excluded.size, checked_at = excluded.checked_at`),
      list: p('SELECT DISTINCT tag FROM tags WHERE upstream = ? AND repository = ? ORDER BY tag'),
      all: p(`SELECT ${COLUMNS} FROM tags ORDER BY upstream, repository, tag, accept`),
      delete: p('DELETE FROM tags WHERE upstream = ? AND repository = ? AND tag = ?'),
      countOf: p('SELECT COUNT(*) AS n FROM tags WHERE digest = ?'),
    };
  }

  /** Every cached answer of one tag, one per negotiation. */
  rowsOf(upstream: string, repository: string, tag: string): TagRow[] {
    const key = `${upstream}\n${repository}\n${tag}`;
    const hit = this.rows.get(key);
    if (hit) return hit;
    const rows = this.s.rowsOf.all(upstream, repository, tag) as TagRow[];
    this.rows.set(key, rows);
    return rows;
  }

  put(input: TagInput): void {
    const t: TagRow = { ...input, accept: input.accept ?? UNNEGOTIATED };
    const before = this.journal ? this.rowsOf(t.upstream, t.repository, t.tag).find((r) => r.accept === t.accept) : undefined;
    this.s.put.run(t.upstream, t.repository, t.tag, t.accept, t.digest, t.mediaType, t.size, t.checkedAt);
    this.rows.delete(`${t.upstream}\n${t.repository}\n${t.tag}`);
    if (this.journal && before?.digest !== t.digest) {
      const { checkedAt: _c, ...entry } = t;
      appendFileSync(this.journal, `${JSON.stringify(entry)}\n`);
    }
  }

  list(upstream: string, repository: string): string[] {
    return (this.s.list.all(upstream, repository) as Array<{ tag: string }>).map((r) => r.tag);
  }

  all(): TagRow[] {
    return this.s.all.all() as TagRow[];
  }

  /**
   * Forgets a tag, every negotiation of it. Journalled as a tombstone (`deleted: true`), so a rebuilt
   * index does not bring back a tag that was deleted (a local DELETE, `berth rm`).
   */
  delete(upstream: string, repository: string, tag: string): void {
    const changes = this.s.delete.run(upstream, repository, tag).changes;
    this.rows.delete(`${upstream}\n${repository}\n${tag}`);
    if (this.journal && changes > 0) appendFileSync(this.journal, `${JSON.stringify({ upstream, repository, tag, deleted: true })}\n`);
  }

  /** How many tag rows point at `d`. */
  countOf(d: Digest): number {
    return (this.s.countOf.get(d) as { n: number }).n;
  }
}
