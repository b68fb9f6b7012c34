// Tiers (issue #12, "berth in front of berth"): an edge berth whose upstream of a registry is a parent berth
// (`kind: berth`), the parent in front of the real registry. Images arrive through the edge byte for byte with
// each blob read from the registry once in all; a Range read on the edge of a cold blob costs the registry
// about that range (both tiers fill lazily); the parent's `-esgz` tags and referrers answer through the edge;
// `offline: except-parents` reaches the parent and nothing else; with the parent down the edge serves what it
// has and answers 503 for the rest; a parent that lies about a blob's bytes never gets them served clean; a
// parent with client auth is reached with the edge's configured credentials (its bearer token flow).
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { ConfigError, loadConfig } from '../src/config/load.ts';
import { blobBytesServed } from './support/accesslog.ts';
import { type InProcessBerth, startBerth, type UpstreamSpec } from './support/berth.ts';
import { type BerthChild, startBerthChild } from './support/berth-child.ts';
import { request } from './support/http.ts';
import { ACCEPT_ALL_MANIFESTS, blobBytes, buildImage, digestOfFile, type Image, MediaTypes, pushImage, type Seeded, seedStandard } from './support/images.ts';
import { sha256, upstreamTrafficSince } from './support/links.ts';
import { buildArtifact, COSIGN_SIG, digests, pushReferrers, referrers } from './support/referrers.ts';
import { startRelay } from './support/relay.ts';
import { skopeoCopy } from './support/skopeo.ts';
import { committed } from './support/storage.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { type AccessEntry, startUpstream, type Upstream } from './support/upstream.ts';

const run = promisify(execFile);
/** The registry's name on both tiers (a name, not an address: the parent maps it to the real registry). */
const REGISTRY = 'registry.test';
/** A second registry the edge knows of its own (kind: registry). */
const OTHER = 'other.test';
const MB = 1_000_000;
/** Three berth processes start at once (each compiling its sources through tsx): on a loaded machine that takes a while. */
const SLOW_START = { readyTimeoutMs: 90_000 };
const EDGE_CREDS = { username: 'edge', password: `pw-${randomUUID()}` };

/** An upstream entry of kind berth (UpstreamSpec in support/berth.ts predates kinds; the config passes it through). */
const parentOf = (url: string, extra: Record<string, string> = {}): UpstreamSpec => ({ host: REGISTRY, url, kind: 'berth', ...extra }) as UpstreamSpec;

const blobGets = (entries: AccessEntry[], digest: string): AccessEntry[] => entries.filter((e) => e.method === 'GET' && e.path.split('?')[0]!.endsWith(`/blobs/${digest}`));

/** A `dir:` layout: its manifest and every blob, each checked to hash to its name. */
async function readDirLayout(dir: string): Promise<{ manifest: Buffer; blobs: string[] }> {
  const blobs: string[] = [];
  for (const name of await readdir(dir)) {
    if (name === 'manifest.json' || name === 'version') continue;
    const digest = await digestOfFile(path.join(dir, name));
    assert.equal(digest, `sha256:${name}`, `${name} in the dir: layout does not hash to its name`);
    blobs.push(digest);
  }
  return { manifest: await readFile(path.join(dir, 'manifest.json')), blobs: blobs.sort() };
}

/**
 * A parent that lies: it answers as a berth would for one image (manifest by tag and digest, config) but
 * sends other bytes of the same length for its layer. It records what it was asked.
 */
async function startLyingParent(image: Image): Promise<{ url: string; requests: string[]; close(): Promise<void> }> {
  const requests: string[] = [];
  const layer = image.layers[0]!;
  const wrong = Buffer.from((await blobBytes(layer)).map((b) => b ^ 0x5a));
  const blobs = new Map<string, Buffer>([
    [image.config.digest, await blobBytes(image.config)],
    [layer.digest, wrong],
  ]);
  const server = http.createServer((req, res) => {
    requests.push(req.url ?? '');
    const u = new URL(req.url ?? '/', 'http://x');
    if (u.pathname === '/v2/' || u.pathname === '/v2') return void res.end('{}');
    const m = /^\/v2\/(.+)\/(manifests|blobs)\/([^/]+)$/.exec(u.pathname);
    if (!m || u.searchParams.get('ns') !== REGISTRY) {
      res.writeHead(404, { 'content-type': 'application/json' });
      return void res.end('{"errors":[{"code":"NAME_UNKNOWN","message":"ns missing"}]}');
    }
    if (m[2] === 'manifests') {
      res.writeHead(200, { 'content-type': image.mediaType, 'content-length': image.manifest.length, 'docker-content-digest': image.manifestDigest });
      return void res.end(req.method === 'HEAD' ? undefined : image.manifest);
    }
    const bytes = blobs.get(m[3]!);
    if (!bytes) {
      res.writeHead(404);
      return void res.end();
    }
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': bytes.length, 'docker-content-digest': m[3]! });
    res.end(req.method === 'HEAD' ? undefined : bytes);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

describe('configuring tiers', () => {
  let dir: string;
  before(async () => {
    dir = await makeTempDir('tiers-config');
  });
  after(async () => {
    await removeTempDir(dir);
  });
  const load = async (yaml: string, env: NodeJS.ProcessEnv = {}) => {
    const file = path.join(dir, `${randomUUID()}.yaml`);
    await writeFile(file, yaml);
    return loadConfig({ config: file }, env);
  };

  test('one kind: berth entry with hosts is an upstream per host, each with its settings and credentials', async () => {
    const c = await load(
      [
        'offline: except-parents',
        'upstreams:',
        '  - {hosts: [docker.io, quay.io], kind: berth, url: "http://regional:5000", username: edge, password: pw}',
        '  - {host: ghcr.io, url: "https://ghcr.io"}',
      ].join('\n'),
      { BERTH_UPSTREAM_QUAY_IO_PASSWORD: 'quay-pw' },
    );
    assert.equal(c.offline, 'except-parents');
    assert.deepEqual(
      c.upstreams.map((u) => [u.host, u.kind, u.url, u.username, u.password]),
      [
        ['docker.io', 'berth', 'http://regional:5000', 'edge', 'pw'],
        ['quay.io', 'berth', 'http://regional:5000', 'edge', 'quay-pw'],
        ['ghcr.io', 'registry', 'https://ghcr.io', undefined, undefined],
      ],
    );
    assert.equal(c.defaultUpstream, 'docker.io');
    assert.equal((await load('upstreams: [{host: a.test, url: "http://a:1"}]', { BERTH_OFFLINE: 'except-parents' }).catch((e: Error) => e)) instanceof ConfigError, true);
  });

  test('hosts without kind: berth, both host and hosts, and except-parents without a parent are refused by name', async () => {
    const problems = async (yaml: string) => ((await load(yaml).catch((e: Error) => e)) as Error).message;
    assert.match(await problems('upstreams: [{hosts: [a.test], url: "http://a:1"}]'), /upstreams\[0\]\.hosts: is for kind: berth/);
    assert.match(await problems('upstreams: [{host: a.test, hosts: [b.test], kind: berth, url: "http://a:1"}]'), /upstreams\[0\]\.host: give host, or/);
    assert.match(await problems('upstreams: [{hosts: [b.test], aliases: [c.test], kind: berth, url: "http://a:1"}]'), /upstreams\[0\]\.aliases/);
    assert.match(await problems('offline: except-parents\nupstreams: [{host: a.test, url: "http://a:1"}]'), /offline: except-parents reaches only upstreams of kind: berth/);
    assert.match(await problems('upstreams: [{host: a.test, kind: tier, url: "http://a:1"}]'), /upstreams\[0\]\.kind/);
  });
});

describe('berth in front of berth', () => {
  let up: Upstream;
  let other: Upstream;
  let seeded: Seeded;
  let wide: Image;
  let lie: Image;
  let never: Image;
  let seedDir: string;
  let work: string;
  let parent: BerthChild;
  let authParent: BerthChild;
  let basicParent: BerthChild;
  let edge: InProcessBerth;
  const cleanups: Array<() => Promise<unknown>> = [];

  const edgeBerth = async (o: Parameters<typeof startBerth>[0]): Promise<InProcessBerth> => {
    const b = await startBerth(o);
    cleanups.push(() => b.stop());
    return b;
  };

  before(async () => {
    seedDir = await makeTempDir('seed-tiers');
    work = await makeTempDir('tiers');
    await Promise.all([startUpstream().then((u) => (up = u)), startUpstream().then((u) => (other = u))]);
    seeded = await seedStandard(up, seedDir);
    wide = await buildImage({ format: 'oci', layers: [{ randomBytes: 8 * MB, dir: seedDir }] });
    never = await buildImage({ format: 'oci', layers: [{ files: { 'never.txt': `never pulled ${randomUUID()}\n` } }] });
    lie = await buildImage({ format: 'oci', layers: [{ files: { 'lie.txt': `not these bytes ${randomUUID()}\n` } }] });
    await Promise.all([
      pushImage(up, 'lab/wide', '1', wide),
      pushImage(up, 'lab/small', '2', seeded.small),
      pushImage(up, 'lab/never', '1', never),
      pushImage(other, 'lab/other', '1', seeded.small),
      pushReferrers(up, 'lab/small', [buildArtifact(seeded.small, COSIGN_SIG, `signature ${randomUUID()}`)]),
    ]);
    const htpasswd = path.join(work, 'htpasswd');
    await writeFile(htpasswd, (await run('htpasswd', ['-Bbn', EDGE_CREDS.username, EDGE_CREDS.password])).stdout);
    // The parent fills lazily too: a Range read it serves costs the registry only that range. Its default
    // upstream is another registry (with nothing of lab/), so a request that lost its registry on the way
    // from the edge would go there.
    [parent, authParent, basicParent] = await Promise.all([
      startBerthChild(
        {
          upstreams: [
            { host: OTHER, url: other.url },
            { host: REGISTRY, url: up.url },
          ],
          defaultUpstream: OTHER,
          lazyFill: 'on-demand',
        },
        SLOW_START,
      ),
      // Anonymous pulls beside pushes that need a login: the challenge is bearer, tokens from the parent's realm;
      // the registry is only for the edge's user.
      startBerthChild(
        {
          upstreams: [{ host: REGISTRY, url: up.url }],
          auth: { htpasswd, anonymous: true, rules: [{ prefix: `${REGISTRY}/`, users: [EDGE_CREDS.username] }], push: [{ prefix: 'site/', users: [EDGE_CREDS.username] }] },
          local: { prefixes: ['site/'] },
        },
        SLOW_START,
      ),
      // Logins only: the challenge is basic.
      startBerthChild({ upstreams: [{ host: REGISTRY, url: up.url }], auth: { htpasswd, anonymous: false } }, SLOW_START),
    ]);
    edge = await edgeBerth({ upstreams: [parentOf(parent.url)], lazyFill: 'on-demand' });
  });

  after(async () => {
    for (const c of cleanups.reverse()) await c().catch(() => undefined);
    await Promise.all([parent?.stop(), authParent?.stop(), basicParent?.stop(), up?.stop(), other?.stop()]);
    await Promise.all([seedDir && removeTempDir(seedDir), work && removeTempDir(work)]);
  });

  test('skopeo copies an image through the edge byte for byte, and the registry sends each blob once in all', async () => {
    const mark = up.logLineCount();
    const otherMark = other.logLineCount();
    const viaEdge = path.join(work, 'via-edge');
    await skopeoCopy(`docker://${edge.host}/${REGISTRY}/lab/small:1`, `dir:${viaEdge}`);
    const got = await readDirLayout(viaEdge);
    assert.equal(sha256(got.manifest), seeded.small.manifestDigest);
    assert.ok(got.manifest.equals(seeded.small.manifest));
    assert.deepEqual(got.blobs, [seeded.small.config, ...seeded.small.layers].map((b) => b.digest).sort());
    // The same image again, through the edge and straight from the parent: both tiers have it now.
    await skopeoCopy(`docker://${edge.host}/${REGISTRY}/lab/small:1`, `dir:${path.join(work, 'via-edge-2')}`);
    await skopeoCopy(`docker://${parent.host}/${REGISTRY}/lab/small:1`, `dir:${path.join(work, 'via-parent')}`);
    const traffic = await upstreamTrafficSince(up, mark);
    for (const b of [seeded.small.config, ...seeded.small.layers]) {
      assert.equal(blobGets(traffic, b.digest).length, 1, `blob ${b.digest} was read from the registry ${blobGets(traffic, b.digest).length} times`);
      assert.equal(blobBytesServed(traffic, b.digest), b.size);
    }
    assert.deepEqual(await upstreamTrafficSince(other, otherMark), [], "the parent's default upstream was asked: the edge's requests lost their registry");
  });

  test('a Range read on the edge of a cold blob costs the registry about that range, not the blob', async () => {
    const layer = wide.layers[0]!;
    const manifest = await request(edge.url, `/v2/${REGISTRY}/lab/wide/manifests/1`, { headers: { accept: MediaTypes.oci.manifest } });
    assert.equal(manifest.status, 200);
    const mark = up.logLineCount();
    const [start, end] = [3 * MB, 3 * MB + 65_535];
    const res = await request(edge.url, `/v2/${REGISTRY}/lab/wide/blobs/${layer.digest}`, { headers: { range: `bytes=${start}-${end}` } });
    assert.equal(res.status, 206);
    assert.equal(res.headers['content-range'], `bytes ${start}-${end}/${layer.size}`);
    assert.ok(res.body.equals((await blobBytes(layer)).subarray(start, end + 1)), 'the range differs from the pushed bytes');
    const sent = blobBytesServed(await upstreamTrafficSince(up, mark), layer.digest);
    assert.ok(sent >= end - start + 1, `the registry sent ${sent} bytes for a ${end - start + 1}-byte range`);
    assert.ok(sent < 1 * MB, `the registry sent ${sent} bytes of the ${layer.size}-byte blob for one 64 KiB range`);
    assert.equal(committed(edge, layer.digest), false);
  });

  test('over a 2 MB/s link to the parent: a lazy read costs the link its range, eight whole pulls one blob', async () => {
    const link = await startRelay({ target: { host: '127.0.0.1', port: parent.port }, rateBytesPerSec: 2 * MB });
    cleanups.push(() => link.close());
    const far = await edgeBerth({ upstreams: [parentOf(link.url())], lazyFill: 'on-demand' });
    for (const name of ['lab/wide', 'lab/small']) {
      const m = await request(far.url, `/v2/${REGISTRY}/${name}/manifests/1`, { headers: { accept: MediaTypes.oci.manifest } });
      assert.equal(m.status, 200);
    }
    const layer = wide.layers[0]!;
    let before = link.bytesDown;
    const [start, end] = [5 * MB, 5 * MB + 65_535];
    const res = await request(far.url, `/v2/${REGISTRY}/lab/wide/blobs/${layer.digest}`, { headers: { range: `bytes=${start}-${end}` } });
    assert.equal(res.status, 206);
    assert.ok(res.body.equals((await blobBytes(layer)).subarray(start, end + 1)));
    const lazy = link.bytesDown - before;
    assert.ok(lazy < 2 * (end - start + 1), `a 64 KiB range cost the link ${lazy} bytes`);
    // Eight nodes pull the same cold layer through the edge at once: the link carries it once.
    const big = seeded.small.layers[2]!;
    before = link.bytesDown;
    const pulls = await Promise.all(Array.from({ length: 8 }, () => request(far.url, `/v2/${REGISTRY}/lab/small/blobs/${big.digest}`)));
    for (const p of pulls) {
      assert.equal(p.status, 200);
      assert.equal(sha256(p.body), big.digest);
    }
    const whole = link.bytesDown - before;
    assert.ok(whole >= big.size && whole < big.size * 1.05 + 64 * 1024, `eight pulls of a ${big.size}-byte blob cost the link ${whole} bytes`);
  });

  test("the -esgz tag through the edge is the parent's conversion, with estargz on or off at the edge", async () => {
    const plain = await edgeBerth({ upstreams: [parentOf(parent.url)], estargz: { enabled: false } });
    const ref = `/v2/${REGISTRY}/lab/small/manifests/1-esgz`;
    const headers = { accept: ACCEPT_ALL_MANIFESTS };
    const fromEdge = await request(edge.url, ref, { headers });
    assert.equal(fromEdge.status, 200, fromEdge.body.toString('utf8'));
    const fromParent = await request(parent.url, ref, { headers });
    assert.equal(fromParent.status, 200);
    assert.equal(fromEdge.headers['docker-content-digest'], fromParent.headers['docker-content-digest']);
    assert.ok(fromEdge.body.equals(fromParent.body));
    assert.notEqual(sha256(fromEdge.body), seeded.small.manifestDigest, 'the -esgz tag answered the source image');
    assert.match(fromEdge.body.toString('utf8'), /dev\.berth\.estargz\.source/);
    const fromPlain = await request(plain.url, ref, { headers });
    assert.equal(fromPlain.status, 200);
    assert.ok(fromPlain.body.equals(fromParent.body));
    // The converted layers exist only on the parent: skopeo gets them through the edge, each hashing to its name.
    const dir = path.join(work, 'esgz-via-edge');
    await skopeoCopy(`docker://${edge.host}/${REGISTRY}/lab/small:1-esgz`, `dir:${dir}`);
    assert.ok((await readDirLayout(dir)).manifest.equals(fromParent.body));
    // Prewarm with estargz on an edge asks the parent for the converted tag too, and converts nothing itself.
    const pre = await edgeBerth({ upstreams: [parentOf(parent.url)] });
    const res = await fetch(`${pre.url}/_berth/prewarm`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ references: [`${REGISTRY}/lab/small:1`], estargz: true }),
    });
    const lines = (await res.text())
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { type: string; ok?: string[]; failed?: unknown[] });
    const summary = lines.at(-1)!;
    assert.equal(summary.type, 'summary');
    assert.deepEqual(summary.failed, []);
    assert.equal(summary.ok?.length, 1);
    assert.equal(committed(pre, sha256(fromParent.body)), true, 'the converted manifest was not prewarmed');
    for (const b of [edge, pre]) {
      const conversions = await b.berth.metrics.estargzConversions.get();
      assert.equal(
        conversions.values.reduce((n, v) => n + v.value, 0),
        0,
        'an edge converted an image itself',
      );
    }
  });

  test('tag lists and HEADs keep their registry through the edge; a page link names it once', async () => {
    const res = await request(edge.url, `/v2/lab/small/tags/list?ns=${REGISTRY}&n=1`);
    assert.equal(res.status, 200, res.body.toString('utf8'));
    assert.deepEqual((JSON.parse(res.body.toString('utf8')) as { tags: string[] }).tags, ['1']);
    assert.equal(res.headers.link, `</v2/lab/small/tags/list?ns=${REGISTRY}&n=1&last=1>; rel="next"`);
    const rest = await request(edge.url, `/v2/lab/small/tags/list?ns=${REGISTRY}&n=1&last=1`);
    assert.deepEqual((JSON.parse(rest.body.toString('utf8')) as { tags: string[] }).tags, ['2']);
    const cold = never.config;
    const head = await request(edge.url, `/v2/${REGISTRY}/lab/never/blobs/${cold.digest}`, { method: 'HEAD' });
    assert.equal(head.status, 200);
    assert.equal(Number(head.headers['content-length']), cold.size);
  });

  test("referrers of a subject through the edge are the parent's", async () => {
    const direct = await referrers(parent.url, `${REGISTRY}/lab/small`, seeded.small.manifestDigest);
    assert.equal(direct.status, 200);
    assert.equal(direct.manifests.length, 1);
    const viaEdge = await referrers(edge.url, `${REGISTRY}/lab/small`, seeded.small.manifestDigest);
    assert.equal(viaEdge.status, 200);
    assert.deepEqual(digests(viaEdge), digests(direct));
    assert.equal(viaEdge.manifests[0]!.artifactType, COSIGN_SIG);
  });

  test('offline: except-parents reaches the parent and never the registry of its own, which answers as offline', async () => {
    const b = await edgeBerth({ offline: 'except-parents', upstreams: [parentOf(parent.url), { host: OTHER, url: other.url }] });
    const mark = other.logLineCount();
    const fromParent = await request(b.url, `/v2/${REGISTRY}/lab/multi/manifests/1`, { headers: { accept: ACCEPT_ALL_MANIFESTS } });
    assert.equal(fromParent.status, 200);
    assert.equal(sha256(fromParent.body), seeded.multi.digest);
    const tags = await request(b.url, `/v2/${REGISTRY}/lab/multi/tags/list`);
    assert.equal(tags.status, 200);
    assert.deepEqual((JSON.parse(tags.body.toString('utf8')) as { tags: string[] }).tags, ['1']);
    const manifest = await request(b.url, `/v2/${OTHER}/lab/other/manifests/1`, { headers: { accept: ACCEPT_ALL_MANIFESTS } });
    assert.equal(manifest.status, 404);
    assert.match(manifest.body.toString('utf8'), /offline/);
    const blob = await request(b.url, `/v2/${OTHER}/lab/other/blobs/${seeded.small.config.digest}`);
    assert.equal(blob.status, 404);
    assert.match(blob.body.toString('utf8'), /offline/);
    const otherTags = await request(b.url, `/v2/${OTHER}/lab/other/tags/list`);
    assert.equal(otherTags.status, 404);
    assert.equal((await request(b.url, `/v2/${OTHER}/lab/other/referrers/${seeded.small.manifestDigest}`)).status, 200);
    assert.deepEqual(await upstreamTrafficSince(other, mark), [], 'the registry of kind registry was contacted');
  });

  test('a parent with client auth is reached with the credentials the edge has for it (bearer token flow)', async () => {
    const withCreds = await edgeBerth({ upstreams: [parentOf(authParent.url, EDGE_CREDS)] });
    const anonymous = await edgeBerth({ upstreams: [parentOf(authParent.url)] });
    const ref = `/v2/${REGISTRY}/lab/small/manifests/1`;
    const ok = await request(withCreds.url, ref, { headers: { accept: ACCEPT_ALL_MANIFESTS } });
    assert.equal(ok.status, 200, ok.body.toString('utf8'));
    assert.equal(sha256(ok.body), seeded.small.manifestDigest);
    const blob = await request(withCreds.url, `/v2/${REGISTRY}/lab/small/blobs/${seeded.small.config.digest}`);
    assert.equal(blob.status, 200);
    assert.equal(sha256(blob.body), seeded.small.config.digest);
    const denied = await request(anonymous.url, `/v2/${REGISTRY}/lab/multi/manifests/1`, { headers: { accept: ACCEPT_ALL_MANIFESTS } });
    assert.equal(denied.status, 404, denied.body.toString('utf8'));
    assert.match(denied.body.toString('utf8'), /access denied/);
  });

  test('a parent with basic auth is reached with the credentials the edge has for it', async () => {
    const withCreds = await edgeBerth({ upstreams: [parentOf(basicParent.url, EDGE_CREDS)] });
    const wrong = await edgeBerth({ upstreams: [parentOf(basicParent.url, { ...EDGE_CREDS, password: 'not-it' })] });
    const ok = await request(withCreds.url, `/v2/${REGISTRY}/lab/small/manifests/1`, { headers: { accept: ACCEPT_ALL_MANIFESTS } });
    assert.equal(ok.status, 200, ok.body.toString('utf8'));
    assert.equal(sha256(ok.body), seeded.small.manifestDigest);
    const denied = await request(wrong.url, `/v2/${REGISTRY}/lab/small/manifests/1`, { headers: { accept: ACCEPT_ALL_MANIFESTS } });
    assert.equal(denied.status, 404, denied.body.toString('utf8'));
    assert.match(denied.body.toString('utf8'), /access denied/);
  });

  test('a parent that sends wrong bytes for a digest never gets them served clean', async () => {
    const liar = await startLyingParent(lie);
    cleanups.push(() => liar.close());
    const b = await edgeBerth({ upstreams: [parentOf(liar.url)] });
    const layer = lie.layers[0]!;
    const manifest = await request(b.url, `/v2/${REGISTRY}/lab/lie/manifests/1`, { headers: { accept: ACCEPT_ALL_MANIFESTS } });
    assert.equal(manifest.status, 200);
    // The registry is named on the wire: the path prefix and ns.
    assert.ok(
      liar.requests.some((r) => r.startsWith(`/v2/${REGISTRY}/lab/lie/manifests/1?`) && r.includes(`ns=${REGISTRY}`)),
      liar.requests.join('\n'),
    );
    for (let i = 0; i < 2; i++) {
      const got = await request(b.url, `/v2/${REGISTRY}/lab/lie/blobs/${layer.digest}`).catch((err: Error) => err);
      if (!(got instanceof Error)) {
        assert.notEqual(got.status, 200, 'wrong bytes were served as a clean 200');
        assert.equal(got.status, 502);
      }
      assert.equal(committed(b, layer.digest), false);
    }
    // The config, which the parent sent right, is cached.
    const config = await request(b.url, `/v2/${REGISTRY}/lab/lie/blobs/${lie.config.digest}`);
    assert.equal(config.status, 200);
    assert.equal(sha256(config.body), lie.config.digest);
  });

  test("with the registry down a miss through the edge is the parent's 503, and the edge keeps asking the parent", async () => {
    // A blob the parent holds and the edge does not.
    const held = seeded.multi.images[0]!.config;
    assert.equal((await request(parent.url, `/v2/${REGISTRY}/lab/multi/blobs/${held.digest}`)).status, 200);
    assert.equal(committed(edge, held.digest), false);
    await up.halt();
    try {
      // More misses than the edge's breaker takes (5): the parent answers each, so the parent is not down.
      for (let i = 0; i < 7; i++) {
        const res = await request(edge.url, `/v2/${REGISTRY}/lab/never/manifests/${i}`, { headers: { accept: ACCEPT_ALL_MANIFESTS } });
        assert.equal(res.status, 503, res.body.toString('utf8'));
      }
      const status = (await (await fetch(`${edge.url}/_berth/api/status`)).json()) as { upstreams: Array<{ host: string; breaker: string }> };
      assert.equal(status.upstreams.find((u) => u.host === REGISTRY)?.breaker, 'closed');
      // What the parent has cached it still serves through the edge.
      const blob = await request(edge.url, `/v2/${REGISTRY}/lab/multi/blobs/${held.digest}`);
      assert.equal(blob.status, 200);
      assert.equal(sha256(blob.body), held.digest);
    } finally {
      await up.restart();
    }
  });

  test('with the parent down the edge serves what it has cached, and a miss is a 503', async () => {
    await parent.kill();
    const dir = path.join(work, 'parent-down');
    await skopeoCopy(`docker://${edge.host}/${REGISTRY}/lab/small:1`, `dir:${dir}`);
    assert.ok((await readDirLayout(dir)).manifest.equals(seeded.small.manifest));
    const manifest = await request(edge.url, `/v2/${REGISTRY}/lab/never/manifests/1`, { headers: { accept: ACCEPT_ALL_MANIFESTS } });
    assert.equal(manifest.status, 503, manifest.body.toString('utf8'));
    const blob = await request(edge.url, `/v2/${REGISTRY}/lab/never/blobs/${never.layers[0]!.digest}`);
    assert.equal(blob.status, 503, blob.body.toString('utf8'));
    const range = await request(edge.url, `/v2/${REGISTRY}/lab/wide/blobs/${wide.layers[0]!.digest}`, { headers: { range: 'bytes=0-99' } });
    assert.equal(range.status, 503, range.body.toString('utf8'));
  });
});
