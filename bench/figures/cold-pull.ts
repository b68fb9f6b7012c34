// Cold pull of the 200 MB image with skopeo: directly from the upstream through the link (relay), and
// through each cache, fresh and empty each time, which itself reaches the upstream through the link.
import type { BenchContext, CacheName } from '../context.ts';
import { num, type Row, times } from '../row.ts';
import { skopeoPull } from '../skopeo.ts';

export async function coldPull(ctx: BenchContext): Promise<Row[]> {
  const img = ctx.bed.big;
  const dir = await ctx.scratch('pull');
  const seconds: Record<string, number> = {};
  seconds.direct = await skopeoPull(ctx.bed.relay.host, img.repository, img.tag, dir);
  ctx.log(`pull direct (through the link): ${num(seconds.direct)} s`);
  for (const name of ['berth', 'registry'] as CacheName[]) {
    const cache = await ctx.cold(name);
    try {
      seconds[name] = await skopeoPull(cache.host, img.repository, img.tag, dir);
    } finally {
      await cache.stop();
    }
    ctx.log(`pull ${name} (cold): ${num(seconds[name])} s`);
  }
  const { berth: b, registry: reg, direct } = seconds;
  const link = img.layer.size / ctx.bed.linkRate;
  return [
    {
      figure: 'pull',
      label: `cold pull ${img.nominal} image, skopeo (s)`,
      cells: { berth: num(b), registry: num(reg), direct: num(direct) },
      ratio: `${times(b, direct)} direct, ${times(b, reg)} docker-registry`,
      target: '≤ 1.05x direct',
      pass: b !== undefined && direct !== undefined && b <= 1.05 * direct,
      notes: [`link ${num(ctx.bed.linkRate / 1e6)} MB/s: the layer alone takes ${num(link)} s on it; each cache fresh and empty`],
    },
  ];
}
