import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import type { Queryable } from '../store/pg/db.ts';

/** Who holds a lease after we asked for it. */
export interface LeaseHolder {
  /** Our own id came back: we hold it (newly taken, taken over from a dead owner, or already ours). */
  mine: boolean;
  owner: string;
  /** The holder's `cluster.advertise`. */
  url: string;
  /** Until the holder's last heartbeat goes stale, by the database's clock (0 when mine). */
  expiresInMs: number;
  /** We took it over from another owner whose heartbeat had gone stale. */
  tookOver: boolean;
}

const HEARTBEAT_MS = 1000;

/** SQL: milliseconds until a row's heartbeat goes stale (0 once it has), by the database's clock; `timeoutMs` a float8 parameter. */
const expiresIn = (timeoutMs: string) => `GREATEST(0, EXTRACT(EPOCH FROM (heartbeat_at + make_interval(secs => ${timeoutMs} / 1000) - now())) * 1000)::float8`;

/**
 * Fill leases (one fill per (upstream, digest) across replicas) and named leases (the quota runner), as
 * rows in PostgreSQL (docs/decisions.md "Cluster fills"). A lease is taken with one upsert that succeeds
 * only when the row is new, already ours, or its heartbeat is older than the timeout; all times are the
 * database's, so replicas' clocks never matter. One statement a second heartbeats every lease this replica
 * holds; a lease is deleted when its fill ends and all of ours when the replica stops.
 */
export class Leases {
  /** This process's id in the rows: a restarted replica is a new owner (its old fills are gone). */
  readonly id = randomUUID();
  private readonly fills = new Set<string>();
  private readonly named = new Set<string>();
  private timer: NodeJS.Timeout | undefined;
  private beating: Promise<void> | undefined;

  constructor(
    private readonly db: Queryable,
    private readonly o: { url: string; timeoutMs: number; log: Logger },
  ) {}

  /** Our `cluster.advertise`, as written in the rows. */
  get url(): string {
    return this.o.url;
  }

  private static fillKey(upstream: string, digest: string): string {
    return `${upstream.toLowerCase()} ${digest}`;
  }

  /** Takes the lease of the fill of `digest` through `upstream`, or says who holds it. */
  async takeFill(upstream: string, digest: string): Promise<LeaseHolder> {
    const up = upstream.toLowerCase();
    const key = Leases.fillKey(up, digest);
    const holder = await this.take(
      `INSERT INTO fill_leases AS l (upstream, digest, owner, url, taken_at, heartbeat_at) VALUES ($1, $2, $3, $4, now(), now())
       ON CONFLICT (upstream, digest) DO UPDATE SET owner = EXCLUDED.owner, url = EXCLUDED.url, heartbeat_at = now(),
         taken_at = CASE WHEN l.owner = EXCLUDED.owner THEN l.taken_at ELSE now() END
       WHERE l.owner = EXCLUDED.owner OR l.heartbeat_at < now() - make_interval(secs => $5::float8 / 1000)`,
      'fill_leases WHERE upstream = $1 AND digest = $2',
      [up, digest, this.id, this.o.url, this.o.timeoutMs],
    ).catch((err: unknown) => {
      // PostgreSQL unreachable while a fill we hold resumes (its upstream body broke): nobody can take a lease
      // while nobody reaches the database, so it is still ours, and failing here would fail that fill for
      // every reader on every replica. A replica cut off alone may see its lease taken over meanwhile: the
      // lost-lease case the heartbeat logs (one more upstream read), never wrong bytes.
      if (this.fills.has(key) && (err as { unavailable?: unknown }).unavailable === true) {
        this.o.log.warn({ lease: key, err: (err as Error).message }, 'cluster: PostgreSQL unavailable; resuming a fill this replica holds');
        return { mine: true, owner: this.id, url: this.o.url, expiresInMs: 0, tookOver: false };
      }
      throw err;
    });
    if (holder.mine) this.fills.add(key);
    return holder;
  }

  /** Who holds the lease of that fill now, without taking it (undefined: nobody). */
  async fillHolder(upstream: string, digest: string): Promise<LeaseHolder | undefined> {
    const r = await this.db.run<{ owner: string; url: string; expires: number }>(
      `SELECT owner, url, ${expiresIn('$3::float8')} AS expires
         FROM fill_leases WHERE upstream = $1 AND digest = $2`,
      [upstream.toLowerCase(), digest, this.o.timeoutMs],
    );
    const h = r.rows[0];
    if (!h) return undefined;
    const mine = h.owner === this.id;
    return { mine, owner: h.owner, url: h.url, expiresInMs: mine ? 0 : Math.ceil(h.expires), tookOver: false };
  }

  /** Deletes our lease of that fill (it committed or failed): the next replica to miss takes it at once. */
  async releaseFill(upstream: string, digest: string): Promise<void> {
    const up = upstream.toLowerCase();
    this.fills.delete(Leases.fillKey(up, digest));
    await this.db.run('DELETE FROM fill_leases WHERE upstream = $1 AND digest = $2 AND owner = $3', [up, digest, this.id]);
  }

  /** Takes (or keeps) the named lease; once ours it is heartbeated until the replica stops or loses it. */
  async takeNamed(name: string): Promise<LeaseHolder> {
    const holder = await this.take(
      `INSERT INTO leases AS l (name, owner, url, taken_at, heartbeat_at) VALUES ($1, $2, $3, now(), now())
       ON CONFLICT (name) DO UPDATE SET owner = EXCLUDED.owner, url = EXCLUDED.url, heartbeat_at = now(),
         taken_at = CASE WHEN l.owner = EXCLUDED.owner THEN l.taken_at ELSE now() END
       WHERE l.owner = EXCLUDED.owner OR l.heartbeat_at < now() - make_interval(secs => $4::float8 / 1000)`,
      'leases WHERE name = $1',
      [name, this.id, this.o.url, this.o.timeoutMs],
    );
    if (holder.mine) this.named.add(name);
    else this.named.delete(name);
    return holder;
  }

  /** Deletes our named lease (a one-pass holder is done): the next taker gets it at once. */
  async releaseNamed(name: string): Promise<void> {
    this.named.delete(name);
    await this.db.run('DELETE FROM leases WHERE name = $1 AND owner = $2', [name, this.id]);
  }

  /** Whether we hold the named lease as of the last heartbeat (no query). */
  holds(name: string): boolean {
    return this.named.has(name);
  }

  /**
   * The upsert, and when it did not take the row (someone else's live lease) the row as it is, with how long
   * until it goes stale. `previous` (the snapshot before the upsert) tells a takeover from a new lease. The
   * timeout is the last parameter of `params`.
   */
  private async take(upsert: string, row: string, params: unknown[]): Promise<LeaseHolder> {
    const t = `$${params.length}::float8`;
    const sql = `WITH previous AS (SELECT owner FROM ${row}),
      taken AS (${upsert} RETURNING owner, url)
      SELECT owner, url, 0::float8 AS expires, (SELECT owner FROM previous) AS previous FROM taken
      UNION ALL
      SELECT owner, url, ${expiresIn(t)}, NULL
        FROM ${row} AND NOT EXISTS (SELECT 1 FROM taken)`;
    for (let attempt = 0; ; attempt++) {
      const r = await this.db.run<{ owner: string; url: string; expires: number; previous: string | null }>(sql, params);
      const h = r.rows[0];
      // No row: another replica's lease was committed after this statement's snapshot (the upsert saw it, the
      // SELECT did not), or deleted in between. Asking again sees it.
      if (!h) {
        if (attempt < 5) continue;
        throw new Error('fill lease: no row after five attempts');
      }
      const mine = h.owner === this.id;
      return { mine, owner: h.owner, url: h.url, expiresInMs: Math.ceil(h.expires), tookOver: mine && h.previous !== null && h.previous !== this.id };
    }
  }

  start(): void {
    this.timer ??= setInterval(() => {
      this.beating ??= this.heartbeat().finally(() => (this.beating = undefined));
    }, HEARTBEAT_MS);
    this.timer.unref();
  }

  /** One statement for all our leases; a lease that no longer comes back was lost (we were too slow). */
  async heartbeat(): Promise<void> {
    if (this.fills.size === 0 && this.named.size === 0) return;
    const fills = [...this.fills];
    const named = [...this.named];
    try {
      const r = await this.db.run<{ kind: string; k: string }>(
        `WITH f AS (UPDATE fill_leases SET heartbeat_at = now() WHERE owner = $1 AND (upstream || ' ' || digest) = ANY($2::text[]) RETURNING upstream || ' ' || digest AS k),
           n AS (UPDATE leases SET heartbeat_at = now() WHERE owner = $1 AND name = ANY($3::text[]) RETURNING name AS k)
         SELECT 'fill' AS kind, k FROM f UNION ALL SELECT 'named', k FROM n`,
        [this.id, fills, named],
      );
      const back = new Set(r.rows.map((x) => `${x.kind} ${x.k}`));
      for (const k of fills) {
        // Released while the heartbeat was in flight, or lost: either way no longer ours.
        if (!back.has(`fill ${k}`) && this.fills.delete(k)) this.o.log.warn({ lease: k }, 'cluster: lost a fill lease (heartbeats were late): another replica may fetch it too');
      }
      for (const k of named) {
        if (!back.has(`named ${k}`) && this.named.delete(k)) this.o.log.warn({ lease: k }, 'cluster: lost a lease (heartbeats were late)');
      }
    } catch (err) {
      this.o.log.warn({ err: (err as Error).message }, 'cluster: could not heartbeat leases');
    }
  }

  /** Stops heartbeating and deletes every lease of ours, so peers take over at once instead of after the timeout. */
  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await this.beating;
    this.fills.clear();
    this.named.clear();
    await this.db.run('WITH f AS (DELETE FROM fill_leases WHERE owner = $1) DELETE FROM leases WHERE owner = $1', [this.id]);
  }
}
