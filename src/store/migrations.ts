import type Database from 'better-sqlite3';

/**
 * Schema changes of an existing berth.db, in order. `PRAGMA user_version` says how many have been applied;
 * each step runs in its own transaction together with the version bump, so a crash leaves either the old
 * schema or the new one. Steps are idempotent (they look at the schema, not only at the version), so an
 * index written by a berth that had a step under another number still comes out right.
 */
const STEPS: Array<{ what: string; run: (db: Database.Database) => void }> = [
  {
    what: 'tags keyed by (upstream, repository, tag, negotiation)',
    run(db) {
      const columns = db.prepare("SELECT name FROM pragma_table_info('tags')").all() as Array<{ name: string }>;
      if (columns.some((c) => c.name === 'accept')) return;
      db.exec(`
        CREATE TABLE tags_negotiated (
          upstream TEXT NOT NULL, repository TEXT NOT NULL, tag TEXT NOT NULL,
          accept TEXT NOT NULL DEFAULT '*',
          digest TEXT NOT NULL, media_type TEXT NOT NULL, size INTEGER NOT NULL, checked_at INTEGER NOT NULL,
          PRIMARY KEY (upstream, repository, tag, accept)
        );
      `);
      if (columns.length > 0) {
        // Rows of the old table were negotiated by whichever client came last: keep them as unnegotiated
        // (served offline as before) but checked at 0, so that online the first client revalidates them.
        db.exec(`INSERT INTO tags_negotiated (upstream, repository, tag, accept, digest, media_type, size, checked_at)
                 SELECT upstream, repository, tag, '*', digest, media_type, size, 0 FROM tags;
                 DROP TABLE tags;`);
      }
      db.exec('ALTER TABLE tags_negotiated RENAME TO tags; CREATE INDEX IF NOT EXISTS tags_digest ON tags(digest);');
    },
  },
  {
    what: 'referrers: manifests with a subject, by (upstream, repository, subject)',
    run(db) {
      // One row per (repository, subject, referrer): a referrer pulled or pushed into two repositories is
      // listed in each. The columns are what a referrers API descriptor carries, so a listing never reads
      // a manifest file. `source` says where the row came from: 'manifest' (recordManifest, the manifest
      // itself is stored) or 'upstream' (a descriptor from the upstream's answer, possibly not fetched).
      db.exec(`
        CREATE TABLE IF NOT EXISTS referrers (
          upstream TEXT NOT NULL, repository TEXT NOT NULL, subject TEXT NOT NULL, digest TEXT NOT NULL,
          media_type TEXT NOT NULL, artifact_type TEXT, size INTEGER NOT NULL, annotations TEXT,
          source TEXT NOT NULL DEFAULT 'manifest',
          PRIMARY KEY (upstream, repository, subject, digest)
        );
        CREATE INDEX IF NOT EXISTS referrers_subject ON referrers(subject);
        CREATE INDEX IF NOT EXISTS referrers_digest ON referrers(digest);
        -- when the upstream's list of referrers of a subject was last fetched (cached with tagTtl)
        CREATE TABLE IF NOT EXISTS referrer_lists (
          upstream TEXT NOT NULL, repository TEXT NOT NULL, subject TEXT NOT NULL, checked_at INTEGER NOT NULL,
          PRIMARY KEY (upstream, repository, subject)
        );
      `);
    },
  },
  {
    what: 'eStargz conversions: converted layers, converted images, learned start-up sets',
    run(db) {
      // Keyed by what was converted and how (src/registry/estargz/options.ts): the same source layer with
      // the same options always gives the same bytes, so a row stands for its blob wherever it is used.
      db.exec(`
        CREATE TABLE IF NOT EXISTS estargz_layers (
          source TEXT NOT NULL, options TEXT NOT NULL, digest TEXT NOT NULL, size INTEGER NOT NULL,
          diff_id TEXT NOT NULL, toc_digest TEXT NOT NULL, uncompressed_size INTEGER NOT NULL,
          PRIMARY KEY (source, options)
        );
        CREATE TABLE IF NOT EXISTS estargz_images (
          source TEXT NOT NULL, options TEXT NOT NULL, digest TEXT NOT NULL,
          upstream TEXT NOT NULL, repository TEXT NOT NULL, created_at INTEGER NOT NULL,
          PRIMARY KEY (source, options)
        );
        CREATE INDEX IF NOT EXISTS estargz_images_digest ON estargz_images(digest);
        CREATE INDEX IF NOT EXISTS estargz_layers_digest ON estargz_layers(digest);
        -- files: JSON [{layer, name}] in the order first read
        CREATE TABLE IF NOT EXISTS estargz_startup (
          source TEXT PRIMARY KEY, files TEXT NOT NULL, bytes INTEGER NOT NULL, pulls INTEGER NOT NULL,
          learned_at INTEGER, updated_at INTEGER NOT NULL
        );
      `);
    },
  },
];

export const SCHEMA_VERSION = STEPS.length;

/** Brings the schema up to SCHEMA_VERSION. */
export function migrate(db: Database.Database): void {
  const current = Number(db.pragma('user_version', { simple: true }));
  for (let v = current; v < STEPS.length; v++) {
    db.transaction(() => {
      STEPS[v]!.run(db);
      db.pragma(`user_version = ${v + 1}`);
    })();
  }
}
