// berth replicas for the cluster figure (issue #12): each a child process (bench/systems.ts) with its own
// filesystem storage, all on one throw-away PostgreSQL (test/support/postgres.ts) with index.driver
// postgres and cluster {advertise, secret}, as test/support/cluster.ts starts them.
import { query } from '../test/support/cluster.ts';
import { type Postgres, startPostgres } from '../test/support/postgres.ts';
import { guarded } from './cleanup.ts';
import { type Server, startBerthServer } from './systems.ts';

const SECRET = 'berth-bench-cluster-secret-0123456789';

export interface ReplicaSet {
  replicas: Server[];
  /** The database the replicas share. */
  dbUrl: string;
  stop(): Promise<void>;
}

/** The bench's PostgreSQL 15 on 127.0.0.1, stopped and removed with the rest. */
export async function benchPostgres(): Promise<Postgres> {
  const pg = await startPostgres();
  return guarded('postgres', { ...pg, stop: () => pg.destroy() });
}

/** `n` fresh replicas on a fresh database, reaching `upstreamUrl` as docker.io. */
export async function startReplicas(pg: Postgres, upstreamUrl: string, n: number): Promise<ReplicaSet> {
  const dbUrl = await pg.createDatabase();
  const config = (port: number) => ({
    index: { driver: 'postgres', postgres: { url: dbUrl } },
    cluster: { advertise: `http://127.0.0.1:${port}`, secret: SECRET },
  });
  const replicas: Server[] = [];
  try {
    // One at a time: the first one migrates the schema.
    for (let i = 0; i < n; i++) replicas.push(await startBerthServer(upstreamUrl, config));
  } catch (err) {
    for (const r of replicas) await r.stop();
    throw err;
  }
  return {
    replicas,
    dbUrl,
    async stop() {
      for (const r of replicas) await r.stop();
      await pg.dropDatabase(dbUrl).catch(() => undefined);
    },
  };
}

/** The replica whose lease row names it for `digest`, if any (the fill's owner right now). */
export async function leaseOwner(set: ReplicaSet, digest: string): Promise<{ replica: Server; owner: string } | undefined> {
  const rows = await query<{ url: string; owner: string }>(set.dbUrl, 'SELECT url, owner FROM fill_leases WHERE digest = $1', [digest]);
  const row = rows[0];
  const replica = row ? set.replicas.find((r) => r.url === row.url.replace(/\/$/, '')) : undefined;
  return row && replica ? { replica, owner: row.owner } : undefined;
}

/** Which replicas took a new fill lease so far (berth_cluster_fill_leases_total{how="new"} > 0). */
export async function leaseTakers(set: ReplicaSet): Promise<boolean[]> {
  return Promise.all(
    set.replicas.map(async (r) => {
      const text = await (await fetch(`${r.url}/metrics`)).text();
      return Number(/berth_cluster_fill_leases_total\{how="new"\} (\d+)/.exec(text)?.[1] ?? 0) > 0;
    }),
  );
}
