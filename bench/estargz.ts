// `--only estargz` (issue #11): converting an ordinary 1 GiB gzip layer to eStargz — berth's converter
// beside `ctr-remote images convert --estargz` (MB/s of source layer, per CPU-second, peak RSS) — and on a
// node with the real stargz-snapshotter, the time to the first byte of a small file of the image: lazily
// from berth's converted `-esgz` tag against a full pull of the original tag from the same berth.
import { randomUUID } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { type Blob, digestOf, type Image, MediaTypes } from '../test/support/blobs.ts';
import { startContainerd } from '../test/support/containerd.ts';
import { baseLayer, buildLayer, pushImage } from '../test/support/images.ts';
import { httpRequest, metricValue } from '../test/support/links.ts';
import { guarded } from './cleanup.ts';
import type { BenchContext } from './context.ts';
import { CHUNK_SIZE, type Conversion, convertWithBerth, convertWithCtrRemote, GZIP_LEVEL } from './estargz-convert.ts';
import { buildMixedLayer, HELLO_PATH } from './estargz-layer.ts';
import { startNode } from './estargz-lazy.ts';
import { sizeName } from './options.ts';
import { bytesText, num, type Row, times } from './row.ts';
import { peakOf, sampleRss } from './rss.ts';
import { startBerthServer } from './systems.ts';

const REPO = 'lab/esgz-bench';
const SUFFIX = '-esgz'; // berth's default estargz.suffix

export async function estargzFigure(ctx: BenchContext): Promise<Row[]> {
  const dir = await ctx.scratch('estargz');
  const hello = `hello from the eStargz bench ${randomUUID()}\n`;
  const nominal = sizeName(ctx.opts.hugeBytes);
  ctx.log(`estargz: building a ${nominal} layer of mixed files…`);
  const layer = await buildMixedLayer(dir, ctx.opts.hugeBytes, hello);
  const image = runnableImage([await buildLayer(await baseLayer(), 'oci'), layer]);
  await pushImage(ctx.bed.up, REPO, '1', image);
  ctx.log(`estargz: ${layer.files} files, ${bytesText(layer.tarBytes)} of tar, ${bytesText(layer.size)} gzipped; berth's converter…`);
  const mine = await convertWithBerth(layer.path, dir);
  await rm(`${dir}/berth-converted.tar.gz`, { force: true });

  // No learning: a reconversion with a learned start-up set would run during the full pull and slow it.
  const berth = await startBerthServer(ctx.bed.up.url, { estargz: { learnAfter: 0 } });
  const node = await startNode(berth.host);
  try {
    ctx.log('estargz: ctr-remote images convert --estargz…');
    const store = guarded('containerd (ctr-remote)', await startContainerd());
    const theirs = await convertWithCtrRemote(store, `${ctx.bed.up.host}/${REPO}:1`, `${ctx.bed.up.host}/${REPO}:ctr-remote-esgz`, dir);
    await store.stop();
    ctx.log('estargz: berth converting on demand (GET the -esgz manifest until it is served)…');
    const sampler = sampleRss(berth.pids);
    const onDemand = await untilConverted(berth.url);
    const berthPeak = peakOf(sampler.stop());
    ctx.log(`estargz: converted by berth's server in ${num(onDemand)} s; lazy read through the snapshotter…`);
    const served = () => metricValue(berth.url, 'berth_bytes_served_total');
    const s0 = await served();
    const lazy = await node.lazy(`docker.io/${REPO}:1${SUFFIX}`, HELLO_PATH);
    const s1 = await served();
    const mounted = await node.fuseMounts();
    ctx.log(`estargz: lazy ${num(lazy.seconds)} s (${mounted} FUSE layers); full pull of the original…`);
    const full = await node.full(`docker.io/${REPO}:1`, HELLO_PATH);
    const s2 = await served();
    ctx.log(`estargz: full pull ${num(full.seconds)} s`);
    for (const [what, r] of [
      ['lazy', lazy],
      ['full', full],
    ] as const) {
      if (r.output !== hello) throw new Error(`the ${what} read printed ${JSON.stringify(r.output.slice(0, 80))}`);
    }
    const imageBytes = image.layers.reduce((n, l) => n + l.size, 0);
    if (s2 - s1 < imageBytes) throw new Error(`berth sent ${s2 - s1} blob bytes for the full pull of a ${imageBytes}-byte image: containerd did not fetch it`);
    if (mounted < 2) throw new Error(`the snapshotter mounted ${mounted} layers over FUSE, not both: the -esgz image was not pulled lazily`);
    const out = rows({
      nominal,
      sourceBytes: layer.size,
      tarBytes: layer.tarBytes,
      imageBytes,
      mine,
      theirs,
      onDemand,
      berthPeak,
      lazy: lazy.seconds,
      full: full.seconds,
      lazyBytes: s1 - s0,
      fullBytes: s2 - s1,
    });
    // The notes go to RESULTS.md; say them here too, for a --no-write run.
    for (const note of out.flatMap((r) => r.notes ?? [])) ctx.log(`estargz: ${note}`);
    return out;
  } finally {
    await node.stop();
    await berth.stop();
  }
}

interface Figures {
  nominal: string;
  sourceBytes: number;
  tarBytes: number;
  imageBytes: number;
  mine: Conversion & { baselineRssBytes: number };
  theirs: Conversion;
  onDemand: number;
  berthPeak: number;
  lazy: number;
  full: number;
  /** Blob bytes berth sent for each (berth_bytes_served_total). */
  lazyBytes: number;
  fullBytes: number;
}

function rows(f: Figures): Row[] {
  const settings = `chunk ${sizeName(CHUNK_SIZE)}, gzip level ${GZIP_LEVEL}`;
  const wall = (c: Conversion, bytes: number) => bytes / 1e6 / c.wallSeconds;
  const perCore = (c: Conversion, bytes: number) => bytes / 1e6 / c.cpuSeconds;
  const vsCtr = (b: number, c: number, unit: string) => `${times(b, c)} ctr-remote (${num(c)} ${unit})`;
  const mbps = [wall(f.mine, f.sourceBytes), wall(f.theirs, f.imageBytes)] as const;
  const core = [perCore(f.mine, f.sourceBytes), perCore(f.theirs, f.imageBytes)] as const;
  const rss = [f.mine.maxRssBytes / 1e6, f.theirs.maxRssBytes / 1e6] as const;
  const notes = [
    `source: one ${f.nominal} gzip layer of mixed files (${bytesText(f.sourceBytes)} gzipped, ${bytesText(f.tarBytes)} of tar); ${settings} for both converters`,
    `berth's converter: ${num(f.mine.wallSeconds)} s wall, ${num(f.mine.cpuSeconds)} s CPU, ${bytesText(f.mine.outBytes)} out; its process converting nothing peaks at ${bytesText(f.mine.baselineRssBytes)} (node + tsx)`,
    `ctr-remote images convert: ${num(f.theirs.wallSeconds)} s wall, ${num(f.theirs.cpuSeconds)} s CPU (with containerd's), ${bytesText(f.theirs.outBytes)} out (the whole image)`,
    `berth's server converting on demand (the -esgz tag asked for, source already upstream on loopback): ${num(f.onDemand)} s to the served manifest, berth's RSS peak ${bytesText(f.berthPeak)}`,
  ];
  return [
    { figure: 'estargz', label: `eStargz conversion of a ${f.nominal} layer (MB/s of gzip source)`, cells: { berth: num(mbps[0]) }, ratio: vsCtr(mbps[0], mbps[1], 'MB/s'), notes },
    { figure: 'estargz', label: 'eStargz conversion, per core (MB/s of source per CPU-second)', cells: { berth: num(core[0]) }, ratio: vsCtr(core[0], core[1], 'MB/s') },
    {
      figure: 'estargz',
      label: `eStargz conversion: peak RSS (MB)`,
      cells: { berth: num(rss[0]) },
      ratio: vsCtr(rss[0], rss[1], 'MB'),
      target: '≤ 256 MB (flat in layer size)',
      pass: rss[0] <= 256,
    },
    {
      figure: 'estargz',
      label: `first byte of a file via stargz-snapshotter, ${f.nominal} image (s)`,
      cells: { berth: num(f.lazy) },
      ratio: `${times(f.lazy, f.full)} full pull (${num(f.full)} s)`,
      target: '< full pull',
      pass: f.lazy < f.full,
      notes: [
        'lazy: ctr-remote i rpull of the -esgz tag + ctr run --snapshotter stargz cat FILE; full: ctr images pull of the original tag (overlayfs) + ctr run cat FILE; both from the same warm berth on loopback',
        `blob bytes berth sent: lazy ${bytesText(f.lazyBytes)}, full pull ${bytesText(f.fullBytes)}`,
      ],
    },
  ];
}

/** GETs the `-esgz` manifest until berth serves it (it answers 404 while the conversion runs): seconds taken. */
async function untilConverted(berthUrl: string): Promise<number> {
  const t0 = performance.now();
  const deadline = Date.now() + 1_800_000;
  for (;;) {
    const r = await httpRequest(berthUrl, `/v2/${REPO}/manifests/1${SUFFIX}`, { headers: { accept: MediaTypes.oci.manifest }, timeoutMs: 600_000 });
    if (r.status === 200) return (performance.now() - t0) / 1000;
    if (r.status !== 404 || Date.now() > deadline) throw new Error(`berth answered ${r.status} for ${REPO}:1${SUFFIX}: ${r.body.toString().slice(0, 300)}`);
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

/** An OCI image (linux/amd64) of these layers; the first holds busybox so containers run. */
function runnableImage(layers: Blob[]): Image {
  const configBytes = Buffer.from(
    JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      created: '1970-01-01T00:00:00Z',
      config: { Env: ['PATH=/bin'], Cmd: ['/bin/sh'] },
      rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diffId) },
      history: layers.map(() => ({ created: '1970-01-01T00:00:00Z', created_by: 'berth bench/estargz' })),
    }),
  );
  const config: Blob = { digest: digestOf(configBytes), size: configBytes.length, mediaType: MediaTypes.oci.config, bytes: configBytes };
  const d = (b: Blob) => ({ mediaType: b.mediaType, digest: b.digest, size: b.size });
  const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaTypes.oci.manifest, config: d(config), layers: layers.map(d) }));
  return { manifest, manifestDigest: digestOf(manifest), mediaType: MediaTypes.oci.manifest, config, layers, platform: { architecture: 'amd64', os: 'linux' } };
}
