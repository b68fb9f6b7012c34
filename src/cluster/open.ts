import { readFileSync } from 'node:fs';
import type { Logger } from 'pino';
import { Counter } from 'prom-client';
import type { Config } from '../config/schema.ts';
import type { Metrics } from '../metrics.ts';
import type { Fills } from '../registry/fill/fills.ts';
import { PgDb } from '../store/pg/db.ts';
import { migrate } from '../store/pg/migrations.ts';
import { Cluster } from './cluster.ts';
import { Leases } from './leases.ts';
import { PeerClient } from './peer-client.ts';

/** What server.ts gets: the fill wrapper and quota hook, what the internal endpoint needs, and how to stop. */
export interface ClusterParts {
  cluster: Cluster;
  secret: string;
  /** cluster.advertise: the origin peers sign their requests to us for. */
  advertise: string;
  /** Counts requests to our endpoint refused for a wrong secret. */
  refused: () => void;
  close(): Promise<void>;
}

/** Leases need few connections: one heartbeat a second and one upsert per fill request. */
const POOL_SIZE = 4;

/**
 * The cluster pieces of `config.cluster`: a small pool of its own on `index.postgres.url` (the index's pool
 * is not wired into serve yet), the lease tables migrated, the heartbeat running.
 */
export async function openCluster(config: Readonly<Config>, o: { log: Logger; metrics: Metrics; fills: Fills }): Promise<ClusterParts | undefined> {
  const c = config.cluster;
  const url = config.index.postgres?.url;
  if (!c || !url) return undefined;
  const db = new PgDb({ url, poolSize: POOL_SIZE, queryTimeoutMs: Math.max(2000, c.leaseTimeout) });
  try {
    await migrate(db);
  } catch (err) {
    await db.end().catch(() => {});
    throw new Error(`cluster: cannot open the fill leases: ${(err as Error).message}`);
  }
  const leases = new Leases(db, { url: c.advertise.replace(/\/$/, ''), timeoutMs: c.leaseTimeout, log: o.log });
  leases.start();
  const peers = new PeerClient(c.secret, c.leaseTimeout, c.ca !== undefined ? readFileSync(c.ca, 'utf8') : undefined);
  const cluster = new Cluster({ leases, peers, fills: o.fills, log: o.log, metrics: o.metrics, leaseTimeoutMs: c.leaseTimeout, sharedStorage: config.storage.driver === 's3' });
  const refusedCounter = new Counter({
    name: 'berth_cluster_refused_total',
    help: 'Requests to the internal cluster endpoint refused for a wrong or missing cluster.secret',
    registers: [o.metrics.registry],
  });
  o.log.info({ advertise: c.advertise, owner: leases.id, database: db.server }, 'cluster: fill leases in PostgreSQL');
  return {
    cluster,
    secret: c.secret,
    advertise: c.advertise,
    refused: () => refusedCounter.inc(),
    async close() {
      await leases.stop().catch((err: Error) => o.log.warn({ err: err.message }, 'cluster: could not delete our leases (they expire by themselves)'));
      await peers.close().catch(() => {});
      await db.end().catch(() => {});
    },
  };
}
