// berth's memory with 64 concurrent streams of the cached 1 GiB blob. The clients read at a limited rate
// (curl --limit-rate), so berth has to hold back rather than buffer: RSS should stay low and flat.
import type { BenchContext } from '../context.ts';
import { blobUrl, curlMany, warmBlob } from '../measure.ts';
import { mb, num, type Row } from '../row.ts';
import { peakOf, procStatusBytes, type RssSample, sampleRss } from '../rss.ts';

const RSS_LIMIT = 150 * 1e6;

export async function rss64(ctx: BenchContext): Promise<Row[]> {
  const img = ctx.bed.huge!;
  const { berth } = await ctx.warm();
  await warmBlob(berth, img.repository, img.layer.digest, img.layer.size);
  const { rss64Streams: n, rss64Seconds: secs, rss64StreamRate: rate } = ctx.opts;
  const idle = berth.pids().reduce((s, pid) => s + procStatusBytes(pid), 0);
  ctx.log(`rss64: ${n} streams at ${num(rate / 1e6)} MB/s each for ${secs} s (berth idle RSS ${mb(idle)})`);
  const sampler = sampleRss(() => berth.pids(), 100);
  const r = await curlMany(blobUrl(berth, img.repository, img.layer.digest), n, { maxTimeSec: secs, limitRate: rate });
  const samples = sampler.stop();
  const received = r.results.reduce((s, x) => s + x.bytes, 0);
  const started = r.results.filter((x) => x.status === 200).length;
  const half = (samples.at(-1)?.t ?? 0) / 2;
  const first = peakOf(samples.filter((s) => s.t <= half));
  const second = peakOf(samples.filter((s) => s.t > half));
  const peak = Math.max(first, second);
  const flat = second <= first * 1.1;
  ctx.log(`rss64: peak ${mb(peak)} (first half ${mb(first)}, second half ${mb(second)}), ${mb(received)} served`);
  return [
    {
      figure: 'rss64',
      label: `berth RSS, ${n} concurrent ${img.nominal} streams (MB)`,
      cells: { berth: `${num(peak / 1e6)} peak` },
      ratio: `halves ${num(first / 1e6)} → ${num(second / 1e6)} MB`,
      target: '≤ 150 MB and flat',
      pass: peak <= RSS_LIMIT && flat && started === n,
      notes: [
        `${started}/${n} streams answered 200; ${mb(received)} served in ${secs} s (${num(received / 1e6 / r.wallSeconds)} MB/s aggregate); idle RSS before ${mb(idle)}`,
        `flat = peak of the second half ≤ 1.1x peak of the first half; VmRSS every 100 ms`,
        `trace (s: MB): ${trace(samples)}`,
      ],
    },
  ];
}

/** About ten points of the RSS curve. */
function trace(samples: readonly RssSample[]): string {
  const step = Math.max(1, Math.floor(samples.length / 10));
  return samples
    .filter((_, i) => i % step === 0 || i === samples.length - 1)
    .map((s) => `${(s.t / 1000).toFixed(1)}: ${num(s.bytes / 1e6)}`)
    .join(', ');
}
