import type { Digest } from '../../oci/digest.ts';
import { UNNEGOTIATED } from '../../oci/negotiation.ts';
import type { TagInput, TagRow } from '../index-roles.ts';
import { type Queryable, safeInt } from './db.ts';

// Quoted aliases: PostgreSQL folds unquoted names to lower case. COLLATE "C" orders by bytes, as SQLite does,
// whatever collation the database was created with.
const COLUMNS = 'upstream, repository, tag, accept, digest, media_type AS "mediaType", size, checked_at AS "checkedAt"';

/**
 * The tags table in PostgreSQL (src/store/tag-table.ts is the SQLite one): one row per (upstream,
 * repository, tag, negotiation). No cache and no journal: every replica reads the rows as they are (a tag
 * revalidated by one is fresh for all), and the database is where the tags live, so there is nothing to
 * rebuild them from (back it up).
 */
export class PgTags {
  constructor(
    private readonly db: Queryable,
    /** For the reads a request waits on (PgDb.point: a shorter timeout). */
    private readonly point: Queryable = db,
  ) {}

  async rowsOf(upstream: string, repository: string, tag: string): Promise<TagRow[]> {
    const r = await this.point.run<TagRow>(`SELECT ${COLUMNS} FROM tags WHERE upstream = $1 AND repository = $2 AND tag = $3 ORDER BY accept COLLATE "C"`, [upstream, repository, tag]);
    return r.rows;
  }

  async put(input: TagInput): Promise<void> {
    const t: TagRow = { ...input, accept: input.accept ?? UNNEGOTIATED };
    await this.db.run(
      `INSERT INTO tags (upstream, repository, tag, accept, digest, media_type, size, checked_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
       ON CONFLICT (upstream, repository, tag, accept) DO UPDATE SET digest = excluded.digest, media_type = excluded.media_type,
       size = excluded.size, checked_at = excluded.checked_at`,
      [t.upstream, t.repository, t.tag, t.accept, t.digest, t.mediaType, safeInt('a tag’s size', t.size), safeInt('a tag’s checkedAt', t.checkedAt)],
    );
  }

  async list(upstream: string, repository: string): Promise<string[]> {
    const r = await this.db.run<{ tag: string }>('SELECT tag FROM tags WHERE upstream = $1 AND repository = $2 GROUP BY tag ORDER BY tag COLLATE "C"', [upstream, repository]);
    return r.rows.map((x) => x.tag);
  }

  async all(): Promise<TagRow[]> {
    const r = await this.db.run<TagRow>(`SELECT ${COLUMNS} FROM tags ORDER BY upstream COLLATE "C", repository COLLATE "C", tag COLLATE "C", accept COLLATE "C"`);
    return r.rows;
  }

  async delete(upstream: string, repository: string, tag: string): Promise<void> {
    await this.db.run('DELETE FROM tags WHERE upstream = $1 AND repository = $2 AND tag = $3', [upstream, repository, tag]);
  }

  /** Forgets the repository's tags of which any negotiation names `d`; returns them, sorted. */
  async deleteTagsOf(upstream: string, repository: string, d: Digest): Promise<string[]> {
    const r = await this.db.run<{ tag: string }>(
      `DELETE FROM tags WHERE upstream = $1 AND repository = $2
       AND tag IN (SELECT tag FROM tags WHERE upstream = $1 AND repository = $2 AND digest = $3) RETURNING tag`,
      [upstream, repository, d],
    );
    return [...new Set(r.rows.map((x) => x.tag))].sort();
  }
}
