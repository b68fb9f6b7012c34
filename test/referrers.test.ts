// The referrers API (issue #10, distribution spec v1.1 "Listing Referrers") for cached repositories: Debian's
// docker-registry has no referrers API, so berth falls back to the referrers tag `sha256-<hex>` that oras and
// cosign push there; the list is filtered by artifactType, cached with the tag TTL, served offline, and carried
// by `berth prewarm|export --with-referrers` and `berth import`.
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { request as undiciRequest } from 'undici';
import type { Digest } from '../src/oci/digest.ts';
import { parseManifest } from '../src/oci/manifest.ts';
import { LOCAL_UPSTREAM } from '../src/registry/local-names.ts';
import { StoragePaths } from '../src/store/paths.ts';
import { StoreIndex } from '../src/store/store-index.ts';
import { type InProcessBerth, startBerth, type UpstreamSpec } from './support/berth.ts';
import { describeRun, runBerth, writeCliConfig } from './support/berth-cli.ts';
import { request } from './support/http.ts';
import { ACCEPT_ALL_MANIFESTS, buildImage, digestOf, type Image, pushImage } from './support/images.ts';
import { type Artifact, buildArtifact, COSIGN_SIG, pushReferrers, referrerDescriptor, referrersTagOf, SPDX_SBOM } from './support/referrers.ts';
import { DEAD_ENDPOINT } from './support/safety.ts';
import { respond, type StandInOrigin, startStandInOrigin } from './support/stand-in-origin.ts';
import { hasBlobFile } from './support/storage.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const INDEX = 'application/vnd.oci.image.index.v1+json';

interface ReferrersAnswer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  manifests: Array<{ digest: string; artifactType?: string; annotations?: Record<string, string>; mediaType: string; size: number }>;
  body: string;
}

async function referrers(base: string, name: string, digest: string, query = ''): Promise<ReferrersAnswer> {
  const res = await request(base, `/v2/${name}/referrers/${digest}${query}`);
  const body = res.body.toString('utf8');
  const json = res.status === 200 ? (JSON.parse(body) as { schemaVersion: number; mediaType: string; manifests: ReferrersAnswer['manifests'] }) : undefined;
  if (json) {
    assert.equal(json.schemaVersion, 2);
    assert.equal(json.mediaType, INDEX);
  }
  return { status: res.status, headers: res.headers, manifests: json?.manifests ?? [], body };
}

const digests = (a: ReferrersAnswer): string[] => a.manifests.map((m) => m.digest).sort();

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
      assert.equal(warm.berth.pins.isPinned(sig.manifestDigest as Digest), true);
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

describe('referrers from an upstream with the referrers API (a stand-in origin), merged, checked and bounded', () => {
  let origin: StandInOrigin;
  let b: InProcessBerth;
  const subject = image0();
  const stored = buildArtifact(subject, COSIGN_SIG, 'pulled through the normal path');
  const listed = [
    { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: digestOf('listed sig'), size: 400, artifactType: COSIGN_SIG, annotations: { who: 'api' } },
    { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: digestOf('listed sbom'), size: 500, artifactType: SPDX_SBOM },
  ];
  /** What the origin answers for each subject's referrers. */
  const modes = new Map<string, 'ok' | 'garbage' | 'not-index' | 'huge' | 'huge-undeclared' | 'html' | 'no-api' | 'paged' | 'foreign-link'>();
  /** An index whose referrers tag the origin resolves to the index itself (as GitLab's registry does). */
  const selfTagged = Buffer.from(
    JSON.stringify({ schemaVersion: 2, mediaType: INDEX, manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: digestOf('a child, not a referrer'), size: 10 }] }),
  );
  const subjectFor = (what: string) => digestOf(`subject ${what}`);

  before(async () => {
    origin = await startStandInOrigin(async (req, reply) => {
      const url = new URL(req.path, 'http://origin');
      const m = /^\/v2\/api\/app\/referrers\/(sha256:[a-f0-9]{64})$/.exec(url.pathname);
      if (m) {
        const mode = modes.get(m[1]!) ?? 'ok';
        if (mode === 'ok') {
          const type = url.searchParams.get('artifactType');
          const list = m[1] === subject.manifestDigest ? listed : [listed[0]!];
          const body = JSON.stringify({ schemaVersion: 2, mediaType: INDEX, manifests: type ? list.filter((l) => l.artifactType === type) : list });
          return respond(reply, 200, { 'Content-Type': INDEX, ...(type ? { 'OCI-Filters-Applied': 'artifactType' } : {}) }, body);
        }
        if (mode === 'garbage') return respond(reply, 200, { 'Content-Type': INDEX }, '{"manifests": [{"digest": "nope"}');
        if (mode === 'not-index') return respond(reply, 200, { 'Content-Type': INDEX }, '{"manifests": [{"digest": "sha256:1234", "size": -1}]}');
        if (mode === 'paged' || mode === 'foreign-link') {
          const second = url.searchParams.get('last') !== null;
          const next = mode === 'paged' ? `</v2/api/app/referrers/${m[1]}?n=1&last=x>; rel="next"` : `<http://127.0.0.2:9/v2/api/app/referrers/${m[1]}?last=x>; rel="next"`;
          const body = JSON.stringify({ schemaVersion: 2, mediaType: INDEX, manifests: [listed[second ? 1 : 0]!] });
          return respond(reply, 200, { 'Content-Type': INDEX, ...(second ? {} : { Link: next }) }, body);
        }
        if (mode === 'no-api') return respond(reply, 404, { 'Content-Type': 'text/plain' }, '404 page not found');
        if (mode === 'html') return respond(reply, 200, { 'Content-Type': 'text/html' }, '<html>catch-all</html>');
        const chunk = Buffer.alloc(1 << 20, 0x20);
        reply.head(200, { 'Content-Type': INDEX, ...(mode === 'huge' ? { 'Content-Length': 6 << 20 } : {}) });
        for (let i = 0; i < 6 && !reply.socket.destroyed; i++) await reply.write(chunk);
        return reply.end();
      }
      if (url.pathname === `/v2/api/app/manifests/${referrersTagOf(digestOf(selfTagged))}`) {
        return respond(reply, 200, { 'Content-Type': INDEX, 'Docker-Content-Digest': digestOf(selfTagged) }, req.method === 'HEAD' ? '' : selfTagged);
      }
      if (url.pathname === `/v2/api/app/manifests/${stored.manifestDigest}`) {
        return respond(reply, 200, { 'Content-Type': stored.mediaType, 'Docker-Content-Digest': stored.manifestDigest }, req.method === 'HEAD' ? '' : stored.manifest);
      }
      respond(reply, 404, { 'Content-Type': 'application/json' }, '{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}');
    });
    // tagTtl 1 ms: every list request asks the origin (the stale path is reachable at once).
    b = await startBerth({ upstreams: [{ host: 'docker.io', url: origin.url }], tagTtl: '1ms' });
  });

  after(async () => {
    await b?.stop();
    await origin?.close();
  });

  test('the API answer is listed, merged with a referrer berth pulled through the normal path; no fallback tag asked', async () => {
    const pulled = await request(b.url, `/v2/api/app/manifests/${stored.manifestDigest}`, { headers: { accept: ACCEPT_ALL_MANIFESTS } });
    assert.equal(pulled.status, 200, pulled.body.toString());
    const before = origin.requests.length;
    const r = await referrers(b.url, 'api/app', subject.manifestDigest);
    assert.equal(r.status, 200, r.body);
    assert.deepEqual(digests(r), [...listed.map((l) => l.digest), stored.manifestDigest].sort());
    assert.deepEqual(
      r.manifests.find((m) => m.digest === stored.manifestDigest),
      referrerDescriptor(stored),
    );
    assert.deepEqual(
      r.manifests.find((m) => m.digest === listed[0]!.digest),
      listed[0],
    );
    const asked = origin.requests.slice(before).map((q) => q.path);
    assert.deepEqual(asked, [`/v2/api/app/referrers/${subject.manifestDigest}`], 'one request, unfiltered, and no sha256-<hex> tag');
  });

  test('berth filters by artifactType itself (one cached list per subject), with the header', async () => {
    const before = origin.requests.length;
    const r = await referrers(b.url, 'api/app', subject.manifestDigest, `?artifactType=${encodeURIComponent(COSIGN_SIG)}`);
    assert.equal(r.headers['oci-filters-applied'], 'artifactType');
    assert.deepEqual(digests(r), [listed[0]!.digest, stored.manifestDigest].sort());
    assert.ok(
      origin.requests.slice(before).every((q) => !q.path.includes('artifactType')),
      'the origin was asked for the whole list',
    );
  });

  for (const [mode, why] of [
    ['garbage', 'a body that is not JSON'],
    ['not-index', 'an index whose entries are not descriptors'],
    ['huge', 'a body declared past the bound'],
    ['huge-undeclared', 'a body that runs past the bound'],
  ] as const) {
    test(`${why}: 502 naming the upstream, nothing cached`, async () => {
      const s = subjectFor(mode);
      modes.set(s, mode);
      const r = await referrers(b.url, 'api/app', s);
      assert.equal(r.status, 502, r.body);
      assert.match(r.body, /upstream docker\.io/);
      assert.equal(b.berth.index.referrersCheckedAt('docker.io', 'api/app', s as Digest), undefined);
    });
  }

  test('a 2xx that is not an image index (a catch-all page) means no referrers API: the fallback tag is asked', async () => {
    const s = subjectFor('html');
    modes.set(s, 'html');
    const before = origin.requests.length;
    const r = await referrers(b.url, 'api/app', s);
    assert.equal(r.status, 200, r.body);
    assert.deepEqual(r.manifests, []);
    assert.ok(origin.requests.slice(before).some((q) => q.path.endsWith(`/manifests/${referrersTagOf(s)}`)));
  });

  test('a referrers tag that resolves to the subject itself (a registry that reads sha256-<hex> as the digest) lists nothing', async () => {
    const s = digestOf(selfTagged);
    modes.set(s, 'no-api');
    const r = await referrers(b.url, 'api/app', s);
    assert.equal(r.status, 200, r.body);
    assert.deepEqual(r.manifests, [], "the subject's own children are not its referrers");
    assert.ok(
      origin.requests.some((q) => q.path.endsWith(`/manifests/${referrersTagOf(s)}`)),
      'the fallback tag was asked',
    );
  });

  test('a paged answer is followed (Link rel="next" on the upstream), a Link to another host is not', async () => {
    const paged = subjectFor('paged');
    modes.set(paged, 'paged');
    assert.deepEqual(digests(await referrers(b.url, 'api/app', paged)), listed.map((l) => l.digest).sort());
    const foreign = subjectFor('foreign');
    modes.set(foreign, 'foreign-link');
    assert.deepEqual(digests(await referrers(b.url, 'api/app', foreign)), [listed[0]!.digest]);
  });

  test('a cached list is served stale when the upstream then answers garbage', async () => {
    const s = subjectFor('stale');
    assert.deepEqual(digests(await referrers(b.url, 'api/app', s)), [listed[0]!.digest]);
    modes.set(s, 'garbage');
    const r = await referrers(b.url, 'api/app', s);
    assert.equal(r.status, 200, r.body);
    assert.deepEqual(digests(r), [listed[0]!.digest]);
    assert.match(String(r.headers.warning), /^110 berth "Response is stale: upstream docker\.io/);
  });
});

describe('referrers of local repositories, from the index', () => {
  let origin: StandInOrigin;
  let b: InProcessBerth;

  before(async () => {
    origin = await startStandInOrigin((_req, reply) => respond(reply, 500, {}, 'a local repository must never reach an upstream'));
    b = await startBerth({ upstreams: [{ host: 'docker.io', url: origin.url }], local: { prefixes: ['site/'] } });
  });

  after(async () => {
    await b?.stop();
    await origin?.close();
  });

  test('every manifest of the repository whose subject is the digest, filtered by artifactType; an unknown digest is an empty index', async () => {
    const subject = image0();
    const sig = buildArtifact(subject, COSIGN_SIG, 'local signature', { 'dev.sigstore.cosign/bundle': '{}' });
    const sbom = buildArtifact(subject, SPDX_SBOM, 'local sbom');
    const elsewhere = buildArtifact(subject, COSIGN_SIG, 'in another repository');
    const seed = async (repository: string, m: Artifact | Image) => {
      await b.berth.store.putBytes(m.manifestDigest as Digest, m.manifest);
      const parsed = parseManifest(m.manifest);
      b.berth.index.recordManifest({
        upstream: LOCAL_UPSTREAM,
        repository,
        digest: m.manifestDigest as Digest,
        size: m.manifest.length,
        mediaType: m.mediaType,
        children: [...parsed.manifests, ...parsed.blobs],
        ...(parsed.subject ? { subject: parsed.subject.digest } : {}),
        ...(parsed.artifactType ? { artifactType: parsed.artifactType } : {}),
        ...(parsed.annotations ? { annotations: parsed.annotations } : {}),
      });
    };
    await seed('site/app', subject);
    await seed('site/app', sig);
    await seed('site/app', sbom);
    await seed('site/other', elsewhere);
    const before = origin.connections;
    const r = await referrers(b.url, 'site/app', subject.manifestDigest);
    assert.equal(r.status, 200, r.body);
    assert.deepEqual(digests(r), [sig.manifestDigest, sbom.manifestDigest].sort());
    assert.deepEqual(
      r.manifests.find((m) => m.digest === sig.manifestDigest),
      referrerDescriptor(sig),
    );
    const f = await referrers(b.url, 'site/app', subject.manifestDigest, `?artifactType=${encodeURIComponent(SPDX_SBOM)}`);
    assert.equal(f.headers['oci-filters-applied'], 'artifactType');
    assert.deepEqual(digests(f), [sbom.manifestDigest]);
    assert.deepEqual(digests(await referrers(b.url, 'site/other', subject.manifestDigest)), [elsewhere.manifestDigest]);
    const unknown = await referrers(b.url, 'site/app', `sha256:${'1'.repeat(64)}`);
    assert.equal(unknown.status, 200);
    assert.deepEqual(unknown.manifests, []);
    assert.equal((await referrers(b.url, 'site/app', 'sha256:zz')).status, 400);
    assert.equal(origin.connections, before, 'no connection to the upstream');
  });
});

describe('auth.rules cover the referrers route', () => {
  let origin: StandInOrigin;
  let b: InProcessBerth;

  before(async () => {
    origin = await startStandInOrigin((_req, reply) => respond(reply, 200, { 'Content-Type': INDEX }, JSON.stringify({ schemaVersion: 2, mediaType: INDEX, manifests: [] })));
    b = await startBerth({ upstreams: [{ host: 'docker.io', url: origin.url }], auth: { anonymous: true, rules: [{ prefix: 'docker.io/secret/', users: ['ci'] }] } });
  });

  after(async () => {
    await b?.stop();
    await origin?.close();
  });

  test('a repository an anonymous client may not pull has no referrers list for it either (401), and the upstream is not asked', async () => {
    const before = origin.requests.length;
    const denied = await referrers(b.url, 'secret/app', digestOf('x'));
    assert.equal(denied.status, 401, denied.body);
    assert.equal(origin.requests.length, before);
    const open = await referrers(b.url, 'open/app', digestOf('x'));
    assert.equal(open.status, 200, open.body);
  });
});

/** A small image manifest (a subject); its bytes are never fetched by these tests. */
function image0(): Image {
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', nonce: Math.random() }));
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: digestOf(config), size: config.length },
      layers: [],
    }),
  );
  return {
    manifest,
    manifestDigest: digestOf(manifest),
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { digest: digestOf(config), size: config.length, mediaType: 'application/vnd.oci.image.config.v1+json', bytes: config },
    layers: [],
    platform: { os: 'linux', architecture: 'amd64' },
  };
}
