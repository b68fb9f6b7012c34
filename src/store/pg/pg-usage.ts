import { type CacheUsage, type PinUsage, type RepositoryUsage, summariseUsage, type TagUsage } from '../usage.ts';
import type { Queryable } from './db.ts';

/**
 * The status page's summaries (src/store/usage.ts) from PostgreSQL: the same sums as SQLite's, in three
 * statements. SUM of BIGINT is NUMERIC there: cast back, so the int8 parser makes each a number. The caller
 * writes its pending access times first, so a pull on this replica shows at once.
 */
export async function pgUsage(db: Queryable, n: number): Promise<CacheUsage> {
  const [repositories, tags, pins] = await Promise.all([
    db.run<RepositoryUsage>(
      `SELECT r.upstream, r.repository, SUM(b.size)::bigint AS bytes, COUNT(*)::bigint AS blobs, MAX(b.accessed_at) AS "lastUsed"
       FROM refs r JOIN blobs b ON b.digest = r.digest GROUP BY r.upstream, r.repository`,
    ),
    // A tag's image as its manifests declare it: the manifest, what it names, and (for an index) what the child manifests name.
    db.run<TagUsage>(
      `SELECT t.upstream, t.repository, t.tag, t.digest,
              (t.size + COALESCE((SELECT SUM(c.size) + COALESCE(SUM((SELECT SUM(g.size) FROM children g WHERE g.parent = c.child)), 0)
                                  FROM children c WHERE c.parent = t.digest), 0))::bigint AS bytes,
              COALESCE(b.accessed_at, 0) AS "lastUsed"
       FROM tags t LEFT JOIN blobs b ON b.digest = t.digest`,
    ),
    db.run<PinUsage>(
      `SELECT p.reference, COUNT(b.digest)::bigint AS blobs, COALESCE(SUM(b.size), 0)::bigint AS bytes
       FROM pins p LEFT JOIN blobs b ON b.digest = p.digest GROUP BY p.reference ORDER BY p.reference COLLATE "C"`,
    ),
  ]);
  return summariseUsage({ repositories: repositories.rows, tags: tags.rows, pins: pins.rows }, n);
}
