// `npm run bench [-- --quick] [--only a,b] [--link-rate 20MB/s] [--no-write]`: starts the upstream, berth,
// docker-registry (proxy mode), nginx and the link relay on loopback, measures every figure, prints one
// table and writes bench/RESULTS.md. Everything started is stopped by PID at the end, on errors and on Ctrl-C.
import os from 'node:os';
import path from 'node:path';
import { installSignalHandlers, isStopping, stopAll } from './cleanup.ts';
import { type BenchContext, createContext } from './context.ts';
import { estargzFigure } from './estargz.ts';
import { bandwidth } from './figures/bandwidth.ts';
import { cachedEightClients, cachedOneClient } from './figures/cached.ts';
import { clusterFigure } from './figures/cluster.ts';
import { coldConcurrent } from './figures/cold-concurrent.ts';
import { coldLatency } from './figures/cold-latency.ts';
import { coldPull } from './figures/cold-pull.ts';
import { coldRange } from './figures/cold-range.ts';
import { headBlob, manifestByTag } from './figures/requests.ts';
import { rss64 } from './figures/rss64.ts';
import { s3Driver } from './figures/s3.ts';
import { startup } from './figures/startup.ts';
import { machineInfo } from './machine.ts';
import { FIGURES, type FigureName, parseOptions, sizeName } from './options.ts';
import { misses, renderMarkdown, renderTable, writeResults } from './report.ts';
import { errorRow, type Row } from './row.ts';
import { startTestbed } from './testbed.ts';
import { ensureTools } from './tools.ts';

const RUNNERS: Record<FigureName, { title: string; run: (ctx: BenchContext) => Promise<Row[]> }> = {
  blob1: { title: 'cached blob, 1 client', run: cachedOneClient },
  blob8: { title: 'cached blob, 8 clients', run: cachedEightClients },
  manifest: { title: 'manifest GET by tag', run: manifestByTag },
  head: { title: 'HEAD blob', run: headBlob },
  pull: { title: 'cold pull', run: coldPull },
  cold8: { title: '8 concurrent cold GETs', run: coldConcurrent },
  range: { title: 'cold Range', run: coldRange },
  bandwidth: { title: 'bandwidth budget', run: bandwidth },
  rss64: { title: 'berth RSS, 64 streams', run: rss64 },
  startup: { title: 'start-up with a big index', run: startup },
  coldsmall: { title: 'cold small-object latency', run: coldLatency },
  estargz: { title: 'eStargz conversion and lazy pull', run: estargzFigure },
  s3: { title: 's3 storage driver, cached (Ceph RGW)', run: s3Driver },
  cluster: { title: 'three replicas vs one (PostgreSQL)', run: clusterFigure },
};

async function main(): Promise<number> {
  installSignalHandlers();
  const opts = parseOptions(process.argv.slice(2));
  const started = performance.now();
  await ensureTools();
  const machine = await machineInfo();
  if (machine.loadAtStart > 0.5) {
    process.stderr.write(`note: load average ${machine.loadAtStart.toFixed(2)} before the bench: other work on this machine will skew the figures\n`);
  }
  const needsHuge = opts.only.has('blob1') || opts.only.has('rss64') || opts.only.has('bandwidth');
  const rows: Row[] = [];
  try {
    process.stderr.write(`seeding the upstream (${sizeName(opts.bigBytes)}${needsHuge ? ` + ${sizeName(opts.hugeBytes)}` : ''} layers)…\n`);
    const bed = await startTestbed({ bigBytes: opts.bigBytes, hugeBytes: needsHuge ? opts.hugeBytes : undefined, linkRate: opts.linkRate });
    const ctx = createContext(opts, bed);
    ctx.log(`upstream ${bed.up.url}, link relay ${bed.relay.url()} at ${opts.linkRate / 1e6} MB/s`);
    for (const name of FIGURES) {
      if (!opts.only.has(name)) continue;
      if (isStopping()) break; // Ctrl-C: the signal handler is stopping everything and will exit
      const { title, run } = RUNNERS[name];
      ctx.log(`— ${name}: ${title}`);
      try {
        rows.push(...(await run(ctx)));
      } catch (err) {
        ctx.log(`${name} failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
        rows.push(errorRow(name, title, err));
      }
    }
  } finally {
    await stopAll();
  }
  const elapsed = (performance.now() - started) / 1000;
  console.log(`\n${renderTable(rows)}\n`);
  const missed = misses(rows);
  console.log(missed.length === 0 ? 'berth met every target.' : `berth missed: ${missed.map((r) => `${r.label}${r.notes?.[0]?.startsWith('ERROR') ? ` (${r.notes[0]})` : ''}`).join('; ')}`);
  if (opts.write) {
    const file = path.join(import.meta.dirname, 'RESULTS.md');
    await writeResults(file, renderMarkdown(rows, machine, opts, elapsed, os.loadavg()[0]!));
    console.log(`wrote ${path.relative(process.cwd(), file)} (${Math.round(elapsed)} s)`);
  }
  return 0;
}

main().then(
  (code) => process.exit(code),
  async (err: unknown) => {
    console.error(err instanceof Error ? (err.stack ?? err.message) : String(err));
    await stopAll();
    process.exit(1);
  },
);
