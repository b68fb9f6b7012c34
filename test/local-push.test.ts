// The local registry beside the cache (issue #10), push API: manifests pushed by tag and digest into a
// local prefix are served back byte for byte with their own type, from the index only (the upstream's
// access log stays silent); what a manifest names must already be in the repository; bad bodies are a
// clear 4xx and nothing is kept; DELETE follows delete.enabled; tags/list and _catalog list local content.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import http from 'node:http';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Digest } from '../src/oci/digest.ts';
import { LOCAL_UPSTREAM } from '../src/registry/local-names.ts';
import { type InProcessBerth, startBerth } from './support/berth.ts';
import { ociLayoutManifests } from './support/berth-cli.ts';
import { buildImage, buildIndex, digestOf, type Image, MediaTypes, pushImage } from './support/images.ts';
import { upstreamTrafficSince } from './support/links.ts';
import { chunked, pushLocalImage, pushLocalIndex, putManifest, seedLocalBlobs, send } from './support/local-push.ts';
import { skopeoCopy } from './support/skopeo.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const LIMIT = 64 * 1024;

async function smallImage(format: 'oci' | 'docker', text: string): Promise<Image> {
  return buildImage({ format, layers: [{ files: { 'etc/hello.txt': `${text} ${randomUUID()}\n` } }] });
}

describe('pushing to and pulling from a local repository', () => {
  let up: Upstream;
  let berth: InProcessBerth;
  let noDelete: InProcessBerth;
  let cached: Image;
  let app: Image;
  let mark: number;

  before(async () => {
    up = await startUpstream();
    cached = await smallImage('oci', 'cached');
    await pushImage(up, 'lab/cached', '1', cached);
    const upstreams = [{ host: 'docker.io', url: up.url }];
    const local = { prefixes: ['site/'], allowAnonymousPush: true, maxManifestSize: LIMIT };
    [berth, noDelete] = await Promise.all([startBerth({ upstreams, local, delete: { enabled: true } }), startBerth({ upstreams, local })]);
    // Cached content under the same digests' store: the image through the pull path.
    const r = await send(berth, 'GET', '/v2/lab/cached/manifests/1', { headers: { accept: MediaTypes.oci.manifest } });
    assert.equal(r.status, 200);
    app = await smallImage('oci', 'app');
    mark = up.logLineCount();
  });

  after(async () => {
    await berth?.stop();
    await noDelete?.stop();
    await up?.stop();
  });

  test('a manifest PUT by tag is 201 with Location and Docker-Content-Digest, and pulls back byte-exact with its type', async () => {
    const r = await pushLocalImage(berth, 'site/app', '1', app);
    assert.equal(r.status, 201, r.body.toString());
    assert.equal(r.headers['docker-content-digest'], app.manifestDigest);
    assert.equal(r.headers.location, `/v2/site/app/manifests/${app.manifestDigest}`);
    assert.equal(r.headers['oci-subject'], undefined);
    for (const ref of ['1', app.manifestDigest]) {
      const get = await send(berth, 'GET', `/v2/site/app/manifests/${ref}`, { headers: { accept: MediaTypes.oci.manifest } });
      assert.equal(get.status, 200, `GET ${ref}`);
      assert.ok(get.body.equals(app.manifest), `GET ${ref} is not byte-exact`);
      assert.equal(get.headers['content-type'], MediaTypes.oci.manifest);
      assert.equal(get.headers['docker-content-digest'], app.manifestDigest);
      const head = await send(berth, 'HEAD', `/v2/site/app/manifests/${ref}`);
      assert.equal(head.status, 200);
      assert.equal(head.headers['content-length'], String(app.manifest.length));
    }
    const loc = await send(berth, 'GET', r.headers.location as string);
    assert.ok(loc.body.equals(app.manifest), 'Location is pullable');
  });

  test('by digest, and a Docker schema 2 image and manifest list, each served with its own type', async () => {
    const docker = await smallImage('docker', 'docker');
    const r = await pushLocalImage(berth, 'site/docker', docker.manifestDigest, docker);
    assert.equal(r.status, 201, r.body.toString());
    const list = buildIndex({ format: 'docker', images: [docker] });
    const l = await putManifest(berth, 'site/docker', 'list', list.index, list.mediaType);
    assert.equal(l.status, 201, l.body.toString());
    const got = await send(berth, 'GET', '/v2/site/docker/manifests/list');
    assert.equal(got.headers['content-type'], MediaTypes.docker.index);
    assert.ok(got.body.equals(list.index));
    const child = await send(berth, 'GET', `/v2/site/docker/manifests/${docker.manifestDigest}`);
    assert.equal(child.headers['content-type'], MediaTypes.docker.manifest);
    assert.ok(child.body.equals(docker.manifest));
  });

  test('an OCI index whose children are in the repository; a child only in another repository is MANIFEST_BLOB_UNKNOWN', async () => {
    const amd = await smallImage('oci', 'amd64');
    const arm = await buildImage({ format: 'oci', arch: 'arm64', layers: [{ files: { 'etc/arm': randomUUID() } }] });
    const index = buildIndex({ format: 'oci', images: [amd, arm] });
    const r = await pushLocalIndex(berth, 'site/multi', '1', index);
    assert.equal(r.status, 201, r.body.toString());
    const got = await send(berth, 'GET', '/v2/site/multi/manifests/1', { headers: { accept: MediaTypes.oci.index } });
    assert.equal(got.headers['content-type'], MediaTypes.oci.index);
    assert.ok(got.body.equals(index.index));
    // The same index into another repository: its children are in site/multi, not there.
    const other = await putManifest(berth, 'site/elsewhere', '1', index.index, index.mediaType);
    assert.equal(other.status, 400);
    assert.equal(other.code, 'MANIFEST_BLOB_UNKNOWN');
    assert.match(other.message ?? '', new RegExp(amd.manifestDigest));
  });

  test('skopeo pulls local images back (an image and a whole index) with the digests they were pushed with', async () => {
    const dir = await makeTempDir('local-skopeo');
    try {
      await skopeoCopy(`docker://${berth.host}/site/app:1`, `oci:${path.join(dir, 'app')}:site/app:1`);
      assert.equal((await ociLayoutManifests(path.join(dir, 'app')))[0]!.digest, app.manifestDigest);
      await skopeoCopy(`docker://${berth.host}/site/multi:1`, `oci:${path.join(dir, 'multi')}:1`, { all: true });
      const multi = JSON.parse((await send(berth, 'GET', '/v2/site/multi/manifests/1')).body.toString()) as { manifests: unknown[] };
      const got = await ociLayoutManifests(path.join(dir, 'multi'));
      assert.equal(got[0]!.digest, digestOf((await send(berth, 'GET', '/v2/site/multi/manifests/1')).body));
      assert.equal(multi.manifests.length, 2);
    } finally {
      await removeTempDir(dir);
    }
  });

  test('a manifest naming a blob the repository lacks is 400 MANIFEST_BLOB_UNKNOWN naming it, even when the cache has the blob', async () => {
    const img = await smallImage('oci', 'missing');
    await seedLocalBlobs(berth, 'site/missing', [img.config]);
    const r = await putManifest(berth, 'site/missing', '1', img.manifest, img.mediaType);
    assert.equal(r.status, 400);
    assert.equal(r.code, 'MANIFEST_BLOB_UNKNOWN');
    assert.match(r.message ?? '', new RegExp(img.layers[0]!.digest));
    assert.equal((await send(berth, 'GET', `/v2/site/missing/manifests/${img.manifestDigest}`)).status, 404, 'nothing kept');
    // The cached image's blobs are in berth's store, but not in this local repository.
    const c = await putManifest(berth, 'site/missing', 'cached', cached.manifest, cached.mediaType);
    assert.equal(c.status, 400);
    assert.equal(c.code, 'MANIFEST_BLOB_UNKNOWN');
  });

  test('a body that does not hash to the digest is 400 DIGEST_INVALID and nothing is kept', async () => {
    const img = await smallImage('oci', 'wrong');
    await seedLocalBlobs(berth, 'site/wrong', [img.config, ...img.layers]);
    const claimed = digestOf(Buffer.from(`not it ${randomUUID()}`));
    const r = await putManifest(berth, 'site/wrong', claimed, img.manifest, img.mediaType);
    assert.equal(r.status, 400);
    assert.equal(r.code, 'DIGEST_INVALID');
    assert.equal(await berth.berth.index.getBlob(img.manifestDigest as Digest), undefined);
    assert.equal((await send(berth, 'GET', `/v2/site/wrong/manifests/${claimed}`)).status, 404);
  });

  test('a body over local.maxManifestSize is 413, with Content-Length or chunked; one at the limit is read', async () => {
    const big = Buffer.alloc(LIMIT + 1, 0x20);
    const r = await putManifest(berth, 'site/big', '1', big, MediaTypes.oci.manifest);
    assert.equal(r.status, 413);
    assert.equal(r.code, 'MANIFEST_TOO_LARGE');
    assert.match(r.message ?? '', /maxManifestSize/);
    const c = await send(berth, 'PUT', '/v2/site/big/manifests/1', { body: chunked(Buffer.alloc(LIMIT * 4, 0x20)), contentType: MediaTypes.oci.manifest });
    assert.equal(c.status, 413);
    const atLimit = await putManifest(berth, 'site/big', '1', Buffer.alloc(LIMIT, 0x20), MediaTypes.oci.manifest);
    assert.equal(atLimit.status, 400, 'a body at the limit is parsed (and is no JSON)');
    assert.equal(atLimit.code, 'MANIFEST_INVALID');
  });

  test('Content-Type must be a manifest type equal to the body`s own; schema 1 and malformed subject, artifactType, annotations are MANIFEST_INVALID', async () => {
    const img = await smallImage('oci', 'types');
    await seedLocalBlobs(berth, 'site/types', [img.config, ...img.layers]);
    const json = JSON.parse(img.manifest.toString()) as Record<string, unknown>;
    const bad: Array<[string, Buffer, string | undefined]> = [
      ['Docker type for an OCI manifest', img.manifest, MediaTypes.docker.manifest],
      ['no Content-Type', img.manifest, undefined],
      ['application/json', img.manifest, 'application/json'],
      ['schema 1', Buffer.from(JSON.stringify({ schemaVersion: 1, name: 'site/types', tag: '1', fsLayers: [] })), 'application/vnd.docker.distribution.manifest.v1+prettyjws'],
      ['subject not a descriptor', Buffer.from(JSON.stringify({ ...json, subject: { digest: 'sha256:nope' } })), img.mediaType],
      ['artifactType not a media type', Buffer.from(JSON.stringify({ ...json, artifactType: 'not a type' })), img.mediaType],
      ['annotations not strings', Buffer.from(JSON.stringify({ ...json, annotations: { a: 1 } })), img.mediaType],
      ['no layers', Buffer.from(JSON.stringify({ ...json, layers: undefined })), img.mediaType],
    ];
    for (const [what, body, type] of bad) {
      const r = await putManifest(berth, 'site/types', '1', body, type as string);
      assert.equal(r.status, 400, `${what}: ${r.status} ${r.body.toString()}`);
      assert.equal(r.code, 'MANIFEST_INVALID', what);
    }
    assert.equal((await send(berth, 'GET', '/v2/site/types/manifests/1')).status, 404, 'nothing was tagged');
  });

  test('an artifact with a subject that is not there yet is accepted, with OCI-Subject', async () => {
    const empty = Buffer.from('{}');
    const sig = Buffer.from(`signature ${randomUUID()}`);
    const blobs = [
      { digest: digestOf(empty), size: empty.length, mediaType: 'application/vnd.oci.empty.v1+json', bytes: empty },
      { digest: digestOf(sig), size: sig.length, mediaType: 'application/vnd.example.signature', bytes: sig },
    ];
    await seedLocalBlobs(berth, 'site/app', blobs);
    const subject = digestOf(Buffer.from(`absent ${randomUUID()}`));
    const artifact = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: MediaTypes.oci.manifest,
        artifactType: 'application/vnd.example.signature',
        config: { mediaType: blobs[0]!.mediaType, digest: blobs[0]!.digest, size: blobs[0]!.size },
        layers: [{ mediaType: blobs[1]!.mediaType, digest: blobs[1]!.digest, size: blobs[1]!.size }],
        subject: { mediaType: MediaTypes.oci.manifest, digest: subject, size: 123 },
        annotations: { 'org.opencontainers.image.created': '2026-01-01T00:00:00Z' },
      }),
    );
    const r = await putManifest(berth, 'site/app', digestOf(artifact), artifact, MediaTypes.oci.manifest);
    assert.equal(r.status, 201, r.body.toString());
    assert.equal(r.headers['oci-subject'], subject);
    assert.ok((await send(berth, 'GET', `/v2/site/app/manifests/${digestOf(artifact)}`)).body.equals(artifact));
  });

  test('malformed references, names and bodies are a clear 400; a body cut short leaves nothing and berth keeps serving', async () => {
    const cases: Array<[string, string, Buffer, string]> = [
      ['PUT', '/v2/site/app/manifests/sha256:xyz', app.manifest, 'DIGEST_INVALID'],
      ['PUT', '/v2/site/app/manifests/-bad', app.manifest, 'MANIFEST_INVALID'],
      ['PUT', '/v2/site/App/manifests/1', app.manifest, 'NAME_INVALID'],
      ['PUT', '/v2/site/app/manifests/empty', Buffer.alloc(0), 'MANIFEST_INVALID'],
      ['PUT', '/v2/site/app/manifests/array', Buffer.from('[1,2]'), 'MANIFEST_INVALID'],
      ['PUT', '/v2/site/app/manifests/huge-number', Buffer.from(`{"schemaVersion":2,"config":{"digest":"sha256:${'a'.repeat(64)}","size":1e400}}`), 'MANIFEST_INVALID'],
      ['DELETE', '/v2/site/app/blobs/not-a-digest', Buffer.alloc(0), 'DIGEST_INVALID'],
    ];
    for (const [method, path, body, code] of cases) {
      const r = await send(berth, method, path, method === 'PUT' ? { body, contentType: MediaTypes.oci.manifest } : {});
      assert.equal(r.status, 400, `${method} ${path}: ${r.status} ${r.body.toString()}`);
      assert.equal(r.code, code, `${method} ${path}`);
    }
    // A client that dies in the middle of its body.
    await new Promise<void>((resolve) => {
      const u = new URL(berth.url);
      const req = http.request({ host: u.hostname, port: u.port, method: 'PUT', path: '/v2/site/cut/manifests/1', headers: { 'content-type': MediaTypes.oci.manifest, 'content-length': '1000' } });
      req.on('error', () => resolve());
      req.write(app.manifest.subarray(0, 10), () => setTimeout(() => req.destroy(), 50));
      req.on('close', () => resolve());
    });
    const after = await send(berth, 'GET', '/v2/site/cut/manifests/1');
    assert.equal(after.status, 404);
    assert.equal((await send(berth, 'GET', '/v2/site/app/manifests/1')).status, 200);
  });

  test('a push to a name outside local.prefixes (or a local name with ?ns=) is 405 UNSUPPORTED', async () => {
    for (const path of ['/v2/lab/app/manifests/1', '/v2/site/app/manifests/1?ns=docker.io', '/v2/sitex/app/manifests/1']) {
      const r = await send(berth, 'PUT', path, { body: app.manifest, contentType: app.mediaType });
      assert.equal(r.status, 405, path);
      assert.equal(r.code, 'UNSUPPORTED', path);
    }
  });

  test('tags/list of a local repository comes from the index, paginated with n, last and Link', async () => {
    for (const t of ['b', 'a', 'c']) assert.equal((await putManifest(berth, 'site/tags', t, await tagged(berth, 'site/tags'), MediaTypes.oci.manifest)).status, 201);
    const all = JSON.parse((await send(berth, 'GET', '/v2/site/tags/tags/list')).body.toString()) as { name: string; tags: string[] };
    assert.deepEqual(all, { name: 'site/tags', tags: ['a', 'b', 'c'] });
    const p1 = await send(berth, 'GET', '/v2/site/tags/tags/list?n=2');
    assert.deepEqual((JSON.parse(p1.body.toString()) as { tags: string[] }).tags, ['a', 'b']);
    assert.equal(p1.headers.link, '</v2/site/tags/tags/list?n=2&last=b>; rel="next"');
    const p2 = await send(berth, 'GET', '/v2/site/tags/tags/list?n=2&last=b');
    assert.deepEqual((JSON.parse(p2.body.toString()) as { tags: string[] }).tags, ['c']);
    assert.equal(p2.headers.link, undefined);
    const none = await send(berth, 'GET', '/v2/site/nothing-here/tags/list');
    assert.equal(none.status, 404);
    assert.equal(none.code, 'NAME_UNKNOWN');
  });

  test('a local pull never reaches the upstream: an unknown tag, or a digest the cache has, is 404 MANIFEST_UNKNOWN', async () => {
    const unknown = await send(berth, 'GET', '/v2/site/app/manifests/nope');
    assert.equal(unknown.status, 404);
    assert.equal(unknown.code, 'MANIFEST_UNKNOWN');
    const cachedDigest = await send(berth, 'GET', `/v2/site/app/manifests/${cached.manifestDigest}`);
    assert.equal(cachedDigest.status, 404, 'the cache’s copy is not this repository’s');
    assert.equal((await send(berth, 'GET', `/v2/site/never/manifests/${app.manifestDigest}`)).status, 404);
    const traffic = await upstreamTrafficSince(up, mark);
    assert.deepEqual(
      traffic.map((e) => `${e.method} ${e.path}`),
      [],
      'berth asked the upstream while serving local repositories',
    );
  });

  test('with delete.enabled false, DELETE of a local manifest, tag or blob is 405 UNSUPPORTED and removes nothing', async () => {
    const img = await smallImage('oci', 'kept');
    assert.equal((await pushLocalImage(noDelete, 'site/kept', '1', img)).status, 201);
    for (const path of ['/v2/site/kept/manifests/1', `/v2/site/kept/manifests/${img.manifestDigest}`, `/v2/site/kept/blobs/${img.layers[0]!.digest}`]) {
      const r = await send(noDelete, 'DELETE', path);
      assert.equal(r.status, 405, path);
      assert.equal(r.code, 'UNSUPPORTED');
      assert.match(r.message ?? '', /delete\.enabled/);
    }
    assert.equal((await send(noDelete, 'GET', '/v2/site/kept/manifests/1')).status, 200);
    assert.equal((await send(berth, 'DELETE', '/v2/lab/cached/manifests/1')).status, 405, 'a cached repository takes no DELETE');
  });

  test('DELETE of a tag, then of the manifest by digest (its other tags go too), then of a blob: 202, and 404 once gone', async () => {
    const img = await smallImage('oci', 'del');
    assert.equal((await pushLocalImage(berth, 'site/del', '1', img)).status, 201);
    assert.equal((await putManifest(berth, 'site/del', '2', img.manifest, img.mediaType)).status, 201);
    assert.equal((await putManifest(berth, 'site/del', '3', img.manifest, img.mediaType)).status, 201);
    const tag = await send(berth, 'DELETE', '/v2/site/del/manifests/1');
    assert.equal(tag.status, 202);
    assert.equal((await send(berth, 'GET', '/v2/site/del/manifests/1')).status, 404);
    assert.equal((await send(berth, 'GET', `/v2/site/del/manifests/${img.manifestDigest}`)).status, 200, 'the manifest stays');
    assert.equal((await send(berth, 'DELETE', '/v2/site/del/manifests/1')).status, 404, 'the tag is gone');
    const m = await send(berth, 'DELETE', `/v2/site/del/manifests/${img.manifestDigest}`);
    assert.equal(m.status, 202);
    for (const ref of ['2', '3', img.manifestDigest]) assert.equal((await send(berth, 'GET', `/v2/site/del/manifests/${ref}`)).status, 404, ref);
    assert.equal((await send(berth, 'DELETE', `/v2/site/del/manifests/${img.manifestDigest}`)).status, 404);
    const blob = await send(berth, 'DELETE', `/v2/site/del/blobs/${img.layers[0]!.digest}`);
    assert.equal(blob.status, 202);
    const again = await send(berth, 'DELETE', `/v2/site/del/blobs/${img.layers[0]!.digest}`);
    assert.equal(again.status, 404);
    assert.equal(again.code, 'BLOB_UNKNOWN');
    const push = await putManifest(berth, 'site/del', '1', img.manifest, img.mediaType);
    assert.equal(push.status, 400, 'the deleted blob is no longer in the repository');
    assert.equal(push.code, 'MANIFEST_BLOB_UNKNOWN');
    assert.equal(
      (await berth.berth.index.refsOf(img.config.digest as Digest)).some((r) => r.upstream === LOCAL_UPSTREAM && r.repository === 'site/del'),
      true,
      'the other blob stays',
    );
  });

  test('_catalog lists local repositories by name and cached ones as host/repository, sorted, paginated with Link', async () => {
    const all = JSON.parse((await send(berth, 'GET', '/v2/_catalog')).body.toString()) as { repositories: string[] };
    assert.ok(all.repositories.includes('site/app'));
    assert.ok(all.repositories.includes('docker.io/lab/cached'));
    assert.ok(!all.repositories.some((r) => r.startsWith('@')));
    assert.deepEqual(all.repositories, [...all.repositories].sort());
    const walked: string[] = [];
    let next: string | undefined = '/v2/_catalog?n=2';
    while (next) {
      const page = await send(berth, 'GET', next);
      assert.equal(page.status, 200);
      const names = (JSON.parse(page.body.toString()) as { repositories: string[] }).repositories;
      assert.ok(names.length <= 2);
      walked.push(...names);
      const link = page.headers.link as string | undefined;
      next = link ? /^<([^>]+)>; rel="next"$/.exec(link)?.[1] : undefined;
    }
    assert.deepEqual(walked, all.repositories);
    const bad = await send(berth, 'GET', '/v2/_catalog?n=x');
    assert.equal(bad.status, 400);
    const zero = await send(berth, 'GET', '/v2/_catalog?n=0');
    assert.deepEqual(JSON.parse(zero.body.toString()), { repositories: [] });
    assert.equal(zero.headers.link, undefined);
  });

  test('with auth.rules, _catalog leaves out the repositories the client may not pull', async () => {
    const ruled = await startBerth({
      upstreams: [{ host: 'docker.io', url: up.url }],
      local: { prefixes: ['site/'] },
      auth: { anonymous: true, rules: [{ prefix: 'docker.io/lab/private/', users: ['ci'] }] },
    });
    try {
      const d = digestOf(Buffer.from(randomUUID())) as Digest;
      await ruled.berth.index.addRefs('docker.io', 'lab/private/x', [d]);
      await ruled.berth.index.addRefs('docker.io', 'lab/public', [d]);
      const r = await send(ruled, 'GET', '/v2/_catalog');
      assert.equal(r.status, 200);
      assert.deepEqual(JSON.parse(r.body.toString()), { repositories: ['docker.io/lab/public'] });
    } finally {
      await ruled.stop();
    }
  });
});

/** A fresh small image's manifest with its blobs already in `repository`. */
async function tagged(b: InProcessBerth, repository: string): Promise<Buffer> {
  const img = await smallImage('oci', repository);
  await seedLocalBlobs(b, repository, [img.config, ...img.layers]);
  return img.manifest;
}
