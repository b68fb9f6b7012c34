// The real stargz-snapshotter pulling lazily through berth (issue #11, "End to end with real clients"):
// `ctr-remote i rpull` through berth, the layers FUSE-mounted by containerd-stargz-grpc, `ctr run
// --snapshotter stargz` printing a file of the image, and only a small part of the big layer fetched.
// First an image that is eStargz upstream (converted by ctr-remote): what reached the upstream is a small
// part of its big layer (berth with `lazyFill: on-demand`, so nothing is completed behind the reader's back).
// Then the point of the issue: an ordinary gzip image asked for as `<tag>-esgz`, converted by berth, pulled
// lazily — berth sent a small part of the converted big layer, the upstream sent the source layer once.
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import zlib from 'node:zlib';
import { blobBytesServed } from './support/accesslog.ts';
import { type InProcessBerth, startBerth } from './support/berth.ts';
import { mirrorHostsToml } from './support/containerd.ts';
import { FOOTER_SIZE, parseFooter, parseTocMember } from './support/estargz.ts';
import { baseLayer, buildImage, type Image, imagesAreRunnable, MediaTypes, pushImage } from './support/images.ts';
import { httpRequest, sha256, upstreamTrafficSince } from './support/links.ts';
import { type Stargz, startStargz } from './support/stargz.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const MB = 1_000_000;
const BIG = 60 * MB;

interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
}

/** The image manifest under `repo:tag` on the upstream, read directly (not through berth). */
async function upstreamManifest(up: Upstream, repo: string, tag: string): Promise<{ layers: Descriptor[] }> {
  const res = await httpRequest(up.url, `/v2/${repo}/manifests/${tag}`, { headers: { accept: MediaTypes.oci.manifest } });
  assert.equal(res.status, 200, `upstream ${repo}:${tag}: ${res.body.toString()}`);
  return JSON.parse(res.body.toString()) as { layers: Descriptor[] };
}

const biggest = (layers: Descriptor[]): Descriptor => layers.reduce((a, b) => (b.size > a.size ? b : a));

const TOC_DIGEST = 'containerd.io/snapshot/stargz/toc.digest';
const UNCOMPRESSED_SIZE = 'io.containers.estargz.uncompressed-size';

/** The image manifest berth serves for `repo:tag` (as containerd asks: with ?ns=). */
async function berthManifest(b: InProcessBerth, repo: string, tag: string): Promise<{ layers: Descriptor[] }> {
  const res = await httpRequest(b.url, `/v2/${repo}/manifests/${tag}?ns=docker.io`, { headers: { accept: MediaTypes.oci.manifest } });
  assert.equal(res.status, 200, `berth ${repo}:${tag}: ${res.body.toString()}`);
  return JSON.parse(res.body.toString()) as { layers: Descriptor[] };
}

/** Blob bytes berth has sent to clients so far (berth_bytes_served_total, every source). */
async function blobBytesServedBy(b: InProcessBerth): Promise<number> {
  const metric = await b.berth.metrics.bytesServed.get();
  return metric.values.reduce((n, v) => n + v.value, 0);
}

describe('stargz-snapshotter pulls lazily through berth', () => {
  let up: Upstream;
  let b: InProcessBerth;
  let sgz: Stargz;
  let work: string;
  let app: Image;
  let bigFile: Buffer;
  const greeting = `hello from a lazily pulled layer ${randomUUID()}\n`;

  before(async () => {
    assert.ok(await imagesAreRunnable(), 'no static busybox on this machine (Debian package busybox-static): the images cannot run');
    work = await makeTempDir('estargz-snapshotter');
    up = await startUpstream();
    // A runnable image: busybox, then a layer with a big file and a small one.
    bigFile = randomBytes(BIG);
    app = await buildImage({ format: 'oci', layers: [await baseLayer(), { files: { 'data/big.bin': bigFile, 'etc/berth/greeting.txt': greeting } }] });
    await pushImage(up, 'lab/app', '1', app);
    // learnAfter 0: no reconversion with a learned start-up set while a test reads (learning has tests of its own);
    // a generous waitFor so that rpull's manifest request waits for the conversion on a busy machine.
    b = await startBerth({ upstreams: [{ host: 'docker.io', url: up.url }], lazyFill: 'on-demand', estargz: { waitFor: '180s', learnAfter: 0 } });
    sgz = await startStargz({ mirrors: { 'docker.io': b.host } });
    await sgz.writeHosts('docker.io', mirrorHostsToml(b.url));
  });

  after(async () => {
    await sgz?.stop();
    await b?.stop();
    await up?.stop();
    if (work) await removeTempDir(work);
  });

  describe('an image that is eStargz upstream (converted by ctr-remote)', () => {
    before(async () => {
      // ctr-remote converts in containerd's content store: fetch the ordinary image straight from the
      // upstream (loopback, plain http) into a namespace of its own, convert, push the result back.
      const opts = { namespace: 'convert', timeoutMs: 300_000 };
      const src = `${up.host}/lab/app:1`;
      const dst = `${up.host}/lab/app-ctr-remote:1`;
      await sgz.ctr(['content', 'fetch', '--plain-http', src], opts);
      await sgz.ctrRemote(['images', 'convert', '--estargz', '--oci', '--estargz-compression-level', '1', src, dst], opts);
      await sgz.ctr(['images', 'push', '--plain-http', dst], opts);
    });

    test('rpull mounts its layers over FUSE, ctr run prints a small file, the big layer stays mostly unread', async () => {
      const esgz = await upstreamManifest(up, 'lab/app-ctr-remote', '1');
      assert.ok(
        esgz.layers.every((l) => l.annotations?.[TOC_DIGEST]),
        'ctr-remote did not produce eStargz layers',
      );
      const big = biggest(esgz.layers);
      assert.ok(big.size > BIG, `the big layer is ${big.size} bytes`);
      const mark = up.logLineCount();

      await sgz.rpull('docker.io/lab/app-ctr-remote:1');
      const fuse = await sgz.fuseMounts();
      assert.ok(fuse.length >= esgz.layers.length, `expected a FUSE mount per layer under ${sgz.snapshotterRoot}, got ${JSON.stringify(fuse)}`);

      const out = await sgz.run('docker.io/lab/app-ctr-remote:1', ['cat', '/etc/berth/greeting.txt']);
      assert.equal(out, greeting);

      // Everything the upstream sent since the mark (its log written up to a sentinel request sent now).
      const traffic = await upstreamTrafficSince(up, mark);
      const bigRead = blobBytesServed(traffic, big.digest);
      assert.ok(bigRead > 0, 'berth never asked the upstream for the big layer');
      assert.ok(bigRead < big.size / 10, `the upstream sent ${bigRead} of the big layer's ${big.size} bytes`);
    });
  });

  describe('an ordinary gzip image asked for as <tag>-esgz, converted by berth', () => {
    test('rpull of lab/app:1-esgz mounts the converted layers over FUSE, ctr run prints a small file; berth sent a small part of the big layer, the upstream the source once', async () => {
      const source = app.layers[1]!;
      const mark = up.logLineCount();
      const servedBefore = await blobBytesServedBy(b);
      const mountsBefore = (await sgz.fuseMounts()).length;

      await sgz.rpull('docker.io/lab/app:1-esgz', { timeoutMs: 300_000 });
      const converted = await berthManifest(b, 'lab/app', '1-esgz');
      assert.equal(converted.layers.length, app.layers.length);
      assert.ok(
        converted.layers.every((l) => l.annotations?.[TOC_DIGEST] && l.annotations[UNCOMPRESSED_SIZE]),
        'berth served layers without the eStargz annotations',
      );
      const big = biggest(converted.layers);
      assert.ok(!app.layers.some((l) => l.digest === big.digest), 'the big layer was not converted');
      const mounts = await sgz.fuseMounts();
      assert.ok(mounts.length >= mountsBefore + converted.layers.length, `expected ${converted.layers.length} more FUSE mounts under ${sgz.snapshotterRoot}, got ${JSON.stringify(mounts)}`);

      const out = await sgz.run('docker.io/lab/app:1-esgz', ['cat', '/etc/berth/greeting.txt']);
      assert.equal(out, greeting);

      const served = (await blobBytesServedBy(b)) - servedBefore;
      assert.ok(served < big.size / 10, `berth sent ${served} blob bytes for a lazy start; the converted big layer is ${big.size}`);
      const traffic = await up.waitForAccess((es) => blobBytesServed(es, source.digest) >= source.size, { since: mark, timeoutMs: 60_000 });
      const sourceGets = traffic.filter((e) => e.method === 'GET' && e.path.split('?')[0]!.endsWith(`/blobs/${source.digest}`));
      assert.equal(sourceGets.length, 1, `the upstream was asked for the source layer ${sourceGets.length} times`);
      assert.equal(blobBytesServed(traffic, source.digest), source.size, 'the upstream sent the source layer other than once in full');
      assert.ok(!traffic.some((e) => e.path.includes('1-esgz')), 'berth asked the upstream for the -esgz tag');
    });
  });

  describe('the converted big file read by Range as the snapshotter reads it', () => {
    // The small-file path (probe, HEAD, footer, TOC, one member) is test/estargz-serve's; this is a chunk in the
    // middle of a file that spans many 4 MiB members, checked against the original bytes.
    test('footer, TOC, then one chunk in the middle of the 60 MB file: its chunkDigest and the original bytes', async () => {
      const converted = await berthManifest(b, 'lab/app', '1-esgz');
      const big = biggest(converted.layers);
      const blob = `/v2/lab/app/blobs/${big.digest}?ns=docker.io`;
      const range = async (from: number, to: number): Promise<Buffer> => {
        const res = await httpRequest(b.url, blob, { headers: { range: `bytes=${from}-${to}` } });
        assert.equal(res.status, 206, `Range bytes=${from}-${to}: ${res.status}`);
        assert.equal(res.headers['content-range'], `bytes ${from}-${to}/${big.size}`);
        return res.body;
      };
      const servedBefore = await blobBytesServedBy(b);
      const tocOffset = parseFooter(await range(big.size - FOOTER_SIZE, big.size - 1));
      const { toc, json } = parseTocMember(await range(tocOffset, big.size - FOOTER_SIZE - 1));
      assert.equal(sha256(json), big.annotations?.[TOC_DIGEST], 'the TOC digest annotation is not the TOC read back');

      type Chunk = (typeof toc.entries)[number] & { chunkOffset?: number; chunkSize?: number };
      const chunks = toc.entries.filter((e) => e.name === 'data/big.bin' && e.offset !== undefined) as Chunk[];
      assert.ok(chunks.length >= BIG / (4 << 20), `data/big.bin has ${chunks.length} chunks, not one per 4 MiB`);
      const middle = chunks[Math.floor(chunks.length / 2)]!;
      const next = Math.min(...toc.entries.filter((e) => (e.offset ?? 0) > middle.offset!).map((e) => e.offset!), tocOffset);
      const bytes = zlib.gunzipSync(await range(middle.offset!, next - 1)).subarray(0, middle.chunkSize);
      const from = middle.chunkOffset ?? 0;
      assert.equal(bytes.length, middle.chunkSize);
      assert.equal(sha256(bytes), middle.chunkDigest, 'the chunk does not match its chunkDigest');
      assert.ok(bytes.equals(bigFile.subarray(from, from + bytes.length)), 'the chunk is not the original bytes at its chunkOffset');

      const served = (await blobBytesServedBy(b)) - servedBefore;
      assert.ok(served < 2 * (4 << 20), `berth sent ${served} bytes for a footer, a TOC and one 4 MiB chunk`);
    });
  });
});
