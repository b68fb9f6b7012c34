// Local content is the site's own (issue #10): storage.maxSize evicts cached blobs and never a local one;
// `berth gc` keeps what local tags and local manifests reach and removes a deleted manifest's blobs; an
// offline berth serves local images; `berth ls` shows them apart; `berth export` and `berth import` carry
// a local image to another berth, where it is local again.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { stringify } from 'yaml';
import { LOCAL_MARK, REF_NAME } from '../src/bundle/layout.ts';
import type { Digest } from '../src/oci/digest.ts';
import { LOCAL_UPSTREAM } from '../src/registry/local-names.ts';
import { collectGarbage } from '../src/store/gc.ts';
import { StoragePaths } from '../src/store/paths.ts';
import { rebuildIndex } from '../src/store/rebuild.ts';
import { type InProcessBerth, startBerth, type UpstreamSpec } from './support/berth.ts';
import { describeRun, lsJson, readTarEntry, runBerth, tarFileEntries } from './support/berth-cli.ts';
import { blobBytes, buildImage, buildIndex, digestOf, type Image, MediaTypes, pushImage } from './support/images.ts';
import { upstreamTrafficSince, waitUntil } from './support/links.ts';
import { pushLocalImage, pushLocalIndex, putManifest, seedLocalBlobs, send } from './support/local-push.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const LAYER = 600_000;
const local = { prefixes: ['site/'], allowAnonymousPush: true };

describe('local content is the site’s own: quota, gc, offline, ls, export and import', () => {
  let up: Upstream;
  let work: string;
  let storage: string;
  let upstreams: UpstreamSpec[];
  let berth: InProcessBerth | undefined;
  let cachedBig: Image;
  let localBig: Image;
  let keep: Image;

  before(async () => {
    up = await startUpstream();
    work = await makeTempDir('local-content');
    storage = path.join(work, 'storage');
    cachedBig = await buildImage({ format: 'oci', layers: [{ randomBytes: LAYER, dir: work }] });
    localBig = await buildImage({ format: 'oci', layers: [{ randomBytes: LAYER, dir: work }] });
    keep = await buildImage({ format: 'oci', layers: [{ files: { 'etc/keep': randomUUID() } }] });
    await pushImage(up, 'lab/big', '1', cachedBig);
    upstreams = [{ host: 'docker.io', url: up.url }];
    berth = await startBerth({ upstreams, storage, maxSize: '1MiB', local, delete: { enabled: true } });
  });

  after(async () => {
    await berth?.stop();
    await up?.stop();
    await removeTempDir(work);
  });

  test('over storage.maxSize the cached layer is evicted and the older local one is not', async () => {
    assert.ok(berth);
    // The local layer is the least recently used: without the local exemption it would go first.
    assert.equal((await pushLocalImage(berth, 'site/big', '1', localBig)).status, 201);
    await new Promise((r) => setTimeout(r, 20));
    assert.equal((await send(berth, 'GET', '/v2/lab/big/manifests/1', { headers: { accept: MediaTypes.oci.manifest } })).status, 200);
    assert.equal((await send(berth, 'GET', `/v2/lab/big/blobs/${cachedBig.layers[0]!.digest}`)).status, 200);
    assert.equal((await send(berth, 'GET', `/v2/lab/big/blobs/${cachedBig.config.digest}`)).status, 200);
    const { store } = berth.berth;
    await waitUntil('the cached layer to be evicted', async () => (await store.stat(cachedBig.layers[0]!.digest as Digest)) === undefined, 10_000);
    assert.ok(await store.stat(localBig.layers[0]!.digest as Digest), 'the local layer was evicted');
    const pulled = await send(berth, 'GET', `/v2/site/big/blobs/${localBig.layers[0]!.digest}`);
    assert.equal(pulled.status, 200);
    assert.ok(pulled.body.equals(await blobBytes(localBig.layers[0]!)));
    const m = await send(berth, 'GET', '/v2/site/big/manifests/1');
    assert.ok(m.body.equals(localBig.manifest));
  });

  test('gc keeps tagged and untagged local manifests and their blobs; a deleted manifest goes, its blobs once older than --min-age', async () => {
    assert.ok(berth);
    const b = berth.berth;
    assert.equal((await pushLocalImage(berth, 'site/keep', '1', keep)).status, 201);
    const untagged = await buildImage({ format: 'oci', layers: [{ files: { 'etc/untagged': randomUUID() } }] });
    assert.equal((await pushLocalImage(berth, 'site/keep', untagged.manifestDigest, untagged)).status, 201);
    const gone = await buildImage({ format: 'oci', layers: [{ files: { 'etc/gone': randomUUID() } }] });
    assert.equal((await pushLocalImage(berth, 'site/gone', '1', gone)).status, 201);
    assert.equal((await send(berth, 'DELETE', `/v2/site/gone/manifests/${gone.manifestDigest}`)).status, 202);
    const strayBytes = Buffer.from(`pushed, never named ${randomUUID()}`);
    const stray = { digest: digestOf(strayBytes), size: strayBytes.length, mediaType: 'application/octet-stream', bytes: strayBytes };
    await seedLocalBlobs(berth, 'site/keep', [stray]);
    const gc = (minAgeMs: number) => collectGarbage({ index: b.index, pins: b.pins, store: b.store, staging: [] }, { dryRun: false, minAgeMs });
    const has = async (d: string) => (await b.store.stat(d as Digest)) !== undefined;

    const first = await gc(3_600_000);
    const removed1 = new Set(first.blobs.map((x) => x.digest));
    assert.ok(removed1.has(gone.manifestDigest as Digest), 'the deleted manifest was not removed');
    assert.ok(await has(gone.layers[0]!.digest), 'a young local blob (a push in progress) was removed');
    assert.ok(await has(stray.digest));

    const second = await gc(0);
    const removed2 = new Set(second.blobs.map((x) => x.digest));
    for (const d of [gone.layers[0]!.digest, gone.config.digest, stray.digest]) {
      assert.ok(removed2.has(d as Digest), `${d} was kept`);
      assert.equal(await has(d), false);
      assert.ok(!(await b.index.refsOf(d as Digest)).some((r) => r.upstream === LOCAL_UPSTREAM), 'the repository still claims a removed blob');
    }
    for (const img of [keep, untagged, localBig]) {
      for (const d of [img.manifestDigest, img.config.digest, ...img.layers.map((l) => l.digest)]) assert.ok(await has(d), `${d} of a local image was removed`);
    }
    assert.ok((await send(berth, 'GET', '/v2/site/keep/manifests/1')).body.equals(keep.manifest));
    assert.equal((await send(berth, 'GET', `/v2/site/keep/manifests/${untagged.manifestDigest}`)).status, 200);
  });

  test('offline, local images are served and unknown ones are a 404, without a word to the upstream', async () => {
    await berth?.stop();
    berth = undefined;
    const mark = up.logLineCount();
    const offline = await startBerth({ upstreams, storage, offline: true, local });
    try {
      const got = await send(offline, 'GET', '/v2/site/keep/manifests/1');
      assert.equal(got.status, 200);
      assert.ok(got.body.equals(keep.manifest));
      assert.equal(got.headers['content-type'], keep.mediaType);
      const none = await send(offline, 'GET', '/v2/site/keep/manifests/2');
      assert.equal(none.status, 404);
      assert.equal(none.code, 'MANIFEST_UNKNOWN');
      assert.deepEqual(JSON.parse((await send(offline, 'GET', '/v2/site/keep/tags/list')).body.toString()), { name: 'site/keep', tags: ['1'] });
    } finally {
      await offline.stop();
    }
    assert.deepEqual(await upstreamTrafficSince(up, mark), []);
  });

  test('berth ls shows local images apart; export and import carry one to another berth, local there too', async () => {
    const config = path.join(work, 'berth.yaml');
    const cfg = (storagePath: string, prefixes: string[]) => stringify({ storage: { path: storagePath }, upstreams, local: { prefixes }, log: { level: 'warn' } });
    await writeFile(config, cfg(storage, local.prefixes));
    const rows = await lsJson(config);
    const row = rows.find((r) => r.reference === 'site/keep:1') as (typeof rows)[number] & { local?: boolean };
    assert.ok(row, `ls --json does not list site/keep:1: ${JSON.stringify(rows.map((r) => r.reference))}`);
    assert.equal(row.local, true);
    assert.equal((rows.find((r) => r.reference === 'docker.io/lab/big:1') as { local?: boolean } | undefined)?.local, false);
    const ls = await runBerth(['ls', '--config', config]);
    assert.equal(ls.code, 0, describeRun(['ls'], ls));
    const lines = ls.stdout.split('\n');
    const localAt = lines.indexOf('local repositories (never evicted):');
    const cachedAt = lines.indexOf('cached:');
    assert.ok(localAt >= 0 && cachedAt > localAt, ls.stdout);
    assert.ok(
      lines.slice(localAt, cachedAt).some((l) => l.startsWith('site/keep:1\t')),
      ls.stdout,
    );
    assert.ok(
      lines.slice(cachedAt).some((l) => l.startsWith('docker.io/lab/big:1\t')),
      ls.stdout,
    );

    const bundle = path.join(work, 'local.tar');
    const exp = ['export', 'site/keep:1', '-o', bundle, '--config', config];
    const e = await runBerth(exp);
    assert.equal(e.code, 0, describeRun(exp, e));
    const entries = await tarFileEntries(bundle);
    const indexJson = JSON.parse((await readTarEntry(bundle, entries.find((x) => x.name === 'index.json')!)).toString()) as {
      manifests: Array<{ digest: string; annotations: Record<string, string> }>;
    };
    assert.equal(indexJson.manifests[0]!.digest, keep.manifestDigest);
    assert.equal(indexJson.manifests[0]!.annotations[REF_NAME], 'site/keep:1');
    assert.equal(indexJson.manifests[0]!.annotations[LOCAL_MARK], 'true');

    const other = path.join(work, 'other');
    const otherConfig = path.join(work, 'other.yaml');
    await writeFile(otherConfig, cfg(other, local.prefixes));
    const imp = ['import', bundle, '--config', otherConfig];
    const i = await runBerth(imp);
    assert.equal(i.code, 0, describeRun(imp, i));
    assert.match(i.stdout, /imported site\/keep:1 /);
    const there = await startBerth({ upstreams, storage: other, offline: true, local });
    try {
      const got = await send(there, 'GET', '/v2/site/keep/manifests/1');
      assert.equal(got.status, 200);
      assert.ok(got.body.equals(keep.manifest));
      assert.ok(await there.berth.index.getTag(LOCAL_UPSTREAM, 'site/keep', '1'), 'not a local tag');
      assert.equal(await there.berth.index.getTag('docker.io', 'site/keep', '1'), undefined, 'imported as a Docker Hub image');
      const layer = await send(there, 'GET', `/v2/site/keep/blobs/${keep.layers[0]!.digest}`);
      assert.ok(layer.body.equals(await blobBytes(keep.layers[0]!)));
      // And the imported image can be built on: a new tag of it is accepted (its blobs are in the repository).
      assert.equal((await putManifest(there, 'site/keep', 'again', keep.manifest, keep.mediaType)).status, 201);
    } finally {
      await there.stop();
    }
    // Imported images are pinned under their own name; a local one is unpinned by it, and `berth rm` leaves it to the registry API.
    const unpin = await runBerth(['unpin', 'site/keep:1', '--config', otherConfig]);
    assert.equal(unpin.code, 0, describeRun(['unpin'], unpin));
    assert.match(unpin.stdout, /^unpinned site\/keep:1$/m);
    const rm = await runBerth(['rm', 'site/keep:1', '--config', otherConfig]);
    assert.equal(rm.code, 1, describeRun(['rm'], rm));
    assert.match(rm.stderr, /is a local image: delete it with DELETE/);

    // A berth whose local.prefixes lack the name still imports it as local, and says it will not serve it.
    const third = path.join(work, 'third');
    const thirdConfig = path.join(work, 'third.yaml');
    await writeFile(thirdConfig, cfg(third, ['ci/']));
    const t = await runBerth(['import', bundle, '--config', thirdConfig]);
    assert.equal(t.code, 0, describeRun(['import'], t));
    assert.match(t.stdout, /site\/keep:1: imported as a local image, but site\/keep is not under this berth's local\.prefixes/);
  });

  test('a rebuilt index keeps a deleted local tag deleted (the tag journal has its tombstone) and a local index’s layers local', async () => {
    const multi = buildIndex({ format: 'oci', images: [await buildImage({ format: 'oci', layers: [{ files: { 'etc/m': randomUUID() } }] })] });
    const b = await startBerth({ upstreams, storage, local, delete: { enabled: true } });
    try {
      assert.equal((await putManifest(b, 'site/keep', 'old', keep.manifest, keep.mediaType)).status, 201);
      assert.equal((await send(b, 'DELETE', '/v2/site/keep/manifests/old')).status, 202);
      assert.equal((await pushLocalIndex(b, 'site/multi', '1', multi)).status, 201);
    } finally {
      await b.stop();
    }
    const report = await rebuildIndex(new StoragePaths(storage), { verify: false });
    assert.ok(report.tags > 0);
    const after = await startBerth({ upstreams, storage, offline: true, local });
    try {
      assert.equal((await send(after, 'GET', '/v2/site/keep/manifests/old')).status, 404, 'the deleted tag came back');
      assert.ok((await send(after, 'GET', '/v2/site/keep/manifests/1')).body.equals(keep.manifest));
      // An index's grandchildren (its images' layers) are the repository's again, so never evicted.
      const layer = multi.images[0]!.layers[0]!.digest as Digest;
      assert.ok(
        (await after.berth.index.refsOf(layer)).some((r) => r.upstream === LOCAL_UPSTREAM && r.repository === 'site/multi'),
        'a local index’s layer lost its repository',
      );
      assert.ok(!(await after.berth.index.evictable(10_000)).some((e) => e.digest === layer));
    } finally {
      await after.stop();
    }
  });
});
