// berth replicas sharing one PostgreSQL (config `cluster`, issue #12), each a child process with its own
// storage directory, advertising its own loopback URL to the others.
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import pg from 'pg';
import { stringify } from 'yaml';
import { signPeerRequest } from '../../src/cluster/peer-auth.ts';
import type { BerthOptions } from './berth.ts';
import { berthConfig, tryServe } from './berth-child.ts';
import { freePort } from './ports.ts';
import type { ManagedProcess } from './process.ts';
import { makeTempDir, removeTempDir } from './tmp.ts';

export const CLUSTER_SECRET = 'cluster-test-secret-0123456789';

/**
 * The headers a replica sends its peer for GET `pathAndQuery` on `base` (the peer's advertised URL):
 * Authorization signed with `secret` (src/cluster/peer-auth.ts), and the Range when given.
 */
export function peerHeaders(base: string, pathAndQuery: string, range?: string, secret = CLUSTER_SECRET): Record<string, string> {
  const authorization = signPeerRequest(secret, 'GET', new URL(pathAndQuery, base), range);
  return range ? { authorization, range } : { authorization };
}

export interface Replica {
  name: string;
  url: string;
  port: number;
  storage: string;
  logFile: string;
  process: ManagedProcess;
  log(): string;
  /** SIGKILL (default) and wait for the exit; the directory stays. */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** A new process on the same port, storage and config (after kill). */
  restart(): Promise<void>;
  stop(): Promise<void>;
}

export interface ReplicaOptions extends BerthOptions {
  pgUrl: string;
  secret?: string;
  leaseTimeout?: string;
  /** cluster.ca: with `tls`, the replica advertises https:// and trusts peers signed by this CA. */
  clusterCa?: string;
}

/** One replica: `berth serve` with cluster.advertise = its own URL. */
export async function startReplica(name: string, o: ReplicaOptions): Promise<Replica> {
  const dir = await makeTempDir(`replica-${name}`);
  const storage = path.join(dir, 'storage');
  const logFile = path.join(dir, 'berth.log');
  const configFile = path.join(dir, 'berth.yaml');
  const { pgUrl, secret, leaseTimeout, clusterCa, ...rest } = o;
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const url = `${rest.tls ? 'https' : 'http'}://127.0.0.1:${port}`;
    const config = {
      ...berthConfig(rest, storage, `127.0.0.1:${port}`),
      index: { driver: 'postgres', postgres: { url: pgUrl } },
      cluster: { advertise: url, secret: secret ?? CLUSTER_SECRET, leaseTimeout: leaseTimeout ?? '3s', ...(clusterCa ? { ca: clusterCa } : {}) },
    };
    await writeFile(configFile, stringify(config));
    const r = await tryServe(configFile, url, { logFile });
    if (r.kind === 'exited') {
      if (/EADDRINUSE/.test(r.output) && attempt < 3) continue;
      throw new Error(`replica ${name} exited (${String(r.code)}):\n${r.output.slice(-3000)}`);
    }
    const replica: Replica = {
      name,
      url,
      port,
      storage,
      logFile,
      process: r.process,
      log: r.output,
      kill: (signal = 'SIGKILL') => replica.process.stop(signal),
      async restart() {
        await replica.process.stop();
        const again = await tryServe(configFile, url, { logFile });
        if (again.kind === 'exited') throw new Error(`replica ${name} exited on restart (${String(again.code)}):\n${again.output.slice(-3000)}`);
        replica.process = again.process;
      },
      async stop() {
        await replica.process.stop();
        await removeTempDir(dir);
      },
    };
    return replica;
  }
}

/** Rows of a query on the cluster's database (a fresh connection each time: tests poll rarely). */
export async function query<T = Record<string, unknown>>(url: string, sql: string, params: unknown[] = []): Promise<T[]> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return (await c.query(sql, params)).rows as T[];
  } finally {
    await c.end();
  }
}
