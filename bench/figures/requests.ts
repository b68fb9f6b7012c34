// Small-request rates under 32 connections: manifest GET by tag (with the Accept header clients send)
// with wrk, and HEAD of a cached blob with ab (wrk cannot do HEAD), on every warm system.
import { ACCEPT_ALL_MANIFESTS } from '../../test/support/images.ts';
import { abHead } from '../ab.ts';
import type { BenchContext } from '../context.ts';
import { blobUrl, curl, warmBlob } from '../measure.ts';
import { num, type Row, times } from '../row.ts';
import type { Server } from '../systems.ts';
import { type LoadResult, wrk } from '../wrk.ts';

type Kind = 'manifest' | 'head';

export async function manifestByTag(ctx: BenchContext): Promise<Row[]> {
  return requestRate(ctx, 'manifest');
}

export async function headBlob(ctx: BenchContext): Promise<Row[]> {
  return requestRate(ctx, 'head');
}

async function requestRate(ctx: BenchContext, kind: Kind): Promise<Row[]> {
  const img = ctx.bed.small;
  const w = await ctx.warm();
  const dir = await ctx.scratch(`load-${kind}`);
  const conns = ctx.opts.wrkConnections;
  const load = (url: string, seconds: number): Promise<LoadResult> =>
    kind === 'manifest' ? wrk(url, { method: 'GET', headers: { Accept: ACCEPT_ALL_MANIFESTS }, connections: conns, threads: 2, seconds, dir }) : abHead(url, { connections: conns, seconds, dir });
  const urlOf = (s: Server): string => (kind === 'manifest' ? `${s.url}/v2/${img.repository}/manifests/${img.tag}` : blobUrl(s, img.repository, img.layer.digest));
  const results: Record<string, LoadResult> = {};
  for (const s of w.all) {
    // Warm: the manifest (and its tag) or the blob is in the cache before the clock starts.
    if (kind === 'manifest') {
      const r = await curl(urlOf(s), { headers: { Accept: ACCEPT_ALL_MANIFESTS } });
      if (r.status !== 200) throw new Error(`${s.name}: manifest GET answered ${r.status}`);
    } else await warmBlob(s, img.repository, img.layer.digest, img.layer.size);
    await load(urlOf(s), ctx.opts.quick ? 1 : 2); // JIT and connection warm-up, not counted
    const r = await load(urlOf(s), ctx.opts.wrkSeconds);
    results[s.name] = r;
    ctx.log(`${kind} ${s.name}: ${num(r.rps)} req/s, p50 ${num(r.p50Ms)} ms, p99 ${num(r.p99Ms)} ms, ${r.errors} errors`);
  }
  const b = results.berth;
  const reg = results.registry;
  const ngx = results.nginx;
  const what = kind === 'manifest' ? `manifest GET by tag` : `HEAD blob`;
  const how =
    kind === 'manifest'
      ? `wrk -t2 -c${conns} -d${ctx.opts.wrkSeconds}s with the Accept header (Lua script), after a short warm-up run; nginx serves the manifest as a static file`
      : `ab -k -i -c${conns} -t${ctx.opts.wrkSeconds} (wrk 4.1 stalls on HEAD), after a short warm-up run`;
  const errorNotes = Object.entries(results)
    .filter(([, r]) => r.errors > 0 || r.requests === 0)
    .map(([n, r]) => `WARNING: ${n} had ${r.errors} errors (non-2xx or socket) out of ${r.requests} requests`);
  const berthOk = b !== undefined && b.errors === 0 && b.requests > 0;
  const lat = (r: LoadResult | undefined): string => (r ? `${num(r.p50Ms)} / ${num(r.p99Ms)}` : '—');
  const rpsRow: Row = {
    figure: kind,
    label: `${what}, ${conns} conns, ${ctx.opts.wrkSeconds} s (req/s)`,
    cells: { berth: num(b?.rps), registry: num(reg?.rps), nginx: num(ngx?.rps) },
    ratio: `${times(b?.rps, reg?.rps)} docker-registry, ${times(b?.rps, ngx?.rps)} nginx`,
    notes: [how, ...errorNotes],
  };
  const latRow: Row = {
    figure: kind,
    label: `${what}: latency p50 / p99 (ms)`,
    cells: { berth: lat(b), registry: lat(reg), nginx: lat(ngx) },
    ratio: `p99 ${times(b?.p99Ms, reg?.p99Ms)} docker-registry`,
  };
  if (kind === 'manifest') {
    rpsRow.target = '≥ 3x docker-registry';
    rpsRow.pass = berthOk && reg !== undefined && b.rps >= 3 * reg.rps;
    latRow.target = 'p99 ≤ 10 ms';
    latRow.pass = berthOk && b.p99Ms <= 10;
  } else if (!berthOk) {
    rpsRow.pass = false; // no target, but a HEAD that errors is a miss
  }
  return [rpsRow, latRow];
}
