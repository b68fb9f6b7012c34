import { hostname } from 'node:os';
import type { Logger } from 'pino';
import type { Config } from '../config/schema.ts';
import { PgDb } from '../store/pg/db.ts';
import { QUOTA_LEASE } from './cluster.ts';
import { Leases } from './leases.ts';

/**
 * The replicas' quota lease for a process that is not a replica but evicts from the same PostgreSQL index
 * (an operator command such as `berth prewarm` or `berth import` run with a replica's config, or `berth
 * serve` without `cluster`): eviction deletes rows and objects every replica serves from, so it runs only
 * while this process holds the lease the replicas elect their quota runner with (docs/decisions.md
 * "Cluster fills"). Unlike a replica it holds the lease for one pass and gives it back at once, so the
 * replicas take it again at their next pass instead of after a timeout. It takes no fill lease: the row's
 * `url` names the command for the replicas' logs and is never connected to.
 */
export class QuotaLease {
  private readonly db: PgDb;
  private readonly leases: Leases;
  /** Whether the last attempt found another holder: said once per change, not on every pass. */
  private skipping = false;

  private readonly log: Logger;

  constructor(url: string, o: { timeoutMs: number; log: Logger; command: string }) {
    // One connection: a take, a heartbeat a second while a pass runs, a delete.
    this.db = new PgDb({ url, poolSize: 1, queryTimeoutMs: Math.max(2000, o.timeoutMs) });
    this.leases = new Leases(this.db, { url: `berth ${o.command} (pid ${process.pid} on ${hostname()})`, timeoutMs: o.timeoutMs, log: o.log });
    this.log = o.log;
  }

  /** Takes the quota lease for one pass: false (and no pass) while a replica or another command holds it. */
  async take(): Promise<boolean> {
    try {
      const lease = await this.leases.takeNamed(QUOTA_LEASE);
      if (!lease.mine) {
        if (!this.skipping) this.log.warn({ lease: QUOTA_LEASE, runner: lease.url }, `quota: eviction skipped: ${lease.url} holds the quota lease and evicts from the shared index`);
        this.skipping = true;
        return false;
      }
      this.skipping = false;
      this.leases.start();
      return true;
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'quota: eviction skipped: cannot take the quota lease');
      return false;
    }
  }

  /** Gives the lease back after the pass. */
  async release(): Promise<void> {
    await this.leases.releaseNamed(QUOTA_LEASE).catch((err: Error) => this.log.warn({ err: err.message }, 'quota: could not release the quota lease (it expires by itself)'));
  }

  async close(): Promise<void> {
    await this.leases.stop().catch(() => {});
    await this.db.end().catch(() => {});
  }
}

/** cluster.leaseTimeout's default, for a process configured without `cluster`. */
const DEFAULT_LEASE_TIMEOUT_MS = 5000;

/**
 * The quota lease of a process that writes to a PostgreSQL index without being a replica (an operator
 * command, whose `cluster` was dropped: `leaseTimeoutMs` is the replicas'; or serve without `cluster`);
 * undefined on SQLite, where nobody else evicts.
 */
export function oneShotQuotaLease(config: Readonly<Config>, o: { log: Logger; command: string; leaseTimeoutMs?: number }): QuotaLease | undefined {
  const url = config.index.driver === 'postgres' ? config.index.postgres?.url : undefined;
  if (!url) return undefined;
  return new QuotaLease(url, { timeoutMs: config.cluster?.leaseTimeout ?? o.leaseTimeoutMs ?? DEFAULT_LEASE_TIMEOUT_MS, log: o.log, command: o.command });
}
