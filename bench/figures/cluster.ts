// issue #12: three berth replicas on one PostgreSQL (index.driver postgres, cluster {advertise, secret},
// each its own filesystem storage) against one berth, on the same work: the cached 200 MB blob to 24 clients
// spread round-robin, a cold 24-client fill through the link (upstream bytes, wall time, every body
// verified), the first byte on the fill's owner against the others, and a SIGKILL of the owner mid-fill.
// docker-registry (proxy mode) alongside: three independent proxies, and one.
import { benchPostgres, startReplicas } from '../cluster-replicas.ts';
import { CLIENTS, type ColdFill, cachedRound, coldFill, coldReplicas, killOwnerMidFill } from '../cluster-runs.ts';
import type { BenchContext } from '../context.ts';
import { curlMany, expectComplete, median, upstreamBlobBytes, warmBlob } from '../measure.ts';
import { mb, num, type Row, times } from '../row.ts';
import { type Server, startRegistryProxy } from '../systems.ts';

type Kind = 'berth3' | 'berth1' | 'registry3' | 'registry1';

const ms = (s: number) => Math.round(s * 1000);
const range = (xs: readonly number[]) => (xs.length === 0 ? '—' : `${ms(Math.min(...xs))}-${ms(Math.max(...xs))}`);
const x = (bytes: number, size: number) => `${(bytes / size).toFixed(2)}x`;

async function cached(ctx: BenchContext, pg: Awaited<ReturnType<typeof benchPostgres>>): Promise<{ rates: Record<Kind, number[]>; warn: string[] }> {
  const img = ctx.bed.big;
  const w = await ctx.warm();
  const set = await startReplicas(pg, ctx.bed.up.url, 3);
  const extra: Server[] = [];
  try {
    for (let i = 0; i < 2; i++) extra.push(await startRegistryProxy(ctx.bed.up.url));
    const systems: Array<[Kind, Server[]]> = [
      ['berth3', set.replicas],
      ['berth1', [w.berth]],
      ['registry3', [w.registry, ...extra]],
      ['registry1', [w.registry]],
    ];
    for (const s of [...set.replicas, w.berth, w.registry, ...extra]) await warmBlob(s, img.repository, img.layer.digest, img.layer.size);
    const mark = ctx.bed.up.logLineCount();
    const rates: Record<Kind, number[]> = { berth3: [], berth1: [], registry3: [], registry1: [] };
    const rounds = Math.min(ctx.opts.repeats, 3);
    // Turn by turn, round 0 a warm-up, so drift hits every system alike.
    for (let rep = 0; rep <= rounds; rep++) {
      for (const [kind, servers] of systems) {
        const rate = await cachedRound(ctx, kind, servers);
        if (rep > 0) rates[kind].push(rate);
        ctx.log(`cluster cached ${kind}: ${num(rate)} MB/s${rep === 0 ? ' (warm-up)' : ''}`);
      }
    }
    const { bytes } = await upstreamBlobBytes(ctx.bed.up, mark, img.layer.digest, 100);
    return { rates, warn: bytes > 0 ? [`WARNING: the upstream sent ${mb(bytes)} of this blob during the measurement`] : [] };
  } finally {
    await set.stop();
    for (const s of extra) await s.stop();
  }
}

async function coldRegistries(ctx: BenchContext, n: number): Promise<ColdFill> {
  const regs: Server[] = [];
  try {
    for (let i = 0; i < n; i++) regs.push(await startRegistryProxy(ctx.bed.relay.url()));
    return await coldFill(ctx, `${n} docker-registry proxies`, regs);
  } finally {
    for (const r of regs) await r.stop();
  }
}

export async function clusterFigure(ctx: BenchContext): Promise<Row[]> {
  const img = ctx.bed.big;
  const size = img.layer.size;
  ctx.log('starting PostgreSQL 15');
  const pg = await benchPostgres();
  try {
    const c = await cached(ctx, pg);
    const direct = await curlMany(ctx.bed.relay.url(`/v2/${img.repository}/blobs/${img.layer.digest}`), 1, { maxTimeSec: 600 });
    expectComplete('direct GET through the link', direct.results, 200, size);
    const link = direct.wallSeconds;
    ctx.log(`cluster reference: one GET through the link ${num(link)} s`);
    const three = await coldReplicas(ctx, pg);
    ctx.log(`cluster cold, 3 replicas: ${num(three.wallSeconds)} s, upstream ${x(three.upstreamBytes, size)} in ${three.upstreamGets} GETs`);
    const oneServer = await ctx.cold('berth');
    const one = await coldFill(ctx, '1 berth', [oneServer]).finally(() => oneServer.stop());
    ctx.log(`cluster cold, 1 berth: ${num(one.wallSeconds)} s, upstream ${x(one.upstreamBytes, size)} in ${one.upstreamGets} GETs`);
    const kill = await killOwnerMidFill(ctx, pg);
    ctx.log(`cluster SIGKILL: lease taken over after ${ms(kill.takeoverMs / 1000)} ms, upstream ${x(kill.upstreamBytes, size)}`);
    const regs = await coldRegistries(ctx, 3);
    ctx.log(`cluster cold, 3 docker-registry proxies: ${num(regs.wallSeconds)} s, upstream ${x(regs.upstreamBytes, size)} in ${regs.upstreamGets} GETs`);

    const m = (k: Kind) => median(c.rates[k]);
    const all = (Object.keys(c.rates) as Kind[]).map((k) => `${k} ${c.rates[k].map((v) => num(v)).join(' / ')}`).join('; ');
    const ownerIdx = three.owners?.indexOf(true) ?? -1;
    const ownerFb = three.firstByte[ownerIdx] ?? [];
    const otherFb = three.firstByte.filter((_, i) => i !== ownerIdx).flat();
    const takers = three.owners?.filter(Boolean).length ?? 0;
    const blob = `${img.nominal} blob`;
    return [
      {
        figure: 'cluster',
        label: `3 replicas vs 1: cached ${blob} to ${CLIENTS} clients (round-robin), aggregate MB/s`,
        cells: { berth: `${num(m('berth3'))} (1: ${num(m('berth1'))})`, registry: `${num(m('registry3'))} (1: ${num(m('registry1'))})` },
        ratio: `${times(m('berth3'), m('berth1'))} one replica, ${times(m('berth3'), m('registry3'))} 3 docker-registries`,
        notes: [
          `median of ${c.rates.berth3.length} rounds after a warm-up; all: ${all}`,
          'each replica and proxy on its own filesystem storage, warmed from the upstream directly; 2 cores for every server and all 24 curls',
          ...c.warn,
        ],
      },
      {
        figure: 'cluster',
        label: `3 replicas vs 1: cold ${CLIENTS}-client fill of one ${blob}, upstream bytes (x blob)`,
        cells: { berth: `${x(three.upstreamBytes, size)} (1: ${x(one.upstreamBytes, size)})`, registry: `${x(regs.upstreamBytes, size)} (3 proxies)` },
        target: '1.0x',
        pass: three.upstreamBytes <= 1.005 * size,
        notes: [
          `upstream GETs of the blob: 3 replicas ${three.upstreamGets}, 1 berth ${one.upstreamGets}, 3 docker-registry proxies ${regs.upstreamGets}; ${takers} replica(s) took a new lease`,
          'every client verified: curl piped into sha256sum, the digest and size checked; replicas on per-replica filesystem storage and one PostgreSQL 15 (test/support/postgres.ts), leaseTimeout 5s (the default)',
          'docker-registry: three independent proxies, each its own storage, the same 24 clients round-robin (a single proxy is the cold8 figure)',
        ],
      },
      {
        figure: 'cluster',
        label: `3 replicas vs 1: cold ${CLIENTS}-client fill, wall time to the last verified client (s)`,
        cells: { berth: `${num(three.wallSeconds)} (1: ${num(one.wallSeconds)})`, registry: num(regs.wallSeconds), direct: `${num(link)} (1 GET)` },
        ratio: `${times(three.wallSeconds, link)} one blob on the link, ${times(three.wallSeconds, one.wallSeconds)} one replica`,
        notes: [`the link: the testbed's relay, ${num(ctx.bed.linkRate / 1e6)} MB/s for all connections together; direct: one GET of the blob through it`],
      },
      {
        figure: 'cluster',
        label: `3 replicas: cold fill, first byte on the owner vs the other replicas (ms)`,
        cells: { berth: `owner ${range(ownerFb)}, others ${range(otherFb)} (1 replica: ${range(one.firstByte.flat())})` },
        ratio: `${times(median(otherFb), median(ownerFb))} the owner (medians)`,
        notes: ['curl time_starttransfer of each client (berth sends the headers once the first bytes are on disk); the owner is the replica whose berth_cluster_fill_leases_total{how="new"} counted'],
      },
      {
        figure: 'cluster',
        label: `3 replicas: SIGKILL of the owner at ${Math.round(kill.killedAtFraction * 100)}% of the fill, kill → survivors' clients get bytes again (s)`,
        cells: { berth: kill.resumed.map((r) => num(r.resumedAfterMs / 1000)).join(', ') },
        notes: [
          `lease taken over ${num(kill.takeoverMs / 1000)} s after the kill; the watching client of each survivor paused ${kill.resumed.map((r) => num(r.pauseMs / 1000)).join(', ')} s; the last survivor client was done ${num(kill.doneMs / 1000)} s after the kill (${num(kill.wallSeconds)} s in all)`,
          `${kill.survivorClients} clients on the survivors, all verified; the ${kill.ownerClients} on the killed owner were cut (with one berth every client is cut, until it is restarted)`,
        ],
      },
      {
        figure: 'cluster',
        label: '3 replicas: SIGKILL of the owner mid-fill, upstream bytes (x blob)',
        cells: { berth: x(kill.upstreamBytes, size) },
        notes: [
          `${kill.upstreamGets} upstream GETs; ${mb(kill.upstreamBytes - size)} more than the blob: what the dead owner had been sent but not yet passed on, and the survivor asks only for what it lacks`,
        ],
      },
    ];
  } finally {
    await pg.stop();
  }
}
