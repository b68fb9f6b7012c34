import type { Digest } from '../../oci/digest.ts';
import type { ReferrerDescriptor } from '../../oci/referrers.ts';
import type { ManifestRecord } from '../index-roles.ts';
import { type PgDb, type Queryable, safeInt } from './db.ts';
import { LOCK_CLASS } from './migrations.ts';

interface Row {
  digest: Digest;
  mediaType: string;
  size: number;
  artifactType: string | null;
  annotations: string | null;
}

const annotationsText = (a: Record<string, string> | undefined) => (a && Object.keys(a).length > 0 ? JSON.stringify(a) : null);

/**
 * The referrers and referrer_lists tables in PostgreSQL (src/store/referrer-table.ts is the SQLite one, and
 * says what `source` means): 'manifest' rows are written by recordManifest and never replaced by a list,
 * 'upstream' rows are the upstream's last list of a subject's referrers.
 */
export class PgReferrers {
  constructor(private readonly db: PgDb) {}

  /** Inside recordManifest's transaction: the manifest is a referrer of its subject in its repository. */
  async recordManifest(q: Queryable, m: ManifestRecord): Promise<void> {
    if (!m.subject) return;
    await q.run(
      `INSERT INTO referrers (upstream, repository, subject, digest, media_type, artifact_type, size, annotations, source)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'manifest')
       ON CONFLICT (upstream, repository, subject, digest) DO UPDATE SET media_type = excluded.media_type,
       artifact_type = excluded.artifact_type, size = excluded.size, annotations = excluded.annotations, source = 'manifest'`,
      [m.upstream, m.repository, m.subject, m.digest, m.mediaType, m.artifactType ?? null, m.size, annotationsText(m.annotations)],
    );
  }

  async of(upstream: string, repository: string, subject: Digest): Promise<ReferrerDescriptor[]> {
    const r = await this.db.run<Row>(
      `SELECT digest, media_type AS "mediaType", size, artifact_type AS "artifactType", annotations FROM referrers
       WHERE upstream = $1 AND repository = $2 AND subject = $3 ORDER BY digest COLLATE "C"`,
      [upstream, repository, subject],
    );
    return r.rows.map((x) => ({
      mediaType: x.mediaType,
      digest: x.digest,
      size: x.size,
      ...(x.artifactType ? { artifactType: x.artifactType } : {}),
      ...(x.annotations ? { annotations: JSON.parse(x.annotations) as Record<string, string> } : {}),
    }));
  }

  async digestsOf(subject: Digest): Promise<Digest[]> {
    const r = await this.db.run<{ digest: Digest }>('SELECT DISTINCT digest FROM referrers WHERE subject = $1 ORDER BY digest', [subject]);
    return r.rows.map((x) => x.digest);
  }

  /**
   * Replaces the upstream's list. Two replicas replacing the same list at once queue on an advisory lock of
   * that key: without it, each one's DELETE would miss the other's fresh rows and the lists would merge.
   */
  async putListed(upstream: string, repository: string, subject: Digest, list: readonly ReferrerDescriptor[], checkedAt: number): Promise<void> {
    safeInt('checkedAt', checkedAt);
    const seen = new Set<string>();
    const rows = list.filter((r) => !seen.has(r.digest) && seen.add(r.digest)).sort((a, b) => (a.digest < b.digest ? -1 : a.digest > b.digest ? 1 : 0));
    for (const r of rows) safeInt(`referrer ${r.digest}: size`, r.size);
    await this.db.tx(async (q) => {
      await q.run('SELECT pg_advisory_xact_lock($1, hashtext($2))', [LOCK_CLASS.referrerList, `${upstream}\n${repository}\n${subject}`]);
      await q.run("DELETE FROM referrers WHERE upstream = $1 AND repository = $2 AND subject = $3 AND source = 'upstream'", [upstream, repository, subject]);
      if (rows.length > 0) {
        await q.run(
          `INSERT INTO referrers (upstream, repository, subject, digest, media_type, artifact_type, size, annotations, source)
           SELECT $1, $2, $3, d, mt, at, sz, an, 'upstream' FROM unnest($4::text[], $5::text[], $6::text[], $7::bigint[], $8::text[]) AS u(d, mt, at, sz, an)
           ON CONFLICT DO NOTHING`,
          [
            upstream,
            repository,
            subject,
            rows.map((r) => r.digest),
            rows.map((r) => r.mediaType),
            rows.map((r) => r.artifactType ?? null),
            rows.map((r) => r.size),
            rows.map((r) => annotationsText(r.annotations)),
          ],
        );
      }
      await q.run(
        `INSERT INTO referrer_lists (upstream, repository, subject, checked_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (upstream, repository, subject) DO UPDATE SET checked_at = excluded.checked_at`,
        [upstream, repository, subject, checkedAt],
      );
    });
  }

  async checkedAt(upstream: string, repository: string, subject: Digest): Promise<number | undefined> {
    const r = await this.db.run<{ checkedAt: number }>('SELECT checked_at AS "checkedAt" FROM referrer_lists WHERE upstream = $1 AND repository = $2 AND subject = $3', [
      upstream,
      repository,
      subject,
    ]);
    return r.rows[0]?.checkedAt;
  }

  /** Inside deleteRef's transaction: the stored manifest `d` left this repository, it is no referrer there any more. */
  async forgetIn(q: Queryable, upstream: string, repository: string, d: Digest): Promise<void> {
    await q.run("DELETE FROM referrers WHERE upstream = $1 AND repository = $2 AND digest = $3 AND source = 'manifest'", [upstream, repository, d]);
  }

  async forget(d: Digest): Promise<void> {
    await this.db.tx(async (q) => {
      await q.run('DELETE FROM referrers WHERE digest = $1 OR subject = $1', [d]);
      await q.run('DELETE FROM referrer_lists WHERE subject = $1', [d]);
    });
  }
}
