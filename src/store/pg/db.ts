import pg from 'pg';

/** How the PostgreSQL index connects (config `index.postgres`). */
export interface PgIndexOptions {
  /** `postgres://user:password@host:5432/database` (pg also reads the standard PG* variables for what it leaves out). */
  url: string;
  /** Connections this replica keeps at most. */
  poolSize?: number;
  /** A connection that is not ready by then fails (a dead or black-holed server), so a request never hangs on it. */
  connectTimeoutMs?: number;
  /** A statement that has not answered by then fails: the server cancels it, and the client gives up a second later. */
  queryTimeoutMs?: number;
  /**
   * The point reads a request waits on (`PgDb.point`) give up sooner (5 s): a hung server (SIGSTOP, a stuck
   * lock) would otherwise hold every miss for the full queryTimeoutMs before its 503.
   */
  pointTimeoutMs?: number;
}

/** What one statement needs: run it, get the rows and how many it changed. Parameters are always bound ($1…), never spliced. */
export interface Queryable {
  run<T = Record<string, unknown>>(sql: string, params?: readonly unknown[]): Promise<{ rows: T[]; rowCount: number }>;
}

/**
 * PostgreSQL could not be reached or dropped the connection (not an SQL error): the message names the server
 * (host, port, database, user; never the password). `unavailable` lets callers answer 503 rather than 500.
 */
export class PgUnavailableError extends Error {
  readonly unavailable = true;
}

const INT8 = 20;

/**
 * BIGINT columns (sizes, times in ms) come back as strings from pg; they are numbers in berth. Every value
 * berth writes is a safe integer (the writes check), so a value beyond 2^53 was written by someone else and
 * is refused rather than rounded. pg turns a throw here into the query's error.
 */
function parseInt8(text: string): number {
  const n = Number(text);
  if (!Number.isSafeInteger(n)) throw new RangeError(`PostgreSQL returned the BIGINT ${text}: beyond 2^53, not exact as a JavaScript number`);
  return n;
}

const types: pg.CustomTypesConfig = {
  getTypeParser: ((oid: number, format?: string) => (oid === INT8 && format !== 'binary' ? parseInt8 : pg.types.getTypeParser(oid, format as 'text'))) as pg.CustomTypesConfig['getTypeParser'],
};

/** Refuses what a BIGINT column must not get: a fraction, NaN, or an integer beyond 2^53 (already rounded in JavaScript). */
export function safeInt(what: string, n: unknown): number {
  if (typeof n !== 'number' || !Number.isSafeInteger(n)) throw new RangeError(`${what} must be an integer below 2^53, not ${String(n)}`);
  return n;
}

/** "PostgreSQL at 127.0.0.1:5432 (database berth, user berth)": where the index is, for errors. Never the password. */
export function describeServer(url: string): string {
  let c: pg.Client;
  try {
    // Resolves what the URL leaves out from PG* variables and pg's defaults, as connecting would; connects nothing.
    c = new pg.Client({ connectionString: url });
  } catch {
    // The parser's message may quote the URL, password and all: say only that it is not one.
    throw new Error('index.postgres.url is not a PostgreSQL connection URL (postgres://user:password@host:5432/database)');
  }
  return `PostgreSQL at ${c.host}:${c.port} (database ${c.database}, user ${c.user})`;
}

/** Errors of the connection rather than of the statement: a Node socket error, SQLSTATE class 08, the server shutting down. */
export function isConnectionError(err: unknown): boolean {
  const e = err as { code?: unknown; message?: unknown };
  const code = typeof e?.code === 'string' ? e.code : '';
  if (/^E[A-Z]+$/.test(code)) return true; // ECONNREFUSED, ECONNRESET, ETIMEDOUT, EHOSTUNREACH, ENOTFOUND, EPIPE
  if (code.startsWith('08') || ['57P01', '57P02', '57P03', '53300'].includes(code)) return true;
  return /Connection terminated|timeout exceeded when trying to connect|Query read timeout|connection error|not queryable/i.test(String(e?.message ?? ''));
}

/** Deadlock and serialization failures: the transaction did nothing and may simply run again. */
const RETRYABLE = new Set(['40P01', '40001']);

/**
 * The pool of one PgIndex. A pool without an 'error' listener would crash the process when PostgreSQL drops
 * an idle connection (a restart, a fast shutdown): the listener lets pg-pool discard that client, and the
 * next query connects afresh, so the index recovers from a restart without being recreated.
 */
export class PgDb implements Queryable {
  readonly pool: pg.Pool;
  readonly server: string;
  /** The same pool for point reads, with pointTimeoutMs (a connection that timed out is discarded by the pool). */
  readonly point: Queryable;

  constructor(o: PgIndexOptions) {
    this.server = describeServer(o.url);
    const queryTimeout = o.queryTimeoutMs ?? 30_000;
    this.pool = new pg.Pool({
      connectionString: o.url,
      max: o.poolSize ?? 10,
      connectionTimeoutMillis: o.connectTimeoutMs ?? 5000,
      statement_timeout: queryTimeout,
      query_timeout: queryTimeout + 1000,
      idleTimeoutMillis: 30_000,
      keepAlive: true,
      application_name: 'berth',
      types,
    });
    const pointTimeout = Math.min(o.pointTimeoutMs ?? 5000, queryTimeout + 1000);
    this.point = { run: (sql, params = []) => this.query(sql, params, pointTimeout) };
    this.pool.on('error', () => {
      // An idle client lost its connection; pg-pool has removed it. The next query reports the outage if it lasts.
    });
  }

  /** The error a caller sees: connection trouble names the server; an SQL error is passed on as it is. */
  fail(err: unknown): Error {
    if (err instanceof PgUnavailableError) return err;
    if (isConnectionError(err)) return new PgUnavailableError(`${this.server} is unavailable: ${(err as Error).message}`, { cause: err });
    return err as Error;
  }

  run<T = Record<string, unknown>>(sql: string, params: readonly unknown[] = []): Promise<{ rows: T[]; rowCount: number }> {
    return this.query<T>(sql, params);
  }

  private async query<T>(sql: string, params: readonly unknown[], readTimeoutMs?: number): Promise<{ rows: T[]; rowCount: number }> {
    try {
      // pg's per-query read timeout; pg-pool releases a client whose query failed as broken, so a late answer
      // on that connection can never reach the next caller.
      const r = await this.pool.query(
        readTimeoutMs === undefined ? sql : ({ text: sql, values: params as unknown[], query_timeout: readTimeoutMs } as pg.QueryConfig),
        readTimeoutMs === undefined ? (params as unknown[]) : undefined,
      );
      return { rows: r.rows as T[], rowCount: r.rowCount ?? 0 };
    } catch (err) {
      throw this.fail(err);
    }
  }

  /**
   * `fn` in one transaction on one connection: committed whole or rolled back whole. A deadlock or
   * serialization failure (two replicas writing the same rows) runs it again, up to three times.
   */
  async tx<T>(fn: (q: Queryable) => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      let client: pg.PoolClient;
      try {
        client = await this.pool.connect();
      } catch (err) {
        throw this.fail(err);
      }
      const q: Queryable = {
        async run<R>(sql: string, params: readonly unknown[] = []) {
          const r = await client.query(sql, params as unknown[]);
          return { rows: r.rows as R[], rowCount: r.rowCount ?? 0 };
        },
      };
      let broken = false;
      try {
        await client.query('BEGIN');
        const out = await fn(q);
        await client.query('COMMIT');
        return out;
      } catch (err) {
        broken = isConnectionError(err);
        if (!broken) await client.query('ROLLBACK').catch(() => (broken = true));
        const code = (err as { code?: string }).code;
        if (!broken && code && RETRYABLE.has(code) && attempt < 3) continue;
        throw this.fail(err);
      } finally {
        // A connection that failed mid-transaction is destroyed, not handed to the next caller.
        client.release(broken);
      }
    }
  }

  end(): Promise<void> {
    return this.pool.end();
  }
}
