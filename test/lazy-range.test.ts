// Lazy Range reads over a slow link (issue #3, "constrained links"): a client that wants a few bytes of a
// big uncached layer (stargz-snapshotter, a tool reading a tar index) gets them at once, and the upstream is
// asked for little more than those bytes. With `lazyFill: background` the rest of the blob then arrives in the
// background and is committed and verified; with `lazyFill: on-demand` nothing more is fetched. Multi-range
// requests work on a cold blob, and a real eStargz layer can be read file by file the way
// stargz-snapshotter does.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { open } from 'node:fs/promises';
import { after, before, describe, test } from 'node:test';
import zlib from 'node:zlib';
import { blobBytesServed } from './support/accesslog.ts';
import { type BerthOptions, type InProcessBerth, startBerth } from './support/berth.ts';
import { buildEstargzLayer, type EstargzLayer, estargzImage, FOOTER_SIZE, parseFooter, parseTocMember } from './support/estargz.ts';
import { type Blob, buildImage, type Image, MediaTypes, pushImage } from './support/images.ts';
import { httpRequest, parseByteranges, sha256, upstreamTrafficSince, waitUntil } from './support/links.ts';
import { type Relay, type RelayOptions, startRelay } from './support/relay.ts';
import { committed } from './support/storage.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const MB = 1_000_000;
const KiB = 1024;
/** Headers of one upstream response, and the slack of a relay that forwards in slices. */
const RESPONSE_OVERHEAD = 2 * KiB;

let up: Upstream;
let work: string;
let huge: Image; // one ~100 MB layer
let stargz: Image;
let stargzLayer: EstargzLayer;
const GREETING = `hello from a lazily pulled file ${Date.now()}\n`.repeat(40);
const cleanups: Array<() => Promise<unknown>> = [];

before(async () => {
  work = await makeTempDir('lazy-range');
  up = await startUpstream();
  huge = await buildImage({ format: 'oci', layers: [{ randomBytes: 100 * MB, dir: work }] });
  stargzLayer = buildEstargzLayer([
    ['usr/lib/big-before.bin', randomBytes(3 * MB)],
    ['etc/berth/greeting.txt', GREETING],
    ['usr/lib/big-after.bin', randomBytes(1 * MB)],
    ['etc/hostname', 'lazy\n'],
  ]);
  stargz = estargzImage(stargzLayer);
  await pushImage(up, 'lab/huge', '1', huge);
  await pushImage(up, 'lab/stargz', '1', stargz);
});

after(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
  await up?.stop();
  if (work) await removeTempDir(work);
});

async function relay(o: Omit<RelayOptions, 'target'> = {}): Promise<Relay> {
  const r = await startRelay({ target: { host: '127.0.0.1', port: up.port }, ...o });
  cleanups.push(() => r.close());
  return r;
}

async function berthVia(r: Relay, o: Partial<BerthOptions> = {}): Promise<InProcessBerth> {
  const b = await startBerth({ upstreams: [{ host: r.host, url: r.url() }], ...o });
  cleanups.push(() => b.stop());
  return b;
}

const layerOf = (img: Image): Blob => img.layers[0]!;

/** What a real client does first: GET the manifest through berth (so berth knows the layer's size). */
async function getManifest(b: InProcessBerth, repo: string, img: Image): Promise<void> {
  const res = await httpRequest(b.url, `/v2/${repo}/manifests/1`, { headers: { accept: MediaTypes.oci.manifest } });
  assert.equal(res.status, 200);
  assert.equal(sha256(res.body), img.manifestDigest);
}

/** Bytes [start, end] of a blob, from the file it was built in. */
async function slice(blob: Blob, start: number, end: number): Promise<Buffer> {
  if (blob.bytes) return blob.bytes.subarray(start, end + 1);
  const fh = await open(blob.path!, 'r');
  try {
    const buf = Buffer.alloc(end - start + 1);
    await fh.read(buf, 0, buf.length, start);
    return buf;
  } finally {
    await fh.close();
  }
}

async function getRange(b: InProcessBerth, repo: string, blob: Blob, start: number, end: number) {
  const res = await httpRequest(b.url, `/v2/${repo}/blobs/${blob.digest}`, { headers: { range: `bytes=${start}-${end}` } });
  assert.equal(res.status, 206, res.body.subarray(0, 300).toString());
  assert.equal(res.headers['content-range'], `bytes ${start}-${end}/${blob.size}`);
  assert.ok(res.body.equals(await slice(blob, start, end)), `bytes ${start}-${end} are the blob's`);
  return res;
}

describe('lazy Range reads of uncached blobs', () => {
  test('the last 64 KiB of an uncached 100 MB layer arrive in under 2 s over a 2 MB/s link; the rest then completes in the background, verified', async () => {
    const blob = layerOf(huge);
    const link = await relay({ rateBytesPerSec: 2 * MB });
    const berth = await berthVia(link); // lazyFill: background is the default
    await getManifest(berth, 'lab/huge', huge);
    const mark = up.logLineCount();

    const start = blob.size - 64 * KiB;
    const res = await getRange(berth, 'lab/huge', blob, start, blob.size - 1);
    assert.ok(res.totalMs < 2_000, `the range took ${Math.round(res.totalMs)} ms; the whole layer would take 50 s on this link`);
    // The background completion starts as soon as the client has left, so the link's byte count is already
    // its bytes too. The upstream's log says what the range cost: its request is the one done (the
    // completion's cannot end in under 50 s on this link).
    const blobPath = `/v2/lab/huge/blobs/${blob.digest}`;
    const done = await up.waitForAccess((es) => es.some((e) => e.path === blobPath), { since: mark });
    const gets = done.filter((e) => e.path === blobPath).map((e) => [e.method, e.status, e.bytes]);
    assert.deepEqual(gets, [['GET', 206, 64 * KiB]], 'the range cost the upstream one Range GET of its 64 KiB');

    link.setRate(undefined); // let the background completion run at loopback speed
    await waitUntil('the blob to be committed by the background fill', () => committed(berth, blob.digest), 60_000, 50);
    const full = await httpRequest(berth.url, `/v2/lab/huge/blobs/${blob.digest}`);
    const afterCommit = link.bytesDown;
    assert.equal(full.status, 200);
    assert.equal(sha256(full.body), blob.digest, 'the completed blob is byte for byte the upstream one');
    assert.equal(link.bytesDown, afterCommit, 'the full GET after completion cost the upstream nothing');
    const served = blobBytesServed(await upstreamTrafficSince(up, mark), blob.digest);
    assert.equal(served, blob.size, 'the upstream sent every byte of the blob exactly once (range, then the rest)');
  });

  test('with lazyFill on-demand only what was read is fetched, and the same range again costs nothing', async () => {
    const blob = layerOf(huge);
    const link = await relay();
    const berth = await berthVia(link, { lazyFill: 'on-demand' });
    // a background berth doing the same reads is the clock: once it has completed its blob, on-demand would have too
    const controlLink = await relay();
    const control = await berthVia(controlLink);
    await getManifest(berth, 'lab/huge', huge);
    await getManifest(control, 'lab/huge', huge);

    const before = link.bytesDown;
    const reads: Array<[number, number]> = [
      [blob.size - 64 * KiB, blob.size - 1],
      [40 * MB, 40 * MB + 1024 * KiB - 1],
    ];
    for (const [s, e] of reads) {
      await getRange(berth, 'lab/huge', blob, s, e);
      await getRange(control, 'lab/huge', blob, s, e);
    }
    const readBytes = reads.reduce((n, [s, e]) => n + e - s + 1, 0);
    const cost = link.bytesDown - before;
    assert.ok(cost <= readBytes + reads.length * RESPONSE_OVERHEAD, `the upstream sent ${cost} bytes for ${readBytes} read`);

    const again = link.bytesDown;
    await getRange(berth, 'lab/huge', blob, reads[0]![0], reads[0]![1]);
    assert.equal(link.bytesDown, again, 'the same range again is served from disk');

    await waitUntil('the background berth to complete its blob', () => committed(control, blob.digest), 60_000, 50);
    assert.equal(link.bytesDown, again, 'on-demand fetched nothing more in the meantime');
    assert.equal(committed(berth, blob.digest), false);

    // a client that then wants the whole blob gets it, and only the missing bytes are fetched
    const full = await httpRequest(berth.url, `/v2/lab/huge/blobs/${blob.digest}`);
    assert.equal(sha256(full.body), blob.digest);
    const total = link.bytesDown - before;
    assert.ok(total <= blob.size + 8 * RESPONSE_OVERHEAD, `the upstream sent ${total} bytes in all for a ${blob.size}-byte blob`);
  });

  test('a multi-range request on a cold blob returns every part right and fetches only those parts', async () => {
    const blob = layerOf(huge);
    const link = await relay();
    const berth = await berthVia(link, { lazyFill: 'on-demand' });
    await getManifest(berth, 'lab/huge', huge);
    const ranges: Array<[number, number]> = [
      [0, 99],
      [50 * MB, 50 * MB + 49_999],
      [blob.size - 10, blob.size - 1],
    ];
    const before = link.bytesDown;
    const res = await httpRequest(berth.url, `/v2/lab/huge/blobs/${blob.digest}`, {
      headers: { range: `bytes=${ranges.map(([s, e]) => `${s}-${e}`).join(',')}`, 'accept-encoding': 'identity' },
    });
    assert.equal(res.status, 206);
    assert.match(String(res.headers['content-type']), /^multipart\/byteranges; boundary=/);
    const parts = parseByteranges(String(res.headers['content-type']), res.body);
    assert.deepEqual(
      parts.map((p) => [p.start, p.end, p.size]),
      ranges.map(([s, e]) => [s, e, blob.size]),
    );
    for (const p of parts) assert.ok(p.body.equals(await slice(blob, p.start, p.end)), `part ${p.contentRange} is right`);
    const wanted = ranges.reduce((n, [s, e]) => n + e - s + 1, 0);
    const cost = link.bytesDown - before;
    assert.ok(cost <= wanted + ranges.length * RESPONSE_OVERHEAD, `the upstream sent ${cost} bytes for ${wanted} asked`);
  });

  test('with lazyFill on-demand, a Range read of a blob whose manifest berth has not seen is answered at once', async () => {
    const blob = layerOf(huge);
    const link = await relay({ rateBytesPerSec: 2 * MB });
    const berth = await berthVia(link, { lazyFill: 'on-demand' });
    const before = link.bytesDown;
    const res = await httpRequest(berth.url, `/v2/lab/huge/blobs/${blob.digest}`, { headers: { range: `bytes=1000-66535` }, timeoutMs: 5_000 });
    assert.equal(res.status, 206);
    assert.ok(res.body.equals(await slice(blob, 1000, 66_535)));
    assert.ok(res.totalMs < 2_000, `took ${Math.round(res.totalMs)} ms`);
    const cost = link.bytesDown - before;
    assert.ok(cost <= 64 * KiB + 2 * RESPONSE_OVERHEAD, `the upstream sent ${cost} bytes for a 64 KiB range`);
  });

  test('an eStargz layer is read file by file as stargz-snapshotter does: probe, size, footer, TOC, one chunk', async () => {
    const blob = stargzLayer;
    const link = await relay();
    const berth = await berthVia(link, { lazyFill: 'on-demand' });
    await getManifest(berth, 'lab/stargz', stargz); // containerd fetched it before handing the layer to the snapshotter
    const mark = up.logLineCount();
    const url = `/v2/lab/stargz/blobs/${blob.digest}`;

    const probe = await httpRequest(berth.url, url, { headers: { range: 'bytes=0-1' } });
    assert.equal(probe.status, 206, 'the probe gets a 206: a 200 would make the snapshotter download the whole layer');
    assert.deepEqual([...probe.body], [0x1f, 0x8b]);

    const head = await httpRequest(berth.url, url, { method: 'HEAD' });
    assert.equal(head.status, 200);
    const size = Number(head.headers['content-length']);
    assert.equal(size, blob.size);

    const footer = await httpRequest(berth.url, url, { headers: { range: `bytes=${size - FOOTER_SIZE}-${size - 1}`, 'accept-encoding': 'identity' } });
    assert.equal(footer.status, 206);
    const tocOffset = parseFooter(footer.body);
    assert.equal(tocOffset, blob.tocOffset);

    const tocRes = await httpRequest(berth.url, url, { headers: { range: `bytes=${tocOffset}-${size - FOOTER_SIZE - 1}`, 'accept-encoding': 'identity' } });
    assert.equal(tocRes.status, 206);
    const { toc, json } = parseTocMember(tocRes.body);
    assert.equal(sha256(json), blob.tocDigest, 'the TOC matches the toc.digest annotation');

    const entry = toc.entries.find((e) => e.name === 'etc/berth/greeting.txt');
    assert.ok(entry?.offset !== undefined && entry.size !== undefined && entry.digest !== undefined);
    const next = Math.min(tocOffset, ...toc.entries.map((e) => e.offset ?? Infinity).filter((o) => o > entry.offset!));
    // the snapshotter asks for whole 50,000-byte blocks around the chunk
    const from = Math.floor(entry.offset / 50_000) * 50_000;
    const to = Math.min(Math.ceil(next / 50_000) * 50_000, size) - 1;
    const chunk = await httpRequest(berth.url, url, { headers: { range: `bytes=${from}-${to}`, 'accept-encoding': 'identity' } });
    assert.equal(chunk.status, 206);
    const member = chunk.body.subarray(entry.offset - from, next - from);
    const content = zlib.gunzipSync(member).subarray(0, entry.size);
    assert.equal(content.toString('utf8'), GREETING, 'the file read through berth is the file in the layer');
    assert.equal(sha256(content), entry.digest);

    const sent = blobBytesServed(await upstreamTrafficSince(up, mark), blob.digest);
    assert.ok(sent > 0, 'the reads went to the upstream');
    assert.ok(sent < blob.size * 0.05, `the upstream sent ${sent} of the layer's ${blob.size} bytes`);
    assert.equal(committed(berth, blob.digest), false, 'on-demand: the layer was not downloaded as a whole');
  });
});
