import type { PgDb } from './db.ts';

/**
 * Advisory lock keys of berth in a database (two-int form: the class of lock, then the object), so they
 * never meet the one-bigint keys of some other program sharing the database. Locks are per database.
 */
export const LOCK_CLASS = {
  /** The one migration lock: a replica migrates only while holding it. */
  migrate: 0x62_65_72_01,
  /** Replacing what a pin reference holds (object: hashtext(reference)). */
  pin: 0x62_65_72_02,
  /** Replacing an upstream's list of referrers of a subject (object: hashtext of the key). */
  referrerList: 0x62_65_72_03,
} as const;

/**
 * The tables of src/store/store-index.ts, tag-table.ts, referrer-table.ts and pins.ts, in PostgreSQL: the
 * same names, columns, keys and meaning (sizes and times are BIGINT; annotations stay a JSON text, served
 * back as written). The steps mirror the SQLite schema's history (tags keyed by negotiation from the start,
 * then referrers); PostgreSQL's version count is its own, in `schema_version`. Steps are idempotent
 * (IF NOT EXISTS), so a database someone prepared by hand still comes out right.
 */
const STEPS: Array<{ what: string; sql: string }> = [
  {
    what: 'blobs, references, children, pins and tags keyed by (upstream, repository, tag, negotiation)',
    sql: `
      CREATE TABLE IF NOT EXISTS blobs (
        digest TEXT PRIMARY KEY, size BIGINT NOT NULL, media_type TEXT, created_at BIGINT NOT NULL, accessed_at BIGINT NOT NULL
      );
      CREATE INDEX IF NOT EXISTS blobs_accessed ON blobs (accessed_at);
      CREATE TABLE IF NOT EXISTS refs (
        digest TEXT NOT NULL, upstream TEXT NOT NULL, repository TEXT NOT NULL, PRIMARY KEY (digest, upstream, repository)
      );
      CREATE INDEX IF NOT EXISTS refs_repository ON refs (upstream, repository);
      CREATE TABLE IF NOT EXISTS children (
        parent TEXT NOT NULL, child TEXT NOT NULL, size BIGINT NOT NULL, media_type TEXT NOT NULL, PRIMARY KEY (parent, child)
      );
      CREATE INDEX IF NOT EXISTS children_child ON children (child);
      CREATE TABLE IF NOT EXISTS pins (digest TEXT NOT NULL, reference TEXT NOT NULL, PRIMARY KEY (digest, reference));
      CREATE INDEX IF NOT EXISTS pins_reference ON pins (reference);
      CREATE TABLE IF NOT EXISTS tags (
        upstream TEXT NOT NULL, repository TEXT NOT NULL, tag TEXT NOT NULL, accept TEXT NOT NULL DEFAULT '*',
        digest TEXT NOT NULL, media_type TEXT NOT NULL, size BIGINT NOT NULL, checked_at BIGINT NOT NULL,
        PRIMARY KEY (upstream, repository, tag, accept)
      );
      CREATE INDEX IF NOT EXISTS tags_digest ON tags (digest);`,
  },
  {
    what: 'referrers: manifests with a subject, by (upstream, repository, subject), and when an upstream list was fetched',
    sql: `
      CREATE TABLE IF NOT EXISTS referrers (
        upstream TEXT NOT NULL, repository TEXT NOT NULL, subject TEXT NOT NULL, digest TEXT NOT NULL,
        media_type TEXT NOT NULL, artifact_type TEXT, size BIGINT NOT NULL, annotations TEXT,
        source TEXT NOT NULL DEFAULT 'manifest',
        PRIMARY KEY (upstream, repository, subject, digest)
      );
      CREATE INDEX IF NOT EXISTS referrers_subject ON referrers (subject);
      CREATE INDEX IF NOT EXISTS referrers_digest ON referrers (digest);
      CREATE TABLE IF NOT EXISTS referrer_lists (
        upstream TEXT NOT NULL, repository TEXT NOT NULL, subject TEXT NOT NULL, checked_at BIGINT NOT NULL,
        PRIMARY KEY (upstream, repository, subject)
      );`,
  },
  {
    what: 'eStargz conversions: layers and images by (source, options), and learned start-up sets',
    sql: `
      CREATE TABLE IF NOT EXISTS estargz_layers (
        source TEXT NOT NULL, options TEXT NOT NULL, digest TEXT NOT NULL, size BIGINT NOT NULL,
        diff_id TEXT NOT NULL, toc_digest TEXT NOT NULL, uncompressed_size BIGINT NOT NULL,
        PRIMARY KEY (source, options)
      );
      CREATE TABLE IF NOT EXISTS estargz_images (
        source TEXT NOT NULL, options TEXT NOT NULL, digest TEXT NOT NULL,
        upstream TEXT NOT NULL, repository TEXT NOT NULL, created_at BIGINT NOT NULL,
        PRIMARY KEY (source, options)
      );
      CREATE INDEX IF NOT EXISTS estargz_images_digest ON estargz_images (digest);
      CREATE INDEX IF NOT EXISTS estargz_layers_digest ON estargz_layers (digest);
      CREATE TABLE IF NOT EXISTS estargz_startup (
        source TEXT PRIMARY KEY, files TEXT NOT NULL, bytes BIGINT NOT NULL, pulls INTEGER NOT NULL,
        learned_at BIGINT, updated_at BIGINT NOT NULL
      );`,
  },
  {
    what: 'cluster leases: one fill per (upstream, digest) across replicas, and named leases (the quota runner)',
    sql: `
      CREATE TABLE IF NOT EXISTS fill_leases (
        upstream TEXT NOT NULL, digest TEXT NOT NULL, owner TEXT NOT NULL, url TEXT NOT NULL,
        taken_at TIMESTAMPTZ NOT NULL, heartbeat_at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (upstream, digest)
      );
      CREATE INDEX IF NOT EXISTS fill_leases_owner ON fill_leases (owner);
      CREATE TABLE IF NOT EXISTS leases (
        name TEXT PRIMARY KEY, owner TEXT NOT NULL, url TEXT NOT NULL,
        taken_at TIMESTAMPTZ NOT NULL, heartbeat_at TIMESTAMPTZ NOT NULL
      );`,
  },
];

export const PG_SCHEMA_VERSION = STEPS.length;

/** One row: the number of steps applied. */
const VERSION_TABLE = 'CREATE TABLE IF NOT EXISTS schema_version (one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one), version INTEGER NOT NULL)';

/**
 * Brings the schema up to `upTo` (PG_SCHEMA_VERSION; tests stop earlier) in one transaction under the
 * migration lock: replicas starting at once queue on the lock, the first migrates, the others find the
 * version already there and apply nothing. A crash or an error leaves the schema as it was. A database at a
 * newer version than this berth knows is left alone: the steps only add, so an older replica still works
 * during a rolling upgrade. Returns the version found and the version left.
 *
 * The pool's statement timeout (queryTimeoutMs, 30 s) bounds each step and a replica's wait for the lock
 * alike: a replica that waits longer fails to start with that error and is restarted. Steps are DDL on small
 * tables today; a step that rewrites a large table must lift the timeout for itself (SET LOCAL).
 */
export async function migrate(db: PgDb, upTo = PG_SCHEMA_VERSION): Promise<{ from: number; to: number }> {
  return db.tx(async (q) => {
    await q.run('SELECT pg_advisory_xact_lock($1, 0)', [LOCK_CLASS.migrate]);
    await q.run(VERSION_TABLE);
    const from = (await q.run<{ version: number }>('SELECT version FROM schema_version')).rows[0]?.version ?? 0;
    if (from >= upTo) return { from, to: from };
    for (let v = from; v < upTo; v++) await q.run(STEPS[v]!.sql);
    await q.run('INSERT INTO schema_version (one, version) VALUES (TRUE, $1) ON CONFLICT (one) DO UPDATE SET version = excluded.version', [upTo]);
    return { from, to: upTo };
  });
}

/** The version in `schema_version` (a migrated database has the table). */
export async function schemaVersionOf(db: PgDb): Promise<number> {
  return (await db.run<{ version: number }>('SELECT version FROM schema_version')).rows[0]?.version ?? 0;
}
