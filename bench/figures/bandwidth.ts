// The bandwidth budget (issue #3): how close berth holds a cold transfer to `bandwidth.limit` over 20 s,
// how evenly two concurrent transfers share it, and how long a manifest takes while a background fill
// (prewarm) has the whole budget. berth reaches the upstream directly here: the budget is the only limit.
import { request } from 'undici';
import type { BenchContext } from '../context.ts';
import { blobUrl, curl } from '../measure.ts';
import { num, type Row } from '../row.ts';
import { startBerthServer } from '../systems.ts';

const ACCEPT = 'application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json';

export async function bandwidth(ctx: BenchContext): Promise<Row[]> {
  const { big, huge, small } = ctx.bed;
  if (!huge) throw new Error('the bandwidth figure needs the huge image');
  const seconds = ctx.opts.quick ? 8 : 20;
  // A limit the blobs cannot outrun in the window, so every figure is a steady state.
  const limit = Math.floor(Math.min(big.layer.size, huge.layer.size) / (seconds * 1.5));
  const extra = { bandwidth: { limit } };
  const notes: string[] = [`limit ${num(limit / 1e6)} MB/s (bandwidth.limit), window ${seconds} s, curl --max-time`];

  let one = await startBerthServer(ctx.bed.up.url, extra);
  let rate = 0;
  try {
    const r = await curl(blobUrl(one, huge.repository, huge.layer.digest), { maxTimeSec: seconds });
    rate = r.bytes / r.seconds;
    notes.push(`one transfer: ${num(r.bytes / 1e6)} MB in ${num(r.seconds)} s`);
  } finally {
    await one.stop();
  }

  one = await startBerthServer(ctx.bed.up.url, extra);
  let a = 0;
  let b = 0;
  try {
    const [ra, rb] = await Promise.all([
      curl(blobUrl(one, big.repository, big.layer.digest), { maxTimeSec: seconds }),
      curl(blobUrl(one, huge.repository, huge.layer.digest), { maxTimeSec: seconds }),
    ]);
    a = ra.bytes / ra.seconds;
    b = rb.bytes / rb.seconds;
    notes.push(`two transfers: ${num(a / 1e6)} and ${num(b / 1e6)} MB/s, together ${num((a + b) / 1e6)} MB/s`);
  } finally {
    await one.stop();
  }

  one = await startBerthServer(ctx.bed.up.url, extra);
  let manifestMs = 0;
  try {
    // Prewarm the huge image through the running berth: its fill runs at background priority.
    const prewarm = request(`${one.url}/_berth/prewarm`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ references: [`docker.io/${huge.repository}:1`] }),
      bodyTimeout: 0,
    }).then(
      (r) => r.body.dump(),
      () => undefined,
    );
    await new Promise((r) => setTimeout(r, 2000));
    const t0 = performance.now();
    const res = await request(`${one.url}/v2/${small.repository}/manifests/1`, { headers: { accept: ACCEPT } });
    await res.body.dump();
    manifestMs = performance.now() - t0;
    notes.push(`manifest of ${small.repository}:1 (uncached, fetched under the budget) answered ${res.statusCode} in ${num(manifestMs)} ms while the prewarm of ${huge.repository} held the budget`);
    void prewarm;
  } finally {
    await one.stop();
  }

  const accuracy = rate / limit;
  const fairness = Math.min(a, b) / Math.max(a, b);
  ctx.log(`bandwidth: ${num(rate / 1e6)} MB/s of ${num(limit / 1e6)} (${num(accuracy * 100)}%), shares ${num(fairness * 100)}%, manifest ${num(manifestMs)} ms`);
  return [
    {
      figure: 'bandwidth',
      label: `bandwidth: achieved / limit over ${seconds} s`,
      cells: { berth: `${num(accuracy * 100)}%` },
      target: 'within 5%',
      pass: Math.abs(accuracy - 1) <= 0.05,
      notes,
    },
    {
      figure: 'bandwidth',
      label: 'bandwidth: two transfers, slower / faster',
      cells: { berth: `${num(fairness * 100)}%` },
      target: 'within 10%',
      pass: fairness >= 0.9,
    },
    {
      figure: 'bandwidth',
      label: 'bandwidth: manifest while a background fill holds the budget (ms)',
      cells: { berth: num(manifestMs) },
      target: '(foreground first)',
      pass: undefined,
    },
  ];
}
