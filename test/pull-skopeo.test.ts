// Pull-through core, driven by skopeo (a real client) and by raw HTTP where the wire format matters:
// what berth serves is byte for byte what was pushed upstream, a second pull costs the upstream nothing,
// HEAD answers without downloading, headers and tag pagination follow the distribution spec, and TLS
// and basic-auth upstreams work. Issue #2.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { type InProcessBerth, startBerth } from './support/berth.ts';
import { request } from './support/http.ts';
import { blobsOf, buildImage, buildIndex, digestOfFile, type Image, type Index, MediaTypes, pushImage, pushIndex, type Seeded, seedStandard } from './support/images.ts';
import { upstreamTrafficSince } from './support/links.ts';
import { skopeoCopy } from './support/skopeo.ts';
import { committedPath, exists } from './support/storage.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { type AccessEntry, startUpstream, type Upstream } from './support/upstream.ts';

const BIG_BYTES = 100 * 1024 * 1024;
const AUTH = { username: 'berth-test', password: `pw-${randomUUID()}` };

const isBlobGet = (e: AccessEntry): boolean => e.method === 'GET' && /\/blobs\/sha256:/.test(e.path);
const isManifestByDigestGet = (e: AccessEntry): boolean => e.method === 'GET' && /\/manifests\/sha256:/.test(e.path);

/** A `dir:` layout: the manifest file and every blob file, each checked to hash to its own name. */
async function readDirLayout(dir: string): Promise<{ manifest: Buffer; blobs: Set<string> }> {
  const blobs = new Set<string>();
  for (const name of await readdir(dir)) {
    if (name === 'manifest.json' || name === 'version') continue;
    const digest = await digestOfFile(path.join(dir, name));
    assert.equal(digest, `sha256:${name}`, `${name} in the dir: layout does not hash to its name`);
    blobs.add(digest);
  }
  return { manifest: await readFile(path.join(dir, 'manifest.json')), blobs };
}

/** An `oci:` layout: every file under blobs/sha256 checked to hash to its name. */
async function readOciLayout(dir: string): Promise<{ blobs: Map<string, string>; index: { manifests: Array<{ digest: string }> } }> {
  const blobs = new Map<string, string>();
  const root = path.join(dir, 'blobs', 'sha256');
  for (const name of await readdir(root)) {
    const file = path.join(root, name);
    const digest = await digestOfFile(file);
    assert.equal(digest, `sha256:${name}`, `blobs/sha256/${name} does not hash to its name`);
    blobs.set(digest, file);
  }
  return { blobs, index: JSON.parse(await readFile(path.join(dir, 'index.json'), 'utf8')) as { manifests: Array<{ digest: string }> } };
}

/** The manifest and every blob of an image arrived byte for byte. */
async function assertImageInDir(dir: string, image: Image): Promise<void> {
  const { manifest, blobs } = await readDirLayout(dir);
  assert.ok(manifest.equals(image.manifest), 'manifest.json differs from the manifest that was pushed');
  const expected = [image.config, ...image.layers].map((b) => b.digest).sort();
  assert.deepEqual([...blobs].sort(), expected);
}

describe('pulling through berth with skopeo', () => {
  let up: Upstream;
  let tlsUp: Upstream;
  let authUp: Upstream;
  let seeded: Seeded;
  /** A Docker manifest list (the one media type seedStandard does not push): lab/list:1 */
  let dockerList: Index;
  /** Images that exist only on the TLS and on the basic-auth upstream: their blobs must come from there. */
  let tlsImage: Image;
  let authImage: Image;
  let seedDir: string;
  let work: string;
  let b: InProcessBerth;

  before(async () => {
    seedDir = await makeTempDir('seed-skopeo');
    work = await makeTempDir('pull-skopeo');
    // Each assigned as soon as it runs, so after() stops it even if another one failed to start.
    await Promise.all([startUpstream().then((u) => (up = u)), startUpstream({ tls: true }).then((u) => (tlsUp = u)), startUpstream({ auth: AUTH }).then((u) => (authUp = u))]);
    seeded = await seedStandard(up, seedDir, { bigBytes: BIG_BYTES });
    dockerList = buildIndex({ format: 'docker', images: [seeded.v2s2] });
    await pushIndex(up, 'lab/list', '1', dockerList);
    tlsImage = await buildImage({ format: 'oci', layers: [{ files: { 'tls.txt': `over TLS ${randomUUID()}\n` } }] });
    authImage = await buildImage({ format: 'oci', layers: [{ files: { 'auth.txt': `with basic auth ${randomUUID()}\n` } }] });
    await Promise.all([pushImage(tlsUp, 'lab/secure', '1', tlsImage), pushImage(authUp, 'lab/private', '1', authImage)]);
    b = await startBerth({
      upstreams: [
        { host: 'docker.io', url: up.url },
        { host: 'quay.io', url: up.url },
        { host: 'tls.test', url: tlsUp.url, ca: tlsUp.caFile! },
        { host: 'tls-no-ca.test', url: tlsUp.url },
        { host: 'auth.test', url: authUp.url, username: AUTH.username, password: AUTH.password },
      ],
    });
  });

  after(async () => {
    await b?.stop();
    await Promise.all([up?.stop(), tlsUp?.stop(), authUp?.stop()]);
    await Promise.all([removeTempDir(seedDir), removeTempDir(work)]);
  });

  const dest = (name: string): string => path.join(work, `${name}-${randomUUID().slice(0, 8)}`);

  test('skopeo pulls an image by tag and gets the pushed manifest, config and layers byte for byte', async () => {
    const dir = dest('by-tag');
    await skopeoCopy(`docker://${b.host}/lab/small:1`, `dir:${dir}`);
    await assertImageInDir(dir, seeded.small);
  });

  test('skopeo pulls an image by digest', async () => {
    const dir = dest('by-digest');
    await skopeoCopy(`docker://${b.host}/lab/small@${seeded.small.manifestDigest}`, `dir:${dir}`);
    await assertImageInDir(dir, seeded.small);
  });

  test('skopeo --all pulls a multi-platform index with every platform intact', async () => {
    const dir = dest('index');
    await skopeoCopy(`docker://${b.host}/lab/multi:1`, `oci:${dir}`, { all: true });
    const { blobs, index } = await readOciLayout(dir);
    assert.deepEqual(
      index.manifests.map((m) => m.digest),
      [seeded.multi.digest],
    );
    assert.ok((await readFile(blobs.get(seeded.multi.digest)!)).equals(seeded.multi.index), 'index bytes differ');
    for (const image of seeded.multi.images) {
      assert.ok(blobs.has(image.manifestDigest), `manifest of ${image.platform.architecture} missing`);
      assert.ok((await readFile(blobs.get(image.manifestDigest)!)).equals(image.manifest));
    }
    for (const blob of blobsOf(seeded.multi)) assert.ok(blobs.has(blob.digest), `blob ${blob.digest} missing`);
  });

  test('skopeo pulls a Docker schema 2 image and keeps its media types', async () => {
    const dir = dest('v2s2');
    await skopeoCopy(`docker://${b.host}/lab/small:v2s2`, `dir:${dir}`);
    await assertImageInDir(dir, seeded.v2s2);
    const mt = (JSON.parse(seeded.v2s2.manifest.toString('utf8')) as { mediaType: string }).mediaType;
    assert.equal(mt, MediaTypes.docker.manifest);
  });

  test('an image named with a host prefix (127.0.0.1:PORT/quay.io/org/multi:1) comes from that upstream', async () => {
    const mark = up.logLineCount();
    const dir = dest('quay');
    await skopeoCopy(`docker://${b.host}/quay.io/org/multi:1`, `oci:${dir}`, { all: true });
    const { blobs, index } = await readOciLayout(dir);
    assert.deepEqual(
      index.manifests.map((m) => m.digest),
      [seeded.multi.digest],
    );
    for (const image of seeded.multi.images) assert.ok(blobs.has(image.manifestDigest));
    for (const blob of blobsOf(seeded.multi)) assert.ok(blobs.has(blob.digest));
    // quay.io's repository is org/multi: the prefix names the upstream and is not part of the name there.
    const traffic = await upstreamTrafficSince(up, mark);
    assert.ok(
      traffic.some((e) => e.method === 'GET' && e.path.split('?')[0] === '/v2/org/multi/manifests/1'),
      `no GET /v2/org/multi/manifests/1 upstream; saw ${traffic.map((e) => `${e.method} ${e.path}`).join(', ')}`,
    );
    assert.ok(!traffic.some((e) => e.path.includes('quay.io')), 'the host prefix leaked into the upstream path');
  });

  test('a one-segment Docker Hub name (small:1) is pulled as library/small:1', async () => {
    const mark = up.logLineCount();
    const dir = dest('library');
    await skopeoCopy(`docker://${b.host}/small:1`, `dir:${dir}`);
    await assertImageInDir(dir, seeded.small);
    const traffic = await upstreamTrafficSince(up, mark);
    assert.ok(traffic.some((e) => e.method === 'GET' && e.path.split('?')[0] === '/v2/library/small/manifests/1'));
    assert.ok(!traffic.some((e) => /^\/v2\/small\//.test(e.path)), 'the name reached the upstream without library/');
  });

  test('pulling the same image again costs the upstream no blob or manifest-by-digest GET', async () => {
    await skopeoCopy(`docker://${b.host}/lab/multi:1`, `oci:${dest('warm')}`, { all: true });
    const mark = up.logLineCount();
    const dir = dest('again');
    await skopeoCopy(`docker://${b.host}/lab/multi:1`, `oci:${dir}`, { all: true });
    const { blobs } = await readOciLayout(dir);
    for (const blob of blobsOf(seeded.multi)) assert.ok(blobs.has(blob.digest));
    const traffic = await upstreamTrafficSince(up, mark);
    assert.deepEqual(traffic.filter(isBlobGet), [], 'blob GETs reached the upstream');
    assert.deepEqual(traffic.filter(isManifestByDigestGet), [], 'manifest-by-digest GETs reached the upstream');
  });

  test('HEAD of an uncached manifest and blob answers the real size and digest without downloading the blob', async () => {
    const big = seeded.big!;
    const layer = big.layers[0]!;
    const mark = up.logLineCount();
    const blob = await request(b.url, `/v2/lab/big/blobs/${layer.digest}`, { method: 'HEAD' });
    assert.equal(blob.status, 200);
    assert.equal(blob.headers['content-length'], String(layer.size));
    assert.equal(blob.headers['docker-content-digest'], layer.digest);
    const manifest = await request(b.url, '/v2/lab/big/manifests/1', { method: 'HEAD', headers: { accept: MediaTypes.oci.manifest } });
    assert.equal(manifest.status, 200);
    assert.equal(manifest.headers['content-length'], String(big.manifest.length));
    assert.equal(manifest.headers['docker-content-digest'], big.manifestDigest);
    assert.equal(manifest.headers['content-type'], MediaTypes.oci.manifest);
    assert.equal(manifest.body.length, 0);
    const traffic = await upstreamTrafficSince(up, mark);
    assert.deepEqual(traffic.filter(isBlobGet), [], 'HEAD made berth GET a blob upstream');
    assert.equal(blob.body.length, 0);
    // Nor did it start a download whose log line is still to come (storage/ingest/<hex>.<upstream>.data).
    const hex = layer.digest.slice('sha256:'.length);
    const ingest = await readdir(path.join(b.storage, 'ingest')).catch(() => [] as string[]);
    assert.deepEqual(
      ingest.filter((n) => n.startsWith(hex)),
      [],
      'HEAD started a fill of the blob',
    );
    assert.equal(await exists(committedPath(b, layer.digest)), false, 'HEAD downloaded the blob');
  });

  test('responses carry the registry API version, the manifest media type verbatim, the digest and an ETag', async () => {
    const base = await request(b.url, '/v2/');
    assert.equal(base.status, 200);
    assert.equal(base.headers['docker-distribution-api-version'], 'registry/2.0');
    const cases: Array<[string, Buffer, string, string]> = [
      ['/v2/lab/small/manifests/1', seeded.small.manifest, seeded.small.manifestDigest, MediaTypes.oci.manifest],
      ['/v2/lab/small/manifests/v2s2', seeded.v2s2.manifest, seeded.v2s2.manifestDigest, MediaTypes.docker.manifest],
      ['/v2/lab/multi/manifests/1', seeded.multi.index, seeded.multi.digest, MediaTypes.oci.index],
      ['/v2/lab/list/manifests/1', dockerList.index, dockerList.digest, MediaTypes.docker.index],
      [`/v2/lab/multi/manifests/${seeded.multi.images[1]!.manifestDigest}`, seeded.multi.images[1]!.manifest, seeded.multi.images[1]!.manifestDigest, MediaTypes.oci.manifest],
    ];
    const accept = [MediaTypes.oci.manifest, MediaTypes.oci.index, MediaTypes.docker.manifest, MediaTypes.docker.index].join(', ');
    for (const [p, bytes, digest, mediaType] of cases) {
      const res = await request(b.url, p, { headers: { accept } });
      assert.equal(res.status, 200, p);
      assert.equal(res.headers['content-type'], mediaType, p);
      assert.equal(res.headers['docker-content-digest'], digest, p);
      assert.equal(res.headers.etag, `"${digest}"`, p);
      assert.equal(res.headers['docker-distribution-api-version'], 'registry/2.0', p);
      assert.equal(res.headers['content-length'], String(bytes.length), p);
      assert.ok(res.body.equals(bytes), `${p}: body differs from the pushed manifest`);
    }
    const config = seeded.small.config;
    const blob = await request(b.url, `/v2/lab/small/blobs/${config.digest}`);
    assert.equal(blob.status, 200);
    assert.equal(blob.headers['docker-content-digest'], config.digest);
    assert.equal(blob.headers.etag, `"${config.digest}"`);
    assert.equal(blob.headers['docker-distribution-api-version'], 'registry/2.0');
    assert.ok(blob.body.equals(config.bytes!));
  });

  test('an Accept list sent as several header lines is merged (as dockerd sends it)', async () => {
    // The index is only acceptable through the second line: a berth that read the first line alone
    // would ask the upstream for a single-image manifest and fail.
    const res = await request(b.url, '/v2/org/multi/manifests/1', {
      headers: { accept: [MediaTypes.docker.manifest, MediaTypes.oci.index, MediaTypes.oci.manifest] },
    });
    assert.equal(res.status, 200, res.body.toString('utf8'));
    assert.equal(res.headers['content-type'], MediaTypes.oci.index);
    assert.equal(res.headers['docker-content-digest'], seeded.multi.digest);
    // And a cached tag is served to a client whose acceptable type is on a later line.
    const cached = await request(b.url, '/v2/lab/small/manifests/1', {
      headers: { accept: [MediaTypes.docker.manifest, MediaTypes.docker.index, MediaTypes.oci.manifest] },
    });
    assert.equal(cached.status, 200, cached.body.toString('utf8'));
    assert.equal(cached.headers['docker-content-digest'], seeded.small.manifestDigest);
  });

  test('the tag list is paginated with n and last', async () => {
    const tags = async (q: string): Promise<{ status: number; link: string | undefined; body: { name: string; tags: string[] } }> => {
      const res = await request(b.url, `/v2/lab/small/tags/list${q}`);
      const link = res.headers.link;
      return { status: res.status, link: Array.isArray(link) ? link.join(', ') : link, body: JSON.parse(res.body.toString('utf8')) as { name: string; tags: string[] } };
    };
    const all = await tags('');
    assert.equal(all.status, 200);
    assert.equal(all.body.name, 'lab/small');
    assert.deepEqual([...all.body.tags].sort(), ['1', 'v2s2']);
    // The distribution spec: at most n tags, in lexical order, the rest behind a Link rel="next".
    const first = await tags('?n=1');
    assert.equal(first.status, 200);
    assert.deepEqual(first.body.tags, ['1']);
    assert.match(first.link ?? '', /^<\/v2\/lab\/small\/tags\/list\?(?=.*n=1)(?=.*last=1).*>; rel="next"$/);
    const second = await tags('?n=1&last=1');
    assert.deepEqual(second.body.tags, ['v2s2']);
    const none = await tags('?last=v2s2');
    assert.deepEqual(none.body.tags, []);
  });

  test('an HTTPS upstream with its own CA works', async () => {
    const mark = tlsUp.logLineCount();
    const dir = dest('tls');
    await skopeoCopy(`docker://${b.host}/tls.test/lab/secure:1`, `dir:${dir}`);
    await assertImageInDir(dir, tlsImage);
    const traffic = await tlsUp.waitForAccess((es) => es.filter((e) => isBlobGet(e) && e.status === 200).length === 2, { since: mark });
    assert.ok(traffic.some((e) => e.path === '/v2/lab/secure/manifests/1' && e.status === 200));
    // The CA is what makes it work: the same upstream without it is refused for its certificate.
    const untrusted = await request(b.url, '/v2/tls-no-ca.test/lab/secure/manifests/1');
    assert.ok(untrusted.status === 502 || untrusted.status === 503, `status ${untrusted.status} for an untrusted certificate`);
    assert.match(untrusted.body.toString('utf8'), /cert|self.signed/i);
  });

  test('an upstream that wants basic auth is pulled from with the configured username and password', async () => {
    const anonymous = await request(authUp.url, '/v2/lab/private/manifests/1');
    assert.equal(anonymous.status, 401, 'the auth upstream must refuse anonymous pulls, or this test proves nothing');
    const mark = authUp.logLineCount();
    const dir = dest('auth');
    await skopeoCopy(`docker://${b.host}/auth.test/lab/private:1`, `dir:${dir}`);
    await assertImageInDir(dir, authImage);
    const traffic = await authUp.waitForAccess((es) => es.filter((e) => isBlobGet(e) && e.status === 200).length === 2, { since: mark });
    assert.ok(traffic.some((e) => e.path === '/v2/lab/private/manifests/1' && e.status === 200));
  });
});
