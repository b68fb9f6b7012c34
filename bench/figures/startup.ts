// berth's start-up time with a big index (100,000 blobs, 10,000 tags): from spawning
// `berth serve --config FILE` to the first answer to GET /v2/. An empty storage dir for comparison.
import http from 'node:http';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePort } from '../../test/support/ports.ts';
import { spawnBerth, writeBerthConfig } from '../berth-process.ts';
import { buildIndex } from '../big-index.ts';
import { guarded } from '../cleanup.ts';
import type { BenchContext } from '../context.ts';
import { median } from '../measure.ts';
import { num, type Row } from '../row.ts';
import { procStatusBytes } from '../rss.ts';

export async function startup(ctx: BenchContext): Promise<Row[]> {
  const { startupBlobs: blobs, startupTags: tags, startupRuns: runs } = ctx.opts;
  const dir = await ctx.scratch('startup');
  const big = path.join(dir, 'big');
  const empty = path.join(dir, 'empty');
  const t0 = performance.now();
  await buildIndex(big, blobs, tags);
  ctx.log(`startup: index with ${blobs} blobs and ${tags} tags built in ${num((performance.now() - t0) / 1000)} s`);
  await timeStart(dir, empty, ctx.bed.relay.url()); // warms the OS file cache; not counted
  const bigTimes: number[] = [];
  const emptyTimes: number[] = [];
  const rss: number[] = [];
  const rssEmpty: number[] = [];
  for (let i = 0; i < runs; i++) {
    const s = await timeStart(dir, big, ctx.bed.relay.url());
    bigTimes.push(s.seconds);
    rss.push(s.rss);
    const e = await timeStart(dir, empty, ctx.bed.relay.url());
    emptyTimes.push(e.seconds);
    rssEmpty.push(e.rss);
    ctx.log(`startup run ${i + 1}: big index ${num(bigTimes.at(-1))} s, empty ${num(emptyTimes.at(-1))} s`);
  }
  const b = median(bigTimes);
  const e = median(emptyTimes);
  return [
    {
      figure: 'startup',
      label: `start-up, ${blobs.toLocaleString('en-US')} blobs + ${tags.toLocaleString('en-US')} tags indexed (s)`,
      cells: { berth: num(b) },
      ratio: `empty index ${num(e)} s`,
      target: '≤ 2 s',
      pass: b <= 2,
      notes: [
        `RSS when it first answered (median): big index ${num(median(rss) / 1e6)} MB, empty index ${num(median(rssEmpty) / 1e6)} MB`,
        `spawn of \`node --import tsx src/main.ts serve --config FILE\` to first GET /v2/ answer (polled every 5 ms); median of ${runs}; runs: ${bigTimes.map((x) => num(x)).join(', ')}`,
      ],
    },
  ];
}

/** Seconds from spawn to the first HTTP answer on /v2/, and VmRSS then; the process is stopped afterwards. */
async function timeStart(dir: string, storage: string, upstreamUrl: string): Promise<{ seconds: number; rss: number }> {
  const port = await freePort();
  const config = path.join(dir, `berth-${port}.yaml`);
  await writeBerthConfig(config, { port, storage, upstreamUrl });
  const t0 = performance.now();
  const proc = spawnBerth(config, path.join(dir, 'berth.log'));
  const handle = guarded('berth (start-up)', { stop: () => proc.stop() });
  try {
    const deadline = t0 + 60_000;
    for (;;) {
      if (await answers(`http://127.0.0.1:${port}/v2/`)) return { seconds: (performance.now() - t0) / 1000, rss: procStatusBytes(proc.pid) };
      if (!proc.running) throw new Error(`berth exited during start-up; see ${path.join(dir, 'berth.log')}`);
      if (performance.now() > deadline) throw new Error('berth did not answer GET /v2/ within 60 s');
      await sleep(5);
    }
  } finally {
    await handle.stop();
  }
}

function answers(url: string): Promise<boolean> {
  return new Promise((resolve) => {
    const req = http.get(url, { agent: false, timeout: 1000 }, (res) => {
      res.resume();
      resolve(true);
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(false));
  });
}
