// Learning the start-up set (issue #11): berth watches the Range reads a lazy puller sends for a converted
// layer, maps them to files through the TOC, and after estargz.learnAfter pulls converts the image again
// with those files first; the -esgz tag moves, and one Range up to the prefetch landmark fetches them all.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import zlib from 'node:zlib';
import type { Digest } from '../src/oci/digest.ts';
import { type InProcessBerth, startBerth } from './support/berth.ts';
import { lsJson, writeCliConfig } from './support/berth-cli.ts';
import { FOOTER_SIZE, parseFooter, parseTocMember, type Toc } from './support/estargz.ts';
import { ACCEPT_ALL_MANIFESTS, buildImage, type Image, pushImage } from './support/images.ts';
import { httpRequest, sha256, waitUntil } from './support/links.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

type Layer = { digest: string; size: number };

async function manifestOf(b: InProcessBerth, ref: string) {
  const r = await httpRequest(b.url, `/v2/lab/learn/manifests/${ref}`, { headers: { accept: ACCEPT_ALL_MANIFESTS } });
  assert.equal(r.status, 200, r.body.toString());
  return { digest: r.headers['docker-content-digest'] as string, manifest: JSON.parse(r.body.toString('utf8')) as { layers: Layer[] } };
}

async function range(b: InProcessBerth, layer: Layer, start: number, end: number): Promise<Buffer> {
  const r = await httpRequest(b.url, `/v2/lab/learn/blobs/${layer.digest}`, { headers: { range: `bytes=${start}-${end}` } });
  assert.equal(r.status, 206, r.body.toString());
  return r.body;
}

/** What stargz-snapshotter reads first: a probe, the footer, the TOC. */
async function openLayer(b: InProcessBerth, layer: Layer): Promise<{ toc: Toc; tocOffset: number }> {
  await range(b, layer, 0, 1);
  const tocOffset = parseFooter(await range(b, layer, layer.size - FOOTER_SIZE, layer.size - 1));
  const { toc } = parseTocMember(await range(b, layer, tocOffset, layer.size - FOOTER_SIZE - 1));
  return { toc, tocOffset };
}

/** Reads one file's first chunk the way the snapshotter does: the gzip member at its offset, up to the next one. */
async function readFile(b: InProcessBerth, layer: Layer, opened: { toc: Toc; tocOffset: number }, name: string): Promise<Buffer> {
  const e = opened.toc.entries.find((x) => x.name === name && x.offset);
  assert.ok(e, `${name} is in the TOC`);
  const next = Math.min(...opened.toc.entries.filter((x) => (x.offset ?? 0) > e.offset!).map((x) => x.offset!), opened.tocOffset);
  return zlib.gunzipSync(await range(b, layer, e.offset!, next - 1));
}

/** Regular files of a TOC before `.prefetch.landmark`, in order (directories are moved along, not counted). */
function beforeLandmark(toc: Toc): string[] {
  const names: string[] = [];
  for (const e of toc.entries) {
    if (e.name === '.prefetch.landmark') return names;
    if (e.type === 'reg' && !names.includes(e.name)) names.push(e.name);
  }
  throw new Error(`no .prefetch.landmark in ${toc.entries.map((x) => x.name).join(', ')}`);
}

/** The regular files of a tar prefix (a prefetch: whole members up to the landmark, gunzipped). */
function tarFiles(tar: Buffer): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  for (let at = 0; at + 512 <= tar.length; ) {
    const h = tar.subarray(at, at + 512);
    if (h.every((x) => x === 0)) break;
    const name = h.subarray(0, 100).toString('utf8').replace(/\0.*$/s, '');
    const size = Number.parseInt(h.subarray(124, 136).toString('latin1').replace(/\0.*$/s, '').trim() || '0', 8);
    const type = String.fromCharCode(h[156]!);
    if (type === '0' || type === '\0') out.set(name.replace(/^\.\//, ''), tar.subarray(at + 512, at + 512 + size));
    at += 512 + Math.ceil(size / 512) * 512;
  }
  return out;
}

describe('learning the start-up set from lazy reads', () => {
  let up: Upstream;
  let berth: InProcessBerth;
  let image: Image;
  let work: string;
  const big = randomBytes(600 << 10);

  before(async () => {
    work = await makeTempDir('esgz-learn');
    up = await startUpstream();
    image = await buildImage({
      format: 'oci',
      layers: [
        { files: { 'etc/os-release': 'ID=learn\n', 'etc/unused': 'never read\n' } },
        { files: { 'app/a.txt': 'a, never read\n', 'app/b.txt': 'b is read at start-up\n', 'app/c.txt': 'c, never read\n', 'lib/big.bin': big } },
      ],
    });
    await pushImage(up, 'lab/learn', '1', image);
    // A small chunk size: the big file has several chunks, and the snapshotter reads only one of them.
    berth = await startBerth({ upstreams: [{ host: 'docker.io', url: up.url }], estargz: { learnAfter: 1, learnWindow: '500ms', chunkSize: '64KiB' } });
  });

  after(async () => {
    await berth?.stop();
    await up?.stop();
    await removeTempDir(work);
  });

  test('one observed lazy pull: the reconverted image lists exactly the files read before the landmark, and one prefetch Range fetches them', async () => {
    const first = await manifestOf(berth, '1-esgz');
    const [l0, l1] = first.manifest.layers as [Layer, Layer];
    // The snapshotter's start-up: both layers opened, three files read (a middle chunk of the big one).
    const o0 = await openLayer(berth, l0);
    const o1 = await openLayer(berth, l1);
    assert.equal((await readFile(berth, l1, o1, 'app/b.txt')).subarray(0, 21).toString(), 'b is read at start-up');
    const bigChunks = o1.toc.entries.filter((e) => e.name === 'lib/big.bin' && e.offset);
    assert.ok(bigChunks.length > 3, `lib/big.bin has ${bigChunks.length} chunks`);
    const chunk = bigChunks[2]!;
    const next = Math.min(...o1.toc.entries.filter((x) => (x.offset ?? 0) > chunk.offset!).map((x) => x.offset!), o1.tocOffset);
    assert.equal(zlib.gunzipSync(await range(berth, l1, chunk.offset!, next - 1)).length, 64 << 10);
    await readFile(berth, l0, o0, 'etc/os-release');

    const moved = await waitUntil(
      'the -esgz tag to move to the learned image',
      async () => {
        const m = await manifestOf(berth, '1-esgz');
        return m.digest !== first.digest ? m : undefined;
      },
      60_000,
      100,
    );
    const startup = await berth.berth.index.estargz.startup(image.manifestDigest as Digest);
    assert.ok(startup?.learnedAt, 'the start-up set is persisted as learned');
    assert.deepEqual(
      startup.files.map((f) => f.name),
      ['app/b.txt', 'lib/big.bin', 'etc/os-release'],
      'in the order first read',
    );
    assert.equal(startup.bytes, 'b is read at start-up\n'.length + big.length + 'ID=learn\n'.length);

    const [n0, n1] = moved.manifest.layers as [Layer, Layer];
    const t1 = await openLayer(berth, n1);
    assert.deepEqual(beforeLandmark(t1.toc), ['app/b.txt', 'lib/big.bin']);
    const t0 = await openLayer(berth, n0);
    assert.deepEqual(beforeLandmark(t0.toc), ['etc/os-release']);

    // The next node's prefetch: one Range from 0 to the landmark's member holds every start-up file whole.
    const landmark = t1.toc.entries.find((e) => e.name === '.prefetch.landmark')!;
    const prefetch = await httpRequest(berth.url, `/v2/lab/learn/blobs/${n1.digest}`, { headers: { range: `bytes=0-${landmark.offset! - 1}` } });
    assert.equal(prefetch.status, 206);
    const files = tarFiles(zlib.gunzipSync(prefetch.body));
    assert.equal(files.get('app/b.txt')?.toString(), 'b is read at start-up\n');
    assert.equal(sha256(files.get('lib/big.bin') ?? Buffer.alloc(0)), sha256(big));
    assert.equal(files.has('app/a.txt'), false, 'files nobody read stay after the landmark');
    assert.notEqual(n1.digest, l1.digest);

    // `berth ls --json` beside the running berth: the converted tag is learned, with its start-up set's size.
    const config = await writeCliConfig(path.join(work, 'ls.yaml'), { storage: berth.storage, upstreams: [{ host: 'docker.io', url: up.url }] });
    const row = (await lsJson(config)).find((r) => r.reference === 'docker.io/lab/learn:1-esgz') as unknown as { digest: string; estargz?: Record<string, unknown> };
    assert.equal(row?.digest, moved.digest);
    assert.deepEqual(row.estargz, { source: image.manifestDigest, learned: true, startupFiles: 3, startupBytes: startup.bytes });
  });
});
