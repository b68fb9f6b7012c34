// Cached blob throughput: the 1 GiB blob to one client, the 200 MB blob to 8 concurrent clients
// (aggregate), from every warm cache and from nginx; plus each server's peak RSS during the 8-client test.
import type { BenchContext } from '../context.ts';
import { blobUrl, curl, curlMany, expectComplete, median, upstreamBlobBytes, warmBlob } from '../measure.ts';
import { mb, mbps, num, type Row, times } from '../row.ts';
import { cpuSeconds, peakOf, procStatusBytes, sampleRss } from '../rss.ts';
import type { Server } from '../systems.ts';
import type { BenchImage } from '../testbed.ts';

const RSS_LIMIT = 150 * 1e6;

/** CPU seconds each system spent per GB it served in the recorded runs: where the time goes. */
class CpuMeter {
  private readonly cpu: Record<string, number> = {};
  private readonly bytes: Record<string, number> = {};
  async measure<T>(s: Server, bytes: number, fn: () => Promise<T>): Promise<T> {
    const before = cpuSeconds(s.pids());
    const out = await fn();
    this.cpu[s.name] = (this.cpu[s.name] ?? 0) + cpuSeconds(s.pids()) - before;
    this.bytes[s.name] = (this.bytes[s.name] ?? 0) + bytes;
    return out;
  }
  note(): string {
    const per = Object.keys(this.cpu).map((n) => `${n} ${num(this.cpu[n]! / (this.bytes[n]! / 1e9))} s`);
    return `server CPU (user + system) per GB served: ${per.join(', ')}`;
  }
}

/** Every run's figure, per system: the spread behind the median. */
const all = (rates: Record<string, number[]>): string =>
  Object.entries(rates)
    .map(([n, xs]) => `${n} ${xs.map((x) => num(x)).join(' / ')}`)
    .join('; ');

async function warmAll(ctx: BenchContext, servers: Server[], img: BenchImage): Promise<void> {
  for (const s of servers) {
    ctx.log(`warming ${s.name} with ${img.repository} (${mb(img.layer.size)})`);
    await warmBlob(s, img.repository, img.layer.digest, img.layer.size);
  }
}

/** Notes if a cache went to the upstream for a blob it should have served from disk. */
async function assertNoUpstream(ctx: BenchContext, mark: number, img: BenchImage): Promise<string[]> {
  const { bytes } = await upstreamBlobBytes(ctx.bed.up, mark, img.layer.digest, 100);
  return bytes > 0 ? [`WARNING: the upstream sent ${mb(bytes)} of this blob during the measurement (cache not warm?)`] : [];
}

export async function cachedOneClient(ctx: BenchContext): Promise<Row[]> {
  const img = ctx.bed.huge!;
  const w = await ctx.warm();
  await warmAll(ctx, w.all, img);
  const mark = ctx.bed.up.logLineCount();
  const rates: Record<string, number[]> = {};
  // Systems take turns within each repetition, so drift (page cache, CPU clocks) hits them all alike.
  // Round 0 is a warm-up and not recorded.
  const cpu = new CpuMeter();
  for (let rep = 0; rep <= ctx.opts.repeats; rep++) {
    for (const s of w.all) {
      const get = (): ReturnType<typeof curl> => curl(blobUrl(s, img.repository, img.layer.digest), { maxTimeSec: 300 });
      const r = rep > 0 ? await cpu.measure(s, img.layer.size, get) : await get();
      expectComplete(`${s.name} 1 client`, [r], 200, img.layer.size);
      if (rep > 0) (rates[s.name] ??= []).push(mbps(r.bytes, r.seconds));
      ctx.log(`blob1 ${s.name}: ${num(mbps(r.bytes, r.seconds))} MB/s`);
    }
  }
  const m = (n: string): number => median(rates[n] ?? []);
  const [b, reg, ngx] = [m('berth'), m('registry'), m('nginx')];
  return [
    {
      figure: 'blob1',
      label: `cached blob ${img.nominal}, 1 client (MB/s)`,
      cells: { berth: num(b), registry: num(reg), nginx: num(ngx) },
      ratio: `${times(b, reg)} docker-registry, ${times(b, ngx)} nginx`,
      target: '≥ 1.0x docker-registry',
      pass: b >= reg,
      notes: [`median of ${ctx.opts.repeats} runs after a warm-up run (curl -o /dev/null); all: ${all(rates)}`, cpu.note(), ...(await assertNoUpstream(ctx, mark, img))],
    },
  ];
}

export async function cachedEightClients(ctx: BenchContext): Promise<Row[]> {
  const img = ctx.bed.big;
  const clients = 8;
  const w = await ctx.warm();
  await warmAll(ctx, w.all, img);
  const mark = ctx.bed.up.logLineCount();
  const rates: Record<string, number[]> = {};
  const peaks: Record<string, number> = {};
  const idle: Record<string, number> = {};
  const cpu = new CpuMeter();
  for (const s of w.all) idle[s.name] = s.pids().reduce((sum, pid) => sum + procStatusBytes(pid), 0);
  // Round 0 is a warm-up: its RSS counts, its rate is not recorded.
  for (let rep = 0; rep <= ctx.opts.repeats; rep++) {
    for (const s of w.all) {
      const sampler = sampleRss(() => s.pids());
      const get = (): ReturnType<typeof curlMany> => curlMany(blobUrl(s, img.repository, img.layer.digest), clients, { maxTimeSec: 300 });
      const r = rep > 0 ? await cpu.measure(s, clients * img.layer.size, get) : await get();
      peaks[s.name] = Math.max(peaks[s.name] ?? 0, peakOf(sampler.stop()));
      expectComplete(`${s.name} ${clients} clients`, r.results, 200, img.layer.size);
      if (rep > 0) (rates[s.name] ??= []).push(mbps(clients * img.layer.size, r.wallSeconds));
      ctx.log(`blob8 ${s.name}: ${num(mbps(clients * img.layer.size, r.wallSeconds))} MB/s aggregate, peak RSS ${mb(peaks[s.name]!)}`);
    }
  }
  const m = (n: string): number => median(rates[n] ?? []);
  const [b, reg, ngx] = [m('berth'), m('registry'), m('nginx')];
  const rss = (n: string): number => peaks[n] ?? 0;
  return [
    {
      figure: 'blob8',
      label: `cached blob ${img.nominal}, ${clients} clients (aggregate MB/s)`,
      cells: { berth: num(b), registry: num(reg), nginx: num(ngx) },
      ratio: `${times(b, reg)} docker-registry, ${times(b, ngx)} nginx`,
      target: '≥ 1.0x docker-registry, ≥ 0.9x nginx',
      pass: b >= reg && b >= 0.9 * ngx,
      notes: [`median of ${ctx.opts.repeats} runs after a warm-up run; wall time from first request to last byte; all: ${all(rates)}`, cpu.note(), ...(await assertNoUpstream(ctx, mark, img))],
    },
    {
      figure: 'blob8',
      label: `peak RSS during the ${clients}-client test (MB)`,
      cells: { berth: num(rss('berth') / 1e6), registry: num(rss('registry') / 1e6), nginx: num(rss('nginx') / 1e6) },
      ratio: `${times(rss('berth'), rss('registry'))} docker-registry, ${times(rss('berth'), rss('nginx'))} nginx`,
      target: '≤ 150 MB',
      pass: rss('berth') <= RSS_LIMIT,
      notes: [
        'VmRSS sampled every 50 ms (nginx: master + workers); these processes also served the earlier figures',
        `idle just before: ${w.all.map((s) => `${s.name} ${mb(idle[s.name] ?? 0)}`).join(', ')}`,
      ],
    },
  ];
}
