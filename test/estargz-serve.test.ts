// eStargz on demand (issue #11), serving side: `<name>:<tag>-esgz` through berth from a real docker-registry
// upstream seeded with real images. The layer converter is wrapped to count and hold conversions; what
// reached the upstream is read from its access log.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import zlib from 'node:zlib';
import type { ConvertedLayer, LayerConverter } from '../src/estargz/types.ts';
import type { Digest } from '../src/oci/digest.ts';
import { type InProcessBerth, startBerth, type UpstreamSpec } from './support/berth.ts';
import { buildEstargzLayer, estargzImage, FOOTER_SIZE, parseFooter, parseTocMember } from './support/estargz.ts';
import { ACCEPT_ALL_MANIFESTS, buildImage, digestOf, type Image, MediaTypes, pushImage, type Seeded, seedStandard } from './support/images.ts';
import { fileEntry, tarOf } from './support/layers.ts';
import { httpRequest, metricValue, waitUntil } from './support/links.ts';
import { pushLocalImage, seedLocalBlobs } from './support/local-push.ts';
import { makeConverter } from './support/test-converter.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const TOC = 'containerd.io/snapshot/stargz/toc.digest';
const USIZE = 'io.containers.estargz.uncompressed-size';

/** A converter that counts its calls and can be held (a gate) before it starts, for the waitFor tests. */
function counting(inner: LayerConverter) {
  let release: () => void = () => {};
  let gate: Promise<void> = Promise.resolve();
  const c = {
    calls: 0,
    hold() {
      gate = new Promise((ok) => (release = ok));
    },
    release: () => release(),
    converter: {
      async convert(...args: Parameters<LayerConverter['convert']>): Promise<ConvertedLayer> {
        c.calls++;
        await gate;
        return inner.convert(...args);
      },
    } satisfies LayerConverter,
  };
  return c;
}

// biome-ignore lint/suspicious/noExplicitAny: registry JSON, read field by field in assertions
type Json = Record<string, any>;
const json = (b: Buffer) => JSON.parse(b.toString('utf8')) as Json;
const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

async function get(b: InProcessBerth, p: string, headers: Record<string, string> = { accept: ACCEPT_ALL_MANIFESTS }, method = 'GET') {
  return httpRequest(b.url, p, { method, headers });
}

/** Upstream GETs (200/206) of a blob since `mark`. */
function blobGets(up: Upstream, digest: string, mark: number): number {
  return up.accessLogSince(mark).filter((e) => e.method === 'GET' && e.path.includes(`/blobs/${digest}`) && e.status < 300).length;
}

describe('eStargz on demand: <tag>-esgz', () => {
  let up: Upstream;
  let seeded: Seeded;
  let seedDir: string;
  let upstreams: UpstreamSpec[];
  let berth: InProcessBerth;
  let conv: ReturnType<typeof counting>;
  let closeConverter: () => Promise<void>;
  let badGzip: Image;
  let dotdot: Image;
  let mixed: Image;

  before(async () => {
    seedDir = await makeTempDir('seed-esgz');
    up = await startUpstream();
    seeded = await seedStandard(up, seedDir, { bigBytes: 8 << 20 });
    // A layer that claims gzip and is not; an image mixing a zstd layer, an eStargz layer and a gzip one.
    const plain = await buildImage({ format: 'oci', layers: [{ files: { 'ok.txt': 'ok\n' } }] });
    const junk = Buffer.from('this is not gzip at all');
    badGzip = await withLayer(plain, { digest: digestOf(junk), size: junk.length, mediaType: MediaTypes.oci.layer, bytes: junk, diffId: digestOf(junk) });
    await pushImage(up, 'lab/badgzip', '1', badGzip);
    // A real gzip tar whose second entry climbs out of the root.
    const evil = zlib.gzipSync(tarOf(fileEntry('ok.txt', 'ok\n'), fileEntry('../../etc/evil', 'pwned\n')));
    const evilTar = zlib.gunzipSync(evil);
    dotdot = await withLayer(plain, { digest: digestOf(evil), size: evil.length, mediaType: MediaTypes.oci.layer, bytes: evil, diffId: digestOf(evilTar) });
    await pushImage(up, 'lab/dotdot', '1', dotdot);
    const esgz = buildEstargzLayer([['already/estargz.txt', 'lazy\n']]);
    const zstdBytes = Buffer.from('(not really zstd: passed through unread)');
    const zstd = { digest: digestOf(zstdBytes), size: zstdBytes.length, mediaType: 'application/vnd.oci.image.layer.v1.tar+zstd', bytes: zstdBytes, diffId: digestOf('zstd-diff') };
    const base = estargzImage(esgz);
    mixed = await withLayers(base, [await gzipLayer({ 'mixed/file.txt': 'mixed\n' }), zstd], { [esgz.digest]: { [TOC]: esgz.tocDigest } });
    await pushImage(up, 'lab/mixed', '1', mixed);
    upstreams = [{ host: 'docker.io', url: up.url }];
    const made = await makeConverter();
    closeConverter = made.close;
    conv = counting(made.converter);
    // learnAfter 0: reads in these tests must not start learned re-conversions (estargz-learn tests those).
    berth = await startBerth({ upstreams, estargz: { learnAfter: 0 } }, undefined, { converter: conv.converter });
  });

  after(async () => {
    await berth?.stop();
    await closeConverter?.();
    await up?.stop();
    await removeTempDir(seedDir);
  });

  test('HEAD and GET by tag and by digest; new diff_ids, the two annotations on each converted layer', async () => {
    const head = await get(berth, '/v2/lab/small/manifests/1-esgz', { accept: ACCEPT_ALL_MANIFESTS }, 'HEAD');
    assert.equal(head.status, 200, head.body.toString());
    const digest = head.headers['docker-content-digest'] as string;
    assert.notEqual(digest, seeded.small.manifestDigest, 'the -esgz tag is a new image');
    const byTag = await get(berth, '/v2/lab/small/manifests/1-esgz');
    assert.equal(byTag.status, 200);
    assert.equal(byTag.headers['docker-content-digest'], digest);
    assert.equal(sha(byTag.body), digest);
    const byDigest = await get(berth, `/v2/lab/small/manifests/${digest}`);
    assert.equal(byDigest.status, 200);
    assert.deepEqual(byDigest.body, byTag.body);
    const m = json(byTag.body);
    assert.equal(m.mediaType, MediaTypes.oci.manifest);
    assert.equal(m.layers.length, seeded.small.layers.length);
    const config = await get(berth, `/v2/lab/small/blobs/${m.config.digest}`);
    assert.equal(config.status, 200);
    assert.equal(sha(config.body), m.config.digest);
    const diffIds = json(config.body).rootfs.diff_ids as string[];
    const source = json(seeded.small.config.bytes!);
    assert.deepEqual({ ...json(config.body), rootfs: undefined }, { ...source, rootfs: undefined }, 'only rootfs changes in the config');
    for (const [i, l] of (m.layers as Array<Json>).entries()) {
      assert.equal(l.mediaType, MediaTypes.oci.layer);
      assert.notEqual(l.digest, seeded.small.layers[i]!.digest);
      const blob = await get(berth, `/v2/lab/small/blobs/${l.digest}`);
      assert.equal(blob.status, 200);
      assert.equal(sha(blob.body), l.digest);
      assert.equal(blob.body.length, l.size);
      const tar = zlib.gunzipSync(blob.body);
      assert.equal(diffIds[i], sha(tar), `diff_id of layer ${i}`);
      assert.match(l.annotations[TOC], /^sha256:[0-9a-f]{64}$/);
      assert.equal(l.annotations[USIZE], String(tar.length));
    }
  });

  test('read as the snapshotter reads it: probe, HEAD, footer, TOC (its digest is the annotation), one file by its chunk', async () => {
    const m = json((await get(berth, '/v2/lab/small/manifests/1-esgz')).body);
    const layer = m.layers[1] as { digest: string; size: number; annotations: Record<string, string> };
    const blob = `/v2/lab/small/blobs/${layer.digest}`;
    const probe = await get(berth, blob, { range: 'bytes=0-1' });
    assert.equal(probe.status, 206);
    assert.equal(probe.body.length, 2);
    const head = await get(berth, blob, {}, 'HEAD');
    assert.equal(Number(head.headers['content-length']), layer.size);
    const footer = await get(berth, blob, { range: `bytes=${layer.size - FOOTER_SIZE}-${layer.size - 1}` });
    assert.equal(footer.status, 206);
    const tocOffset = parseFooter(footer.body);
    const tocMember = await get(berth, blob, { range: `bytes=${tocOffset}-${layer.size - FOOTER_SIZE - 1}` });
    const { toc, json: tocJson } = parseTocMember(tocMember.body);
    assert.equal(sha(tocJson), layer.annotations[TOC], 'the annotation is the digest of the TOC JSON');
    const names = toc.entries.map((e) => e.name);
    assert.equal(names[0], '.no.prefetch.landmark', 'no start-up set known: the no-prefetch landmark first');
    const hello = toc.entries.find((e) => e.name === 'app/hello.txt');
    assert.ok(hello?.offset, `app/hello.txt in the TOC: ${names.join(', ')}`);
    const next = Math.min(...toc.entries.filter((e) => (e.offset ?? 0) > hello.offset!).map((e) => e.offset!), tocOffset);
    const chunk = await get(berth, blob, { range: `bytes=${hello.offset}-${next - 1}` });
    assert.equal(chunk.status, 206);
    const content = zlib.gunzipSync(chunk.body);
    assert.match(content.subarray(0, hello.size).toString('utf8'), /^hello from layer 2 /);
    assert.equal(sha(content.subarray(0, hello.size)), hello.chunkDigest ?? hello.digest);
  });

  test('twenty concurrent requests of a cold -esgz index convert once; the upstream serves each source layer once', async () => {
    const mark = up.logLineCount();
    const before = conv.calls;
    const images = await metricValue(berth.url, 'berth_estargz_conversions_total', { kind: 'image' });
    const answers = await Promise.all(Array.from({ length: 20 }, () => get(berth, '/v2/lab/multi/manifests/1-esgz')));
    for (const a of answers) assert.equal(a.status, 200, a.body.toString());
    assert.equal(new Set(answers.map((a) => a.headers['docker-content-digest'])).size, 1);
    const index = json(answers[0]!.body);
    assert.equal(index.mediaType, MediaTypes.oci.index);
    assert.deepEqual(
      index.manifests.map((m: Json) => m.platform),
      seeded.multi.images.map((i) => i.platform),
    );
    const layers = new Set(seeded.multi.images.flatMap((i) => i.layers.map((l) => l.digest)));
    // The base layer is shared with lab/small (converted already, found by its key).
    const base = seeded.small.layers[0]!.digest;
    assert.equal(conv.calls - before, layers.size - (layers.has(base) ? 1 : 0), 'one conversion per distinct new layer');
    assert.equal((await metricValue(berth.url, 'berth_estargz_conversions_total', { kind: 'image' })) - images, 1, 'one image conversion (its index and both platforms)');
    await waitUntil('the access log', () => up.logLineCount() > mark);
    for (const d of layers) if (d !== base) assert.equal(blobGets(up, d, mark), 1, `upstream GETs of ${d}`);
    for (const child of index.manifests) {
      const r = await get(berth, `/v2/lab/multi/manifests/${child.digest}`);
      assert.equal(r.status, 200);
      assert.equal(
        json(r.body).layers.every((l: Json) => typeof l.annotations?.[TOC] === 'string'),
        true,
      );
    }
  });

  test('a second tag sharing the layers converts nothing again', async () => {
    const before = conv.calls;
    const mark = up.logLineCount();
    const r = await get(berth, '/v2/lab/small/manifests/v2s2-esgz');
    assert.equal(r.status, 200, r.body.toString());
    const m = json(r.body);
    assert.equal(m.mediaType, MediaTypes.docker.manifest, 'the same media type family as the source');
    assert.equal(conv.calls, before, 'every layer was converted for lab/small:1 already');
    const layerGets = up.accessLogSince(mark).filter((e) => e.method === 'GET' && e.path.includes('/blobs/') && seeded.v2s2.layers.some((l) => e.path.includes(l.digest)));
    assert.deepEqual(layerGets, [], 'no source layer fetched again');
    const first = json((await get(berth, '/v2/lab/small/manifests/1-esgz')).body);
    assert.deepEqual(
      m.layers.map((l: Json) => l.digest),
      first.layers.map((l: Json) => l.digest),
    );
    // Another repository naming the same image: nothing converted either, and its own tag.
    const other = await get(berth, '/v2/library/small/manifests/1-esgz');
    assert.equal(other.status, 200);
    assert.equal(conv.calls, before);
    assert.ok((await berth.berth.index.listTags('docker.io', 'library/small')).includes('1-esgz'));
  });

  test('a converted layer evicted from the store: the next request converts that layer again, the tag serves a whole image', async () => {
    const m = json((await get(berth, '/v2/lab/small/manifests/1-esgz')).body);
    const gone = m.layers[1].digest as Digest;
    // As the quota evicts: the file and its row go (converted blobs exist nowhere upstream).
    await berth.berth.store.remove(gone);
    await berth.berth.index.deleteBlob(gone);
    const before = conv.calls;
    const again = await get(berth, '/v2/lab/small/manifests/1-esgz');
    assert.equal(again.status, 200);
    assert.equal(conv.calls - before, 1, 'only the missing layer is converted again');
    assert.deepEqual(json(again.body), m, 'deterministic: the same bytes again');
    const blob = await get(berth, `/v2/lab/small/blobs/${gone}`);
    assert.equal(blob.status, 200);
    assert.equal(sha(blob.body), gone);
  });

  test('zstd and already-eStargz layers pass through unchanged', async () => {
    const r = await get(berth, '/v2/lab/mixed/manifests/1-esgz');
    assert.equal(r.status, 200, r.body.toString());
    const m = json(r.body);
    const src = json(mixed.manifest);
    assert.deepEqual(m.layers[0], src.layers[0], 'the eStargz layer, annotation and all');
    assert.deepEqual(m.layers[2], src.layers[2], 'the zstd layer');
    assert.notEqual(m.layers[1].digest, src.layers[1].digest, 'the gzip layer is converted');
    const config = json((await get(berth, `/v2/lab/mixed/blobs/${m.config.digest}`)).body);
    const srcConfig = json(mixed.config.bytes!);
    assert.equal(config.rootfs.diff_ids[0], srcConfig.rootfs.diff_ids[0]);
    assert.equal(config.rootfs.diff_ids[2], srcConfig.rootfs.diff_ids[2]);
    assert.notEqual(config.rootfs.diff_ids[1], undefined);
  });

  test('a layer that is not gzip: a clear 502 naming it, nothing tagged, the original still pulls, no re-conversion in a loop', async () => {
    const before = conv.calls;
    const r = await get(berth, '/v2/lab/badgzip/manifests/1-esgz');
    assert.equal(r.status, 502, r.body.toString());
    const err = json(r.body).errors[0];
    assert.equal(err.code, 'UPSTREAM_ERROR');
    assert.match(err.message, new RegExp(badGzip.layers[1]!.digest));
    assert.equal((await berth.berth.index.listTags('docker.io', 'lab/badgzip')).includes('1-esgz'), false);
    const original = await get(berth, '/v2/lab/badgzip/manifests/1');
    assert.equal(original.status, 200);
    assert.equal(original.headers['docker-content-digest'], badGzip.manifestDigest);
    const calls = conv.calls;
    const again = await get(berth, '/v2/lab/badgzip/manifests/1-esgz');
    assert.equal(again.status, 502);
    assert.equal(conv.calls, calls, 'the failure is remembered');
    assert.ok(calls > before);
  });

  test('a tar with a `..` path: a clear 502 naming the layer and why; the original image still pulls; nothing tagged', async () => {
    const r = await get(berth, '/v2/lab/dotdot/manifests/1-esgz');
    assert.equal(r.status, 502, r.body.toString());
    const err = json(r.body).errors[0];
    assert.equal(err.code, 'UPSTREAM_ERROR');
    assert.match(err.message, new RegExp(dotdot.layers[1]!.digest));
    assert.match(err.message, /\.\./);
    assert.equal((await berth.berth.index.listTags('docker.io', 'lab/dotdot')).includes('1-esgz'), false);
    assert.equal((await get(berth, '/v2/lab/dotdot/manifests/1')).status, 200);
    const layer = await get(berth, `/v2/lab/dotdot/blobs/${dotdot.layers[1]!.digest}`);
    assert.equal(layer.status, 200);
    assert.equal(sha(layer.body), dotdot.layers[1]!.digest);
    // No converted file was left in tmp/.
    assert.deepEqual(
      (await readdir(path.join(berth.storage, 'tmp'))).filter((f) => f.startsWith('esgz.')),
      [],
    );
  });

  test('past waitFor a 404 says the conversion is under way; it goes on and the tag resolves later', async () => {
    const quick = await startBerth({ upstreams, estargz: { waitFor: '200ms' } }, undefined, { converter: conv.converter });
    try {
      conv.hold();
      const r = await get(quick, '/v2/lab/big/manifests/1-esgz');
      assert.equal(r.status, 404, r.body.toString());
      const err = json(r.body).errors[0];
      assert.equal(err.code, 'MANIFEST_UNKNOWN');
      assert.match(err.message, /under way/);
      conv.release();
      const later = await waitUntil('the conversion', async () => {
        const a = await get(quick, '/v2/lab/big/manifests/1-esgz');
        return a.status === 200 ? a : undefined;
      });
      assert.equal(json(later.body).layers[0].annotations[TOC].startsWith('sha256:'), true);
    } finally {
      conv.release();
      await quick.stop();
    }
  });

  test('offline after the conversion: the -esgz tag and its digests are served with the upstream never asked', async () => {
    const storage = path.join(seedDir, 'offline-storage');
    const online = await startBerth({ upstreams, storage }, undefined, { converter: conv.converter });
    let digest: string;
    let layer: string;
    try {
      const r = await get(online, '/v2/lab/small/manifests/1-esgz');
      assert.equal(r.status, 200);
      digest = r.headers['docker-content-digest'] as string;
      layer = json(r.body).layers[1].digest;
    } finally {
      await online.stop();
    }
    const offline = await startBerth({ upstreams: [{ host: 'docker.io', url: 'http://127.0.0.1:9' }], storage, offline: true }, undefined, { converter: conv.converter });
    try {
      const calls = conv.calls;
      const byTag = await get(offline, '/v2/lab/small/manifests/1-esgz');
      assert.equal(byTag.status, 200, byTag.body.toString());
      assert.equal(byTag.headers['docker-content-digest'], digest);
      assert.equal((await get(offline, `/v2/lab/small/manifests/${digest}`, undefined, 'HEAD')).status, 200);
      const blob = await get(offline, `/v2/lab/small/blobs/${layer}`);
      assert.equal(blob.status, 200);
      assert.equal(sha(blob.body), layer);
      assert.equal(conv.calls, calls, 'nothing converted again');
      const tags = json((await get(offline, '/v2/lab/small/tags/list')).body).tags as string[];
      assert.ok(tags.includes('1-esgz'), `tags: ${tags.join(', ')}`);
    } finally {
      await offline.stop();
    }
  });

  test('a source tag that moved upstream converts the new image; the old conversion is not served for it', async () => {
    const moving = await startBerth({ upstreams, tagTtl: '1s' }, undefined, { converter: conv.converter });
    try {
      const one = await buildImage({ format: 'oci', layers: [{ files: { 'v.txt': `one ${Math.random()}\n` } }] });
      const two = await buildImage({ format: 'oci', layers: [{ files: { 'v.txt': `two ${Math.random()}\n` } }] });
      await pushImage(up, 'lab/moving', '1', one);
      const first = await get(moving, '/v2/lab/moving/manifests/1-esgz');
      assert.equal(first.status, 200);
      assert.equal(json(first.body).annotations['dev.berth.estargz.source'], one.manifestDigest);
      await pushImage(up, 'lab/moving', '1', two);
      const second = await waitUntil('the moved tag to convert', async () => {
        const r = await get(moving, '/v2/lab/moving/manifests/1-esgz');
        return r.status === 200 && r.headers['docker-content-digest'] !== first.headers['docker-content-digest'] ? r : undefined;
      });
      assert.equal(json(second.body).annotations['dev.berth.estargz.source'], two.manifestDigest);
    } finally {
      await moving.stop();
    }
  });

  test('a local repository converts too; its conversion is its own content', async () => {
    const site = await startBerth({ upstreams, local: { prefixes: ['site/'], allowAnonymousPush: true } }, undefined, { converter: conv.converter });
    try {
      await seedLocalBlobs(site, 'site/app', [seeded.small.config, ...seeded.small.layers]);
      assert.equal((await pushLocalImage(site, 'site/app', '1', seeded.small)).status, 201);
      const r = await get(site, '/v2/site/app/manifests/1-esgz');
      assert.equal(r.status, 200, r.body.toString());
      const m = json(r.body);
      assert.equal((await get(site, `/v2/site/app/manifests/${r.headers['docker-content-digest']}`)).status, 200);
      const blob = await get(site, `/v2/site/app/blobs/${m.layers[2].digest}`);
      assert.equal(blob.status, 200);
      assert.equal(sha(blob.body), m.layers[2].digest);
    } finally {
      await site.stop();
    }
  });

  test('estargz.platforms keeps only those platforms in the new index; estargz.enabled false makes -esgz an upstream tag', async () => {
    const arm = await startBerth({ upstreams, estargz: { platforms: ['linux/arm64'], learnAfter: 0 } }, undefined, { converter: conv.converter });
    try {
      const r = await get(arm, '/v2/lab/multi/manifests/1-esgz');
      assert.equal(r.status, 200, r.body.toString());
      const platforms = json(r.body).manifests.map((m: Json) => `${m.platform.os}/${m.platform.architecture}`);
      assert.deepEqual(platforms, ['linux/arm64']);
    } finally {
      await arm.stop();
    }
    const off = await startBerth({ upstreams, estargz: { enabled: false } }, undefined, { converter: conv.converter });
    try {
      const mark = up.logLineCount();
      const calls = conv.calls;
      const r = await get(off, '/v2/lab/small/manifests/1-esgz');
      assert.equal(r.status, 404);
      assert.equal(conv.calls, calls);
      await up.waitForAccess((e) => e.some((x) => x.path.endsWith('/v2/lab/small/manifests/1-esgz')), { since: mark });
    } finally {
      await off.stop();
    }
  });

  test('bad input stays 4xx: a suffix alone is an ordinary tag, the suffix twice is a 404', async () => {
    const bare = await get(berth, '/v2/lab/small/manifests/-esgz');
    assert.equal(bare.status, 404);
    const missing = await get(berth, '/v2/lab/small/manifests/nosuchtag-esgz');
    assert.equal(missing.status, 404);
    assert.equal(json(missing.body).errors[0].code, 'MANIFEST_UNKNOWN');
    // A converted image is not converted again.
    const twice = await get(berth, '/v2/lab/small/manifests/1-esgz-esgz');
    assert.equal(twice.status, 404, twice.body.toString());
    assert.equal(json(twice.body).errors[0].code, 'MANIFEST_UNKNOWN');
  });
});

/** A gzip layer of `files` (tar built by test/support). */
async function gzipLayer(files: Record<string, string>) {
  const img = await buildImage({ format: 'oci', layers: [{ files }] });
  return img.layers[0]!;
}

/** `image` with one more layer (and its diff_id). */
async function withLayer(image: Image, layer: Image['layers'][number]): Promise<Image> {
  return withLayers(image, [layer], {});
}

/** `image` with more layers appended; `annotations` by layer digest. */
async function withLayers(image: Image, extra: Image['layers'], annotations: Record<string, Record<string, string>>): Promise<Image> {
  const layers = [...image.layers, ...extra];
  const config = json(image.config.bytes!);
  config.rootfs.diff_ids = layers.map((l) => l.diffId);
  const configBytes = Buffer.from(JSON.stringify(config));
  const configBlob = { ...image.config, digest: digestOf(configBytes), size: configBytes.length, bytes: configBytes };
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MediaTypes.oci.manifest,
      config: { mediaType: configBlob.mediaType, digest: configBlob.digest, size: configBlob.size },
      layers: layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.size, ...(annotations[l.digest] ? { annotations: annotations[l.digest] } : {}) })),
    }),
  );
  return { ...image, manifest, manifestDigest: digestOf(manifest), config: configBlob, layers };
}
