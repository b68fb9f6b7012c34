// The measurements of the cluster figure (issue #12), each on fresh caches: cached throughput to 24 clients
// spread round-robin over the servers, a cold 24-client fill through the link, and a SIGKILL of the
// fill's owner mid-fill. bench/figures/cluster.ts turns them into rows.

import { waitUntil } from '../test/support/links.ts';
import type { Postgres } from '../test/support/postgres.ts';
import { type HashedResult, hashedCurl, pauseAfter, watchedGet } from './cluster-clients.ts';
import { leaseOwner, leaseTakers, startReplicas } from './cluster-replicas.ts';
import type { BenchContext } from './context.ts';
import { blobUrl, curl, expectComplete, upstreamBlobBytes } from './measure.ts';
import type { Server } from './systems.ts';

export const CLIENTS = 24;

/** Client i of `n` goes to server i mod servers.length. */
const spread = <T>(servers: readonly Server[], n: number, get: (s: Server, i: number) => Promise<T>): Promise<T[]> =>
  Promise.all(Array.from({ length: n }, (_, i) => get(servers[i % servers.length]!, i % servers.length)));

/** Aggregate MB/s of 24 clients over `servers` (all warm): 24 × size / wall, one round. */
export async function cachedRound(ctx: BenchContext, what: string, servers: readonly Server[]): Promise<number> {
  const img = ctx.bed.big;
  const t0 = performance.now();
  const results = await spread(servers, CLIENTS, (s) => curl(blobUrl(s, img.repository, img.layer.digest), { maxTimeSec: 600 }));
  const wall = (performance.now() - t0) / 1000;
  expectComplete(`${what} ${CLIENTS} cached clients`, results, 200, img.layer.size);
  return (CLIENTS * img.layer.size) / 1e6 / wall;
}

export interface ColdFill {
  wallSeconds: number;
  upstreamBytes: number;
  upstreamGets: number;
  /** Per server, the first-byte times of its clients (s). */
  firstByte: number[][];
  /** Per server: took a new fill lease (berth replicas only). */
  owners?: boolean[];
}

function expectVerified(what: string, results: readonly (HashedResult & { server: number })[], digest: string, size: number): void {
  const bad = results.filter((r) => r.status !== 200 || r.bytes !== size || r.digest !== digest);
  if (bad.length > 0) {
    const r = bad[0]!;
    throw new Error(`${what}: ${bad.length}/${results.length} clients without the blob (status ${r.status}, ${r.bytes}/${size} bytes, ${r.digest}${r.error ? `, ${r.error}` : ''})`);
  }
}

/** 24 verified clients over `servers` (fresh, cold, behind the link) for the big blob. */
export async function coldFill(ctx: BenchContext, what: string, servers: readonly Server[], owners?: () => Promise<boolean[]>): Promise<ColdFill> {
  const img = ctx.bed.big;
  const mark = ctx.bed.up.logLineCount();
  const t0 = performance.now();
  const results = await spread(servers, CLIENTS, (s, server) => hashedCurl(blobUrl(s, img.repository, img.layer.digest)).then((r) => ({ ...r, server })));
  const wallSeconds = (performance.now() - t0) / 1000;
  const up = await upstreamBlobBytes(ctx.bed.up, mark, img.layer.digest);
  expectVerified(`${what} cold fill`, results, img.layer.digest, img.layer.size);
  const firstByte = servers.map((_, i) => results.filter((r) => r.server === i).map((r) => r.firstByte));
  return { wallSeconds, upstreamBytes: up.bytes, upstreamGets: up.requests, firstByte, ...(owners ? { owners: await owners() } : {}) };
}

/** Three fresh replicas behind the link, cold: coldFill over them. */
export async function coldReplicas(ctx: BenchContext, pg: Postgres): Promise<ColdFill> {
  const set = await startReplicas(pg, ctx.bed.relay.url(), 3);
  try {
    return await coldFill(ctx, '3 replicas', set.replicas, () => leaseTakers(set));
  } finally {
    await set.stop();
  }
}

export interface KillRecovery {
  /** Of the blob, through the link, when the owner was killed. */
  killedAtFraction: number;
  /** Kill → the lease row names another replica. */
  takeoverMs: number;
  /** Per survivor's watching client: kill → its bytes flow again, and its longest pause after the kill. */
  resumed: Array<{ resumedAfterMs: number; pauseMs: number }>;
  /** Kill → the last survivor client has every byte. */
  doneMs: number;
  wallSeconds: number;
  upstreamBytes: number;
  upstreamGets: number;
  /** Clients on the survivors (all verified) and on the killed owner (cut). */
  survivorClients: number;
  ownerClients: number;
}

/**
 * Three fresh replicas behind the link, 24 clients (on each replica one watching client in this process and
 * seven curls); SIGKILL of the lease owner once `fraction` of the blob came through the link.
 */
export async function killOwnerMidFill(ctx: BenchContext, pg: Postgres, fraction = 0.4): Promise<KillRecovery> {
  const img = ctx.bed.big;
  const { digest, size } = img.layer;
  const set = await startReplicas(pg, ctx.bed.relay.url(), 3);
  try {
    const mark = ctx.bed.up.logLineCount();
    const relayStart = ctx.bed.relay.bytesDown;
    const t0 = performance.now();
    const perReplica = CLIENTS / set.replicas.length;
    const running = set.replicas.flatMap((r, server) =>
      Array.from({ length: perReplica }, (_, i) => {
        const url = blobUrl(r, img.repository, digest);
        return (i === 0 ? watchedGet(url) : hashedCurl(url)).then((res) => ({ ...res, server, watched: i === 0 }));
      }),
    );
    const lease = await waitUntil('a fill lease row', () => leaseOwner(set, digest), 60_000, 50);
    const ownerIndex = set.replicas.indexOf(lease.replica);
    await waitUntil(`${Math.round(fraction * 100)}% of the blob through the link`, () => ctx.bed.relay.bytesDown - relayStart >= fraction * size || undefined, 300_000, 20);
    const killedAtFraction = (ctx.bed.relay.bytesDown - relayStart) / size;
    const killedAt = performance.now();
    await lease.replica.kill!('SIGKILL');
    ctx.log(`cluster: SIGKILL of replica ${ownerIndex} (the owner) at ${Math.round(killedAtFraction * 100)}% of the blob`);
    await waitUntil('a survivor took the lease over', async () => ((await leaseOwner(set, digest))?.owner ?? lease.owner) !== lease.owner || undefined, 120_000, 50);
    const takeoverMs = performance.now() - killedAt;
    const results = await Promise.all(running);
    const wallSeconds = (performance.now() - t0) / 1000;
    const survivors = results.filter((r) => r.server !== ownerIndex);
    expectVerified('clients of the survivors', survivors, digest, size);
    const lastDone = Math.max(...survivors.map((r) => t0 + r.seconds * 1000));
    const resumed = survivors.filter((r) => r.watched).map((r) => pauseAfter((r as { arrivals?: number[] }).arrivals ?? [], killedAt) ?? { resumedAfterMs: Number.NaN, pauseMs: Number.NaN });
    const up = await upstreamBlobBytes(ctx.bed.up, mark, digest);
    return {
      killedAtFraction,
      takeoverMs,
      resumed,
      doneMs: lastDone - killedAt,
      wallSeconds,
      upstreamBytes: up.bytes,
      upstreamGets: up.requests,
      survivorClients: survivors.length,
      ownerClients: results.length - survivors.length,
    };
  } finally {
    await set.stop();
  }
}
