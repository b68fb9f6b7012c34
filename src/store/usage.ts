import type Database from 'better-sqlite3';
import type { Digest } from '../oci/digest.ts';

/** What one repository's cached blobs take (a blob two repositories share counts in both). */
export interface RepositoryUsage {
  upstream: string;
  repository: string;
  bytes: number;
  blobs: number;
  /** Last read of any of its blobs (ms since the epoch). */
  lastUsed: number;
}

/** A cached tag and the size of its image (the manifest, its children and theirs). */
export interface TagUsage {
  upstream: string;
  repository: string;
  tag: string;
  digest: Digest;
  /** The image's size as its manifests declare it (its layers need not all be cached). */
  bytes: number;
  /** Last read of its manifest. */
  lastUsed: number;
}

export interface PinUsage {
  reference: string;
  blobs: number;
  /** Cached bytes of the pinned blobs. */
  bytes: number;
}

export interface CacheUsage {
  largestRepositories: RepositoryUsage[];
  recentRepositories: RepositoryUsage[];
  largestTags: TagUsage[];
  recentTags: TagUsage[];
  pins: PinUsage[];
}

const top = <T>(rows: T[], n: number, key: (r: T) => number): T[] => [...rows].sort((a, b) => key(b) - key(a)).slice(0, n);

/**
 * Read-only summaries of the index for the status page (src/http/status). Every repository and tag is
 * summed in SQL, then sorted here: fine for the thousands of repositories of a site's cache, and the caller
 * caches the answer for a moment rather than asking on every poll.
 */
export class UsageQueries {
  private readonly s;

  constructor(db: Database.Database) {
    const p = (sql: string) => db.prepare(sql);
    this.s = {
      repositories: p(`SELECT r.upstream, r.repository, SUM(b.size) AS bytes, COUNT(*) AS blobs, MAX(b.accessed_at) AS lastUsed
                       FROM refs r JOIN blobs b ON b.digest = r.digest GROUP BY r.upstream, r.repository`),
      // A tag's image as its manifests declare it: the manifest, what it names, and (for an index) what the
      // child manifests name. Declared, not cached, bytes: summing the cached closure of every tag (a
      // recursive query) took ten times as long (1.4 s for 5,000 tags) on the event loop.
      tags: p(`SELECT t.upstream, t.repository, t.tag, t.digest,
                      t.size + COALESCE((SELECT SUM(c.size) + COALESCE(SUM((SELECT SUM(g.size) FROM children g WHERE g.parent = c.child)), 0)
                                         FROM children c WHERE c.parent = t.digest), 0) AS bytes,
                      COALESCE(b.accessed_at, 0) AS lastUsed
               FROM tags t LEFT JOIN blobs b ON b.digest = t.digest`),
      pins: p(`SELECT p.reference, COUNT(b.digest) AS blobs, COALESCE(SUM(b.size), 0) AS bytes
               FROM pins p LEFT JOIN blobs b ON b.digest = p.digest GROUP BY p.reference ORDER BY p.reference`),
    };
  }

  /**
   * The `n` largest and most recently used repositories and tags, and every pin. `pending` holds access
   * times not yet written to the index (StoreIndex.touch): they count, so a pull shows at once.
   */
  run(n: number, pending: ReadonlyMap<string, number>, refsOf: (d: Digest) => Array<{ upstream: string; repository: string }>): CacheUsage {
    return summariseUsage(
      {
        repositories: this.s.repositories.all() as RepositoryUsage[],
        tags: this.s.tags.all() as TagUsage[],
        pins: this.s.pins.all() as PinUsage[],
      },
      n,
      pending,
      refsOf,
    );
  }
}

/**
 * The status page's tables from the index's sums (one row per repository, per tag negotiation, per pin), with
 * access times not yet written (`pending`) counted, so a pull shows at once. SQLite and PostgreSQL share it.
 */
export function summariseUsage(
  rows: { repositories: RepositoryUsage[]; tags: TagUsage[]; pins: PinUsage[] },
  n: number,
  pending: ReadonlyMap<string, number> = new Map(),
  refsOf: (d: Digest) => Array<{ upstream: string; repository: string }> = () => [],
): CacheUsage {
  const repos = rows.repositories;
  const byRepo = new Map(repos.map((r) => [`${r.upstream} ${r.repository}`, r]));
  for (const [d, t] of pending) {
    for (const ref of refsOf(d as Digest)) {
      const r = byRepo.get(`${ref.upstream} ${ref.repository}`);
      if (r && r.lastUsed < t) r.lastUsed = t;
    }
  }
  // One row per tag: its negotiations (one per accept set) may name different manifests; the largest shows.
  const tags = new Map<string, TagUsage>();
  for (const row of rows.tags) {
    const t = pending.get(row.digest);
    if (t !== undefined && row.lastUsed < t) row.lastUsed = t;
    const k = `${row.upstream} ${row.repository} ${row.tag}`;
    const seen = tags.get(k);
    if (!seen || row.bytes > seen.bytes) tags.set(k, { ...row, lastUsed: Math.max(row.lastUsed, seen?.lastUsed ?? 0) });
    else seen.lastUsed = Math.max(seen.lastUsed, row.lastUsed);
  }
  const tagList = [...tags.values()];
  return {
    largestRepositories: top(repos, n, (r) => r.bytes),
    recentRepositories: top(repos, n, (r) => r.lastUsed),
    largestTags: top(tagList, n, (t) => t.bytes),
    recentTags: top(tagList, n, (t) => t.lastUsed),
    pins: rows.pins,
  };
}
