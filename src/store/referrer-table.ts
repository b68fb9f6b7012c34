import type Database from 'better-sqlite3';
import type { Digest } from '../oci/digest.ts';
import type { ReferrerDescriptor } from '../oci/referrers.ts';
import type { ManifestRecord } from './index-roles.ts';

interface Row {
  digest: Digest;
  mediaType: string;
  size: number;
  artifactType: string | null;
  annotations: string | null;
}

/**
 * The referrers and referrer_lists tables (created by src/store/migrations.ts), for StoreIndex. A row's
 * `source` is 'manifest' when the referrer itself is stored (recordManifest wrote it; an upstream's list
 * never replaces it) or 'upstream' when it only came in the upstream's last list of the subject's
 * referrers (replaced by the next list).
 */
export class ReferrerTable {
  private readonly s;

  constructor(private readonly db: Database.Database) {
    const p = (sql: string) => db.prepare(sql);
    this.s = {
      putManifest: p(`INSERT INTO referrers (upstream, repository, subject, digest, media_type, artifact_type, size, annotations, source)
                      VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'manifest')
                      ON CONFLICT(upstream, repository, subject, digest) DO UPDATE SET media_type = excluded.media_type,
                      artifact_type = excluded.artifact_type, size = excluded.size, annotations = excluded.annotations, source = 'manifest'`),
      putListed: p(`INSERT OR IGNORE INTO referrers (upstream, repository, subject, digest, media_type, artifact_type, size, annotations, source)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'upstream')`),
      dropListed: p("DELETE FROM referrers WHERE upstream = ? AND repository = ? AND subject = ? AND source = 'upstream'"),
      of: p(`SELECT digest, media_type AS mediaType, size, artifact_type AS artifactType, annotations FROM referrers
             WHERE upstream = ? AND repository = ? AND subject = ? ORDER BY digest`),
      digestsOf: p('SELECT DISTINCT digest FROM referrers WHERE subject = ?'),
      checked: p(
        'INSERT INTO referrer_lists (upstream, repository, subject, checked_at) VALUES (?, ?, ?, ?) ON CONFLICT(upstream, repository, subject) DO UPDATE SET checked_at = excluded.checked_at',
      ),
      checkedAt: p('SELECT checked_at AS checkedAt FROM referrer_lists WHERE upstream = ? AND repository = ? AND subject = ?'),
      forget: p('DELETE FROM referrers WHERE digest = ? OR subject = ?'),
      forgetLists: p('DELETE FROM referrer_lists WHERE subject = ?'),
      forgetIn: p("DELETE FROM referrers WHERE upstream = ? AND repository = ? AND digest = ? AND source = 'manifest'"),
    };
  }

  /** Inside recordManifest's transaction: the manifest is a referrer of its subject in its repository. */
  recordManifest(m: ManifestRecord): void {
    if (!m.subject) return;
    const annotations = m.annotations && Object.keys(m.annotations).length > 0 ? JSON.stringify(m.annotations) : null;
    this.s.putManifest.run(m.upstream, m.repository, m.subject, m.digest, m.mediaType, m.artifactType ?? null, m.size, annotations);
  }

  of(upstream: string, repository: string, subject: Digest): ReferrerDescriptor[] {
    return (this.s.of.all(upstream, repository, subject) as Row[]).map((r) => ({
      mediaType: r.mediaType,
      digest: r.digest,
      size: r.size,
      ...(r.artifactType ? { artifactType: r.artifactType } : {}),
      ...(r.annotations ? { annotations: JSON.parse(r.annotations) as Record<string, string> } : {}),
    }));
  }

  digestsOf(subject: Digest): Digest[] {
    return (this.s.digestsOf.all(subject) as Array<{ digest: Digest }>).map((r) => r.digest);
  }

  putListed(upstream: string, repository: string, subject: Digest, list: readonly ReferrerDescriptor[], checkedAt: number): void {
    this.db.transaction(() => {
      this.s.dropListed.run(upstream, repository, subject);
      for (const r of list) {
        const annotations = r.annotations && Object.keys(r.annotations).length > 0 ? JSON.stringify(r.annotations) : null;
        this.s.putListed.run(upstream, repository, subject, r.digest, r.mediaType, r.artifactType ?? null, r.size, annotations);
      }
      this.s.checked.run(upstream, repository, subject, checkedAt);
    })();
  }

  checkedAt(upstream: string, repository: string, subject: Digest): number | undefined {
    return (this.s.checkedAt.get(upstream, repository, subject) as { checkedAt: number } | undefined)?.checkedAt;
  }

  /** The stored manifest `d` left this repository (a DELETE, gc): it is no referrer there any more. */
  forgetIn(upstream: string, repository: string, d: Digest): void {
    this.s.forgetIn.run(upstream, repository, d);
  }

  forget(d: Digest): void {
    this.db.transaction(() => {
      this.s.forget.run(d, d);
      this.s.forgetLists.run(d);
    })();
  }
}
