// The referrers API (issue #10) against an upstream that has one (a stand-in origin: merged with what berth
// pulled, filtered by berth, paged, checked, bounded, stale on garbage, the GitLab tag quirk), for local
// repositories (from the index, never an upstream), and behind auth.rules.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { Digest } from '../src/oci/digest.ts';
import { parseManifest } from '../src/oci/manifest.ts';
import { LOCAL_UPSTREAM } from '../src/registry/local-names.ts';
import { type InProcessBerth, startBerth } from './support/berth.ts';
import { request } from './support/http.ts';
import { ACCEPT_ALL_MANIFESTS, digestOf, type Image } from './support/images.ts';
import { type Artifact, buildArtifact, COSIGN_SIG, digests, INDEX, image0, referrerDescriptor, referrers, referrersTagOf, SPDX_SBOM } from './support/referrers.ts';
import { respond, type StandInOrigin, startStandInOrigin } from './support/stand-in-origin.ts';

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
  const modes = new Map<string, 'ok' | 'garbage' | 'not-index' | 'huge' | 'huge-undeclared' | 'html' | 'no-api' | 'paged' | 'foreign-link' | 'unchallenged-401'>();
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
        if (mode === 'unchallenged-401') return respond(reply, 401, { 'Content-Type': 'application/json' }, '{"errors":[{"code":"UNAUTHORIZED","message":"unauthorized"}]}');
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
      assert.equal(await b.berth.index.referrersCheckedAt('docker.io', 'api/app', s as Digest), undefined);
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

  test('a 401 without a challenge (Harbor before 2.8) means no referrers API: the fallback tag is asked', async () => {
    const s = subjectFor('harbor');
    modes.set(s, 'unchallenged-401');
    const before = origin.requests.length;
    const r = await referrers(b.url, 'api/app', s);
    assert.equal(r.status, 200, r.body);
    assert.deepEqual(r.manifests, []);
    assert.ok(origin.requests.slice(before).some((q) => q.path.endsWith(`/manifests/${referrersTagOf(s)}`)));
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
      await b.berth.index.recordManifest({
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
