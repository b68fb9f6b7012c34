// 8 clients GET the same uncached 200 MB blob at once through a fresh cache: how many times the upstream
// sent it (its access log) and how long until the last client has it, against one GET on the link.
import type { BenchContext, CacheName } from '../context.ts';
import { blobUrl, curlMany, expectComplete, upstreamBlobBytes } from '../measure.ts';
import { mb, num, type Row, times } from '../row.ts';

const CLIENTS = 8;

export async function coldConcurrent(ctx: BenchContext): Promise<Row[]> {
  const img = ctx.bed.big;
  const size = img.layer.size;
  const path = `/v2/${img.repository}/blobs/${img.layer.digest}`;
  // One blob's time on the link, measured: one GET straight through the relay.
  // Timed like the 8 clients (spawn to exit), so the comparison is like for like.
  const direct = await curlMany(ctx.bed.relay.url(path), 1, { maxTimeSec: 600 });
  expectComplete('direct GET through the link', direct.results, 200, size);
  const one = { seconds: direct.wallSeconds };
  ctx.log(`cold8 reference: one GET through the link ${num(one.seconds)} s`);
  const wall: Record<string, number> = {};
  const factor: Record<string, number> = {};
  const notes: string[] = [];
  for (const name of ['berth', 'registry'] as CacheName[]) {
    const cache = await ctx.cold(name);
    try {
      const mark = ctx.bed.up.logLineCount();
      const r = await curlMany(blobUrl(cache, img.repository, img.layer.digest), CLIENTS, { maxTimeSec: 900 });
      wall[name] = r.wallSeconds;
      const up = await upstreamBlobBytes(ctx.bed.up, mark, img.layer.digest);
      factor[name] = up.bytes / size;
      notes.push(`${name}: ${up.requests} upstream GETs, ${mb(up.bytes)}`);
      expectComplete(`${name} ${CLIENTS} cold clients`, r.results, 200, size);
      ctx.log(`cold8 ${name}: ${num(r.wallSeconds)} s, upstream sent ${factor[name]!.toFixed(2)}x the blob in ${up.requests} GETs`);
    } finally {
      await cache.stop();
    }
  }
  const x = (n: string): string => (factor[n] === undefined ? '—' : `${factor[n]!.toFixed(2)}x`);
  return [
    {
      figure: 'cold8',
      label: `${CLIENTS} concurrent cold GETs: upstream bytes (x blob)`,
      cells: { berth: x('berth'), registry: x('registry') },
      target: '1.0x',
      pass: factor.berth !== undefined && factor.berth <= 1.005,
      notes,
    },
    {
      figure: 'cold8',
      label: `${CLIENTS} concurrent cold GETs: wall time (s)`,
      cells: { berth: num(wall.berth), registry: num(wall.registry), direct: `${num(one.seconds)} (1 GET)` },
      ratio: `${times(wall.berth, one.seconds)} one blob on the link`,
      target: '≤ 1.1x one blob on the link',
      pass: wall.berth !== undefined && wall.berth <= 1.1 * one.seconds,
      notes: [`direct: one GET of the ${img.nominal} blob through the link (${num(ctx.bed.linkRate / 1e6)} MB/s nominal: ${num(size / ctx.bed.linkRate)} s)`],
    },
  ];
}
