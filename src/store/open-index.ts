import type { Config } from '../config/schema.ts';
import { type AsyncRegistryIndex, asyncIndex } from './async-index-roles.ts';
import type { StoragePaths } from './paths.ts';
import { CachingIndex } from './pg/caching-index.ts';
import { PgIndex } from './pg/pg-index.ts';
import { StoreIndex } from './store-index.ts';
import type { CacheUsage } from './usage.ts';

/** The index cannot be opened where index.driver says: `berth serve` ends with exit code 2 and this message. */
export class IndexUnavailableError extends Error {
  override name = 'IndexUnavailableError';
  readonly exitCode = 2;
}

/** The index of index.driver, and what the status page sums from it. */
export interface OpenedIndex {
  index: AsyncRegistryIndex;
  /** The status page's repository, tag and pin summaries. */
  usage(n: number): Promise<CacheUsage>;
}

/** A connection to PostgreSQL that is not up by then fails the request (a 503) instead of holding it. */
const PG_CONNECT_TIMEOUT_MS = 3000;

/**
 * Opens the index: SQLite (`berth.db` under storage.path) behind the asynchronous roles, or PostgreSQL
 * (index.postgres) behind a per-replica cache, whose open connects and migrates. A PostgreSQL that cannot be reached or refuses the
 * login is an IndexUnavailableError naming it and where it is, never the password.
 */
export async function openIndex(config: Readonly<Config['index']>, paths: StoragePaths): Promise<OpenedIndex> {
  if (config.driver === 'postgres' && config.postgres) {
    const { url, poolSize } = config.postgres;
    let pg: PgIndex;
    try {
      pg = await PgIndex.open({ url, poolSize, connectTimeoutMs: PG_CONNECT_TIMEOUT_MS });
    } catch (err) {
      throw new IndexUnavailableError(`${(err as Error).message} (index.driver: postgres)`, { cause: err });
    }
    // The hot rows from this replica's memory (caching-index.ts), the rest from the database.
    return { index: new CachingIndex(pg), usage: (n) => pg.usage(n) };
  }
  const sqlite = new StoreIndex(paths.database, paths.tagJournal);
  return { index: asyncIndex(sqlite), usage: async (n) => sqlite.usage(n) };
}
