// The referrers API (issue #10, distribution spec v1.1 "Listing Referrers") for cached repositories: Debian's
// docker-registry has no referrers API, so berth falls back to the referrers tag `sha256-<hex>` that oras and
// cosign push there; the list is filtered by artifactType, cached with the tag TTL, served offline, and carried
// by `berth prewarm|export --with-referrers` and `berth import`.
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { request as undiciRequest } from 'undici';
import type { Digest } from '../src/oci/digest.ts';
import { StoragePaths } from '../src/store/paths.ts';
import { StoreIndex } from '../src/store/store-index.ts';
import { type InProcessBerth, startBerth, type UpstreamSpec } from './support/berth.ts';
import { describeRun, runBerth, writeCliConfig } from './support/berth-cli.ts';
import { request } from './support/http.ts';
import { ACCEPT_ALL_MANIFESTS, buildImage, type Image, pushImage } from './support/images.ts';
import { type Artifact, buildArtifact, COSIGN_SIG, digests, pushReferrers, referrerDescriptor, referrers, referrersTagOf, SPDX_SBOM } from './support/referrers.ts';
import { DEAD_ENDPOINT } from './support/safety.ts';
import { hasBlobFile } from './support/storage.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

describe('referrers of cached images, through the referrers tag of an upstream without the API', () => {
  let up: Upstream;
  let work: string;
  let image: Image;
  let sig: Artifact;
  let sbom: Artifact;
  let unlisted: Image;
  let upstreams: UpstreamSpec[];
  let b: InProcessBerth;
  const storage = () => path.join(work, 'online');

  before(async () => {
    work = await makeTempDir('referrers');
    up = await startUpstream();
    image = await buildImage({ format: 'oci', layers: [{ files: { 'app/hello.txt': `signed ${work}\n` } }] });
    unlisted = await buildImage({ format: 'oci', layers: [{ files: { 'app/hello.txt': `unsigned ${work}\n` } }] });
    sig = buildArtifact(image, COSIGN_SIG, `{"critical":{"image":{"docker-manifest-digest":"${image.manifestDigest}"}}}`, { 'dev.cosignproject.cosign/signature': 'MEUCIQ…' });
    sbom = buildArtifact(image, SPDX_SBOM, '{"spdxVersion":"SPDX-2.3"}');
    await pushImage(up, 'lab/signed', '1', image);
    await pushImage(up, 'lab/signed', 'unsigned', unlisted);
    await pushReferrers(up, 'lab/signed', [sig, sbom]);
    upstreams = [{ host: 'docker.io', url: up.url }];
    b = await startBerth({ upstreams, storage: storage(), tagTtl: '1h' });
  });

  after(async () => {
    await b?.stop();
    await up?.stop();
    if (work) await removeTempDir(work);
  });

  test('the upstream has no referrers API: it answers 404 (the reason for the fallback)', async () => {
    const res = await request(up.url, `/v2/lab/signed/referrers/${image.manifestDigest}`);
    assert.equal(res.status, 404);
  });

  test('lists the artifacts whose subject is the image, from the sha256-<hex> tag, as an OCI image index', async () => {
    const mark = up.logLineCount();
    const r = await referrers(b.url, 'lab/signed', image.manifestDigest);
    assert.equal(r.status, 200, r.body);
    assert.match(String(r.headers['content-type']), /^application\/vnd\.oci\.image\.index\.v1\+json/);
    assert.equal(r.headers['oci-filters-applied'], undefined, 'no filter asked, none applied');
    const byDigest = new Map(r.manifests.map((m) => [m.digest, m]));
    assert.deepEqual(byDigest.get(sig.manifestDigest), referrerDescriptor(sig));
    assert.deepEqual(byDigest.get(sbom.manifestDigest), referrerDescriptor(sbom));
    assert.equal(r.manifests.length, 2);
    const seen = await up.waitForAccess((es) => es.some((e) => e.path.includes(`/manifests/${referrersTagOf(image.manifestDigest)}`)), { since: mark });
    assert.ok(
      seen.some((e) => e.path === `/v2/lab/signed/referrers/${image.manifestDigest}` && e.status === 404),
      'berth asked the referrers API first',
    );
  });

  test('?artifactType= filters, with OCI-Filters-Applied: artifactType', async () => {
    const r = await referrers(b.url, 'lab/signed', image.manifestDigest, `?artifactType=${encodeURIComponent(COSIGN_SIG)}`);
    assert.equal(r.status, 200, r.body);
    assert.equal(r.headers['oci-filters-applied'], 'artifactType');
    assert.deepEqual(digests(r), [sig.manifestDigest]);
    const none = await referrers(b.url, 'lab/signed', image.manifestDigest, '?artifactType=application/x-nothing');
    assert.equal(none.headers['oci-filters-applied'], 'artifactType');
    assert.deepEqual(none.manifests, []);
  });

  test('within tagTtl the list is answered from the cache: nothing reaches the upstream', async () => {
    const mark = up.logLineCount();
    for (let i = 0; i < 3; i++) assert.equal(digests(await referrers(b.url, 'lab/signed', image.manifestDigest)).length, 2);
    // A request that does reach the upstream, to know its log is written up to here.
    await request(b.url, '/v2/lab/signed/manifests/unsigned', { headers: { accept: ACCEPT_ALL_MANIFESTS } });
    const seen = await up.waitForAccess((es) => es.some((e) => e.path.endsWith('/manifests/unsigned')), { since: mark });
    assert.deepEqual(
      seen.filter((e) => e.path.includes('/referrers/') || e.path.includes('sha256-')),
      [],
    );
  });

  test('an image without referrers and an unknown digest are empty indexes (200), a bad digest 400, a bad artifactType 400', async () => {
    const empty = await referrers(b.url, 'lab/signed', unlisted.manifestDigest);
    assert.equal(empty.status, 200, empty.body);
    assert.deepEqual(empty.manifests, []);
    const unknown = await referrers(b.url, 'lab/signed', `sha256:${'0'.repeat(64)}`);
    assert.equal(unknown.status, 200, unknown.body);
    assert.deepEqual(unknown.manifests, []);
    for (const bad of ['sha256:abc', 'latest', `sha512:${'a'.repeat(128)}`, `SHA256:${'a'.repeat(64)}`]) {
      const r = await referrers(b.url, 'lab/signed', bad);
      assert.equal(r.status, 400, `${bad}: ${r.body}`);
      assert.equal((JSON.parse(r.body) as { errors: Array<{ code: string }> }).errors[0]!.code, 'DIGEST_INVALID');
    }
    for (const q of ['?artifactType=not%20a%20type', `?artifactType=${encodeURIComponent(COSIGN_SIG)}&artifactType=${encodeURIComponent(SPDX_SBOM)}`]) {
      const r = await referrers(b.url, 'lab/signed', image.manifestDigest, q);
      assert.equal(r.status, 400, `${q}: ${r.body}`);
    }
  });

  test('a referrer manifest and its blob come through the normal pull path', async () => {
    const m = await request(b.url, `/v2/lab/signed/manifests/${sig.manifestDigest}`, { headers: { accept: ACCEPT_ALL_MANIFESTS } });
    assert.equal(m.status, 200, m.body.toString());
    assert.equal(m.headers['docker-content-digest'], sig.manifestDigest);
    assert.deepEqual(m.body, sig.manifest);
    const blob = await request(b.url, `/v2/lab/signed/blobs/${sig.layers[0]!.digest}`);
    assert.equal(blob.status, 200);
    assert.deepEqual(blob.body, sig.layers[0]!.bytes);
  });

  test('a route name with a referrers segment is a name (the last /referrers/ is the route)', async () => {
    await pushImage(up, 'lab/referrers/app', '1', image);
    const m = await request(b.url, '/v2/lab/referrers/app/manifests/1', { headers: { accept: ACCEPT_ALL_MANIFESTS } });
    assert.equal(m.status, 200, m.body.toString());
    const r = await referrers(b.url, 'lab/referrers/app', image.manifestDigest);
    assert.equal(r.status, 200, r.body);
    assert.deepEqual(r.manifests, [], 'referrers are per repository: lab/referrers/app has none');
    const trailing = await request(b.url, `/v2/lab/signed/referrers/${image.manifestDigest}/`);
    assert.equal(trailing.status, 404);
  });

  test('offline, the cached list is served (filtered too) without the upstream', async () => {
    await b.stop();
    const offline = await startBerth({ upstreams: [{ host: 'docker.io', url: `http://${DEAD_ENDPOINT}` }], storage: storage(), offline: true });
    try {
      const r = await referrers(offline.url, 'lab/signed', image.manifestDigest);
      assert.equal(r.status, 200, r.body);
      assert.deepEqual(digests(r), [sig.manifestDigest, sbom.manifestDigest].sort());
      const f = await referrers(offline.url, 'lab/signed', image.manifestDigest, `?artifactType=${encodeURIComponent(SPDX_SBOM)}`);
      assert.deepEqual(digests(f), [sbom.manifestDigest]);
      assert.equal(f.headers['oci-filters-applied'], 'artifactType');
      const unknown = await referrers(offline.url, 'lab/signed', unlisted.manifestDigest);
      assert.equal(unknown.status, 200);
    } finally {
      await offline.stop();
      b = await startBerth({ upstreams, storage: storage(), tagTtl: '1h' });
    }
  });

  test('with the upstream stopped and the list due, the cached list is served stale (Warning)', async () => {
    // tagTtl 1 ms: every request after the first is due for asking the upstream again.
    const due = await startBerth({ upstreams, storage: path.join(work, 'due'), tagTtl: '1ms' });
    try {
      assert.equal(digests(await referrers(due.url, 'lab/signed', image.manifestDigest)).length, 2);
      await up.halt();
      const r = await referrers(due.url, 'lab/signed', image.manifestDigest);
      assert.equal(r.status, 200, r.body);
      assert.deepEqual(digests(r), [sig.manifestDigest, sbom.manifestDigest].sort());
      assert.match(String(r.headers.warning), /^110 berth "Response is stale/);
      const never = await referrers(due.url, 'lab/signed', unlisted.manifestDigest);
      assert.ok(never.status === 502 || never.status === 503, `a list never fetched cannot be served stale: ${never.status} ${never.body}`);
      assert.match(never.body, new RegExp(`upstream ${up.host.replace(/[.]/g, '\\.')}|docker\\.io`));
    } finally {
      await up.restart();
      await due.stop();
    }
  });

  test('berth export --with-referrers carries them; berth import keeps them, listed offline at the isolated site', async () => {
    const connected = await writeCliConfig(path.join(work, 'export.yaml'), { storage: path.join(work, 'export-store'), upstreams });
    const bundle = path.join(work, 'signed.tar');
    const exp = ['export', 'docker.io/lab/signed:1', '--with-referrers', '-o', bundle, '--config', connected];
    const e = await runBerth(exp);
    assert.equal(e.code, 0, describeRun(exp, e));
    const plainBundle = path.join(work, 'plain.tar');
    const plain = ['export', 'docker.io/lab/signed:1', '-o', plainBundle, '--config', connected];
    assert.equal((await runBerth(plain)).code, 0);

    const site = path.join(work, 'isolated');
    const isolated = await writeCliConfig(path.join(work, 'isolated.yaml'), { storage: site, upstreams: [{ host: 'docker.io', url: `http://${DEAD_ENDPOINT}` }], offline: true });
    const imp = ['import', bundle, '--config', isolated];
    const i = await runBerth(imp);
    assert.equal(i.code, 0, describeRun(imp, i));
    for (const d of [sig.manifestDigest, sbom.manifestDigest, sig.layers[0]!.digest, sbom.layers[0]!.digest]) assert.ok(await hasBlobFile(site, d), `${d} was imported`);
    const plainSite = path.join(work, 'plain-site');
    const plainConfig = await writeCliConfig(path.join(work, 'plain-site.yaml'), { storage: plainSite, upstreams: [{ host: 'docker.io', url: `http://${DEAD_ENDPOINT}` }], offline: true });
    assert.equal((await runBerth(['import', plainBundle, '--config', plainConfig])).code, 0);
    assert.equal(await hasBlobFile(plainSite, sig.manifestDigest), false, 'without --with-referrers no referrer travels');

    const served = await startBerth({ upstreams: [{ host: 'docker.io', url: `http://${DEAD_ENDPOINT}` }], storage: site, offline: true });
    try {
      const r = await referrers(served.url, 'lab/signed', image.manifestDigest);
      assert.equal(r.status, 200, r.body);
      const byDigest = new Map(r.manifests.map((m) => [m.digest, m]));
      assert.deepEqual(byDigest.get(sig.manifestDigest), referrerDescriptor(sig));
      assert.deepEqual(byDigest.get(sbom.manifestDigest), referrerDescriptor(sbom));
      const f = await referrers(served.url, 'lab/signed', image.manifestDigest, `?artifactType=${encodeURIComponent(COSIGN_SIG)}`);
      assert.deepEqual(digests(f), [sig.manifestDigest]);
      const m = await request(served.url, `/v2/lab/signed/manifests/${sig.manifestDigest}`, { headers: { accept: ACCEPT_ALL_MANIFESTS } });
      assert.equal(m.status, 200, 'the signature itself is pullable offline');
    } finally {
      await served.stop();
    }
    // gc at the isolated site keeps them: their subject is tagged.
    const gc = ['gc', '--config', isolated];
    const g = await runBerth(gc);
    assert.equal(g.code, 0, describeRun(gc, g));
    assert.ok(await hasBlobFile(site, sig.manifestDigest), 'gc kept the referrer of a kept image');
  });

  test('a running berth prewarms with referrers when asked ("referrers": true on /_berth/prewarm, as berth prewarm --with-referrers sends)', async () => {
    const warm = await startBerth({ upstreams, storage: path.join(work, 'served-prewarm') });
    try {
      const res = await undiciRequest(`${warm.url}/_berth/prewarm`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ references: ['docker.io/lab/signed:1'], referrers: true }),
      });
      const lines = (await res.body.text())
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as { type: string; ok?: string[] });
      assert.equal(res.statusCode, 200);
      assert.deepEqual(lines.at(-1)?.ok, ['docker.io/lab/signed:1']);
      for (const d of [sig.manifestDigest, sbom.layers[0]!.digest]) assert.ok(await warm.berth.store.stat(d as Digest), `${d} was prewarmed`);
      assert.equal(await warm.berth.pins.isPinned(sig.manifestDigest as Digest), true);
    } finally {
      await warm.stop();
    }
  });

  test('berth prewarm --with-referrers fetches and pins them with the image', async () => {
    const store = path.join(work, 'prewarm-store');
    const config = await writeCliConfig(path.join(work, 'prewarm.yaml'), { storage: store, upstreams });
    const args = ['prewarm', 'docker.io/lab/signed:1', '--with-referrers', '--config', config];
    const r = await runBerth(args);
    assert.equal(r.code, 0, describeRun(args, r));
    for (const d of [image.manifestDigest, sig.manifestDigest, sbom.manifestDigest, sig.layers[0]!.digest, sbom.layers[0]!.digest, sig.config.digest]) {
      assert.ok(await hasBlobFile(store, d), `${d} was prewarmed`);
    }
    const index = new StoreIndex(new StoragePaths(store).database);
    try {
      for (const d of [sig.manifestDigest, sbom.manifestDigest, sig.layers[0]!.digest]) assert.equal(index.pins.isPinned(d as Digest), true, `${d} is pinned with the image`);
    } finally {
      index.close();
    }
    const plainStore = path.join(work, 'prewarm-plain');
    const plainConfig = await writeCliConfig(path.join(work, 'prewarm-plain.yaml'), { storage: plainStore, upstreams });
    assert.equal((await runBerth(['prewarm', 'docker.io/lab/signed:1', '--config', plainConfig])).code, 0);
    assert.equal(await hasBlobFile(plainStore, sig.manifestDigest), false, 'without --with-referrers no referrer is fetched');
  });
});
