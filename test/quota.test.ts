// Isolated sites (issue #4), keeping the cache in shape: storage.maxSize evicts least-recently-used unpinned
// content and a later pull fetches it again; `berth ls`, `pin`, `unpin`, `rm` and `gc` do what an operator
// expects of them; `berth hosts` writes hosts.toml files that containerd really pulls through, and docker's
// mirror entry.
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, utimes, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { type InProcessBerth, startBerth, type UpstreamSpec } from './support/berth.ts';
import { blobBytesOnDisk, describeRun, lsJson, ociLayoutManifests, runBerth, storedDigests, unverifiedBlobFiles, writeCliConfig } from './support/berth-cli.ts';
import { type Containerd, imageTargets, startContainerd } from './support/containerd.ts';
import { blobsOf, buildImage, type Image, type LayerSpec, pushImage } from './support/images.ts';
import { upstreamTrafficSince, waitUntil } from './support/links.ts';
import { DEAD_ENDPOINT } from './support/safety.ts';
import { skopeoCopy } from './support/skopeo.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { type AccessEntry, startUpstream, type Upstream } from './support/upstream.ts';

const MiB = 1024 * 1024;
const LIMIT = 30 * MiB;
const LAYER = 8 * MiB;

const blobGetsOf = (entries: AccessEntry[], digest: string): AccessEntry[] => entries.filter((e) => e.method === 'GET' && e.path.split('?')[0]!.endsWith(`/blobs/${digest}`));

describe('a cache that stays within its size and the operator commands that look after it', () => {
  let up: Upstream;
  let seedDir: string;
  let work: string;
  let storage: string;
  let config: string;
  let upstreams: UpstreamSpec[];
  let b: InProcessBerth;
  let containerd: Containerd;
  /** q[1..5]: single 8 MiB layer images lab/qN:1. */
  const q: Image[] = [];
  /** lab/tiny:1 and lab/tiny:2 (one manifest, two tags). */
  let tiny: Image;
  /** org/app:1, pulled by containerd as quay.io/org/app:1. */
  let app: Image;
  /** lab/pair-a:1 and lab/pair-b:1: different images sharing their first layer. */
  let pairA: Image;
  let pairB: Image;
  /** lab/orphan:1, pulled only by digest (so no tag reaches it). */
  let orphan: Image;

  /** Pulls docker.io/<repo>:<tag> through berth with skopeo and returns the manifest digest it got. */
  async function pull(ref: string): Promise<string | undefined> {
    const dir = path.join(work, 'pulls', `${ref.replace(/[^a-z0-9]+/gi, '-').slice(0, 40)}-${randomUUID().slice(0, 8)}`);
    await mkdir(path.dirname(dir), { recursive: true });
    await skopeoCopy(`docker://${b.host}/${ref}`, `oci:${dir}`);
    return (await ociLayoutManifests(dir))[0]?.digest;
  }

  async function cli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string; what: string }> {
    const full = [...args, '--config', config];
    const r = await runBerth(full);
    return { ...r, what: describeRun(full, r) };
  }

  /**
   * Operator commands that write the storage refuse beside a running server (the storage lock, issue #8
   * item 15): run them with the server stopped, and start it again on the same storage afterwards.
   */
  async function withServerStopped<T>(body: () => Promise<T>): Promise<T> {
    await b.stop();
    try {
      return await body();
    } finally {
      b = await startBerth({ upstreams, storage, maxSize: `${LIMIT}` });
    }
  }

  async function underLimit(): Promise<number> {
    return waitUntil(
      `the blobs under storage to shrink to ${LIMIT} bytes`,
      async () => {
        const total = await blobBytesOnDisk(storage);
        return total <= LIMIT ? total : undefined;
      },
      30_000,
      100,
    );
  }

  before(async () => {
    seedDir = await makeTempDir('seed-quota');
    work = await makeTempDir('quota-work');
    storage = path.join(work, 'storage');
    const [u, c] = await Promise.all([startUpstream(), startContainerd()]);
    up = u;
    containerd = c;
    for (let i = 1; i <= 5; i++) q[i] = await buildImage({ format: 'oci', layers: [{ randomBytes: LAYER, dir: seedDir }] });
    const nonce = randomUUID();
    tiny = await buildImage({ format: 'oci', layers: [{ files: { 'tiny.txt': `tiny ${nonce}\n` } }] });
    const shared: LayerSpec = { files: { 'shared.txt': `shared ${nonce}\n`, 'shared.bin': randomBytes(64 * 1024) } };
    pairA = await buildImage({ format: 'oci', layers: [shared, { files: { 'a.txt': `a ${nonce}\n` } }] });
    pairB = await buildImage({ format: 'oci', layers: [shared, { files: { 'b.txt': `b ${nonce}\n` } }] });
    app = await buildImage({ format: 'oci', layers: [{ files: { 'app.txt': `app ${nonce}\n` } }] });
    orphan = await buildImage({ format: 'oci', layers: [{ files: { 'orphan.txt': `orphan ${nonce}\n` } }] });
    await Promise.all([
      ...q.slice(1).map((img, i) => pushImage(up, `lab/q${i + 1}`, '1', img)),
      pushImage(up, 'lab/tiny', '1', tiny).then(() => pushImage(up, 'lab/tiny', '2', tiny)),
      pushImage(up, 'org/app', '1', app),
      pushImage(up, 'lab/pair-a', '1', pairA),
      pushImage(up, 'lab/pair-b', '1', pairB),
      pushImage(up, 'lab/orphan', '1', orphan),
    ]);
    upstreams = [
      { host: 'docker.io', url: up.url },
      { host: 'quay.io', url: up.url },
    ];
    config = await writeCliConfig(path.join(work, 'berth.yaml'), { storage, upstreams, maxSize: `${LIMIT}` });
    b = await startBerth({ upstreams, storage, maxSize: `${LIMIT}` });
  });

  after(async () => {
    await containerd?.stop();
    await b?.stop();
    await up?.stop();
    await removeTempDir(seedDir);
    await removeTempDir(work);
  });

  test('past storage.maxSize the least recently used images go, a pinned one stays, and the total stays under the limit', async () => {
    assert.equal(await pull('lab/q1:1'), q[1]!.manifestDigest);
    const pin = await cli(['pin', 'docker.io/lab/q1:1']);
    assert.equal(pin.code, 0, pin.what);
    assert.match(pin.stdout, /pinned docker\.io\/lab\/q1:1/);
    for (let i = 2; i <= 5; i++) {
      assert.equal(await pull(`lab/q${i}:1`), q[i]!.manifestDigest);
      await underLimit();
    }
    const stored = await storedDigests(storage);
    for (const blob of blobsOf(q[1]!)) assert.ok(stored.has(blob.digest), `pinned lab/q1:1 lost ${blob.digest}`);
    assert.ok(stored.has(q[1]!.manifestDigest), 'pinned lab/q1:1 lost its manifest');
    assert.ok(!stored.has(q[2]!.layers[0]!.digest), 'the least recently used image (lab/q2:1) was not evicted');
    assert.ok(stored.has(q[5]!.layers[0]!.digest), 'the image pulled last was evicted');
    assert.ok((await blobBytesOnDisk(storage)) <= LIMIT);
    assert.deepEqual(await unverifiedBlobFiles(storage), []);
    const row = (await lsJson(config)).find((x) => x.reference === 'docker.io/lab/q1:1');
    assert.equal(row?.pinned, true);
  });

  test('pulling an evicted image fetches it from the upstream again, with the right digest', async () => {
    const layer = q[2]!.layers[0]!.digest;
    assert.ok(!(await storedDigests(storage)).has(layer), 'lab/q2:1 should have been evicted by the test before');
    const mark = up.logLineCount();
    assert.equal(await pull('lab/q2:1'), q[2]!.manifestDigest);
    const traffic = await upstreamTrafficSince(up, mark);
    assert.equal(blobGetsOf(traffic, layer).length, 1, 'the evicted layer was not fetched again (exactly once)');
    await underLimit();
    assert.ok((await storedDigests(storage)).has(q[1]!.layers[0]!.digest), 'the pinned image was evicted');
  });

  test('berth ls lists tags with size and pin; unpin releases the pin and says when there was none', async () => {
    const ls = await cli(['ls']);
    assert.equal(ls.code, 0, ls.what);
    const q1Line = ls.stdout.split('\n').find((l) => l.startsWith('docker.io/lab/q1:1\t'));
    assert.ok(q1Line, `ls does not list docker.io/lab/q1:1:\n${ls.stdout}`);
    assert.match(q1Line, /\t8\.0 MiB\t/, `ls does not show q1's size: ${q1Line}`);
    assert.match(q1Line, /\tpinned$/);
    assert.match(ls.stdout, /^\d+ tags, \d+ blobs, /m);
    const rows = await lsJson(config);
    const q2 = rows.find((x) => x.reference === 'docker.io/lab/q2:1');
    assert.equal(q2?.digest, q[2]!.manifestDigest);
    assert.equal(q2?.pinned, false);

    const [unpin, again] = await withServerStopped(async () => [await cli(['unpin', 'docker.io/lab/q1:1']), await cli(['unpin', 'lab/q1:1'])]);
    assert.equal(unpin.code, 0, unpin.what);
    assert.match(unpin.stdout, /unpinned docker\.io\/lab\/q1:1/);
    assert.equal((await lsJson(config)).find((x) => x.reference === 'docker.io/lab/q1:1')?.pinned, false);
    assert.equal(again.code, 1, again.what);
    assert.match(again.stdout, /docker\.io\/lab\/q1:1 was not pinned/);
  });

  test('berth rm removes an image and the content only it used; other images keep theirs', async () => {
    assert.equal(await pull('lab/tiny:1'), tiny.manifestDigest);
    assert.equal(await pull('lab/tiny:2'), tiny.manifestDigest);
    assert.equal(await pull('lab/pair-a:1'), pairA.manifestDigest);
    assert.equal(await pull('lab/pair-b:1'), pairB.manifestDigest);

    // Different images sharing a layer: the shared layer stays with pair-b, a's own content goes.
    const rmA = await withServerStopped(() => cli(['rm', 'docker.io/lab/pair-a:1']));
    assert.equal(rmA.code, 0, rmA.what);
    assert.match(rmA.stdout, /removed docker\.io\/lab\/pair-a:1: 3 blobs/, rmA.what);
    let stored = await storedDigests(storage);
    assert.ok(!stored.has(pairA.manifestDigest) && !stored.has(pairA.config.digest) && !stored.has(pairA.layers[1]!.digest), 'pair-a content is still there');
    for (const blob of blobsOf(pairB)) assert.ok(stored.has(blob.digest), `rm of pair-a removed ${blob.digest}, which pair-b uses`);

    // The same manifest under two tags: removing one tag leaves the other whole.
    const rmTag = await withServerStopped(() => cli(['rm', 'docker.io/lab/tiny:1']));
    assert.equal(rmTag.code, 0, rmTag.what);
    stored = await storedDigests(storage);
    for (const d of [tiny.manifestDigest, ...blobsOf(tiny).map((x) => x.digest)]) {
      assert.ok(stored.has(d), `rm docker.io/lab/tiny:1 removed ${d}, which docker.io/lab/tiny:2 still uses`);
    }
    const rows = await lsJson(config);
    assert.ok(!rows.some((x) => x.reference === 'docker.io/lab/tiny:1' || x.reference === 'docker.io/lab/pair-a:1'), 'a removed tag is still listed');
    assert.equal(rows.find((x) => x.reference === 'docker.io/lab/tiny:2')?.complete, true, 'docker.io/lab/tiny:2 is no longer complete');
    assert.equal(rows.find((x) => x.reference === 'docker.io/lab/pair-b:1')?.complete, true, 'docker.io/lab/pair-b:1 is no longer complete');

    const missing = await withServerStopped(() => cli(['rm', 'docker.io/lab/never-pulled:1']));
    assert.notEqual(missing.code, 0, missing.what);
    assert.match(missing.stderr + missing.stdout, /not cached/);
  });

  test('berth gc removes old partial downloads and blobs no tag or pin reaches, and nothing else', async () => {
    // An abandoned download from two hours ago, and one that a running fill may still own.
    const ingest = path.join(storage, 'ingest');
    await mkdir(ingest, { recursive: true });
    const oldHex = randomBytes(32).toString('hex');
    const freshHex = randomBytes(32).toString('hex');
    const oldData = path.join(ingest, `${oldHex}.data`);
    const oldMeta = path.join(ingest, `${oldHex}.json`);
    const freshData = path.join(ingest, `${freshHex}.data`);
    await writeFile(oldData, randomBytes(256 * 1024));
    await writeFile(oldMeta, JSON.stringify({ size: 1 << 20, extents: [[0, 262143]] }));
    await writeFile(freshData, randomBytes(1024));
    const twoHoursAgo = new Date(Date.now() - 2 * 3600_000);
    await utimes(oldData, twoHoursAgo, twoHoursAgo);
    await utimes(oldMeta, twoHoursAgo, twoHoursAgo);

    // Pulled by digest only: cached, but no tag or pin reaches it.
    assert.equal(await pull(`lab/orphan@${orphan.manifestDigest}`), orphan.manifestDigest);
    const orphanDigests = [orphan.manifestDigest, ...blobsOf(orphan).map((x) => x.digest)];
    const before = await storedDigests(storage);
    for (const d of orphanDigests) assert.ok(before.has(d), `${d} was not cached by the pull`);

    const dry = await cli(['gc', '--dry-run']);
    assert.equal(dry.code, 0, dry.what);
    assert.match(dry.stdout, /would remove 2 partial downloads, [1-9]\d* unreferenced blobs/, dry.what);
    assert.ok(existsSync(oldData), '--dry-run removed a file');
    assert.deepEqual(await storedDigests(storage), before, '--dry-run removed blobs');

    const gc = await withServerStopped(() => cli(['gc']));
    assert.equal(gc.code, 0, gc.what);
    assert.match(gc.stdout, /removed 2 partial downloads/, gc.what);
    assert.ok(!existsSync(oldData) && !existsSync(oldMeta), 'the old partial download is still there');
    assert.ok(existsSync(freshData), 'gc removed a partial download younger than --min-age');
    const after = await storedDigests(storage);
    for (const d of orphanDigests) assert.ok(!after.has(d), `unreferenced ${d} survived gc`);
    // What tags reach is still there.
    for (const d of [pairB.manifestDigest, ...blobsOf(pairB).map((x) => x.digest), q[5]!.manifestDigest, ...blobsOf(q[5]!).map((x) => x.digest)]) {
      assert.ok(after.has(d), `gc removed ${d}, which a tag reaches`);
    }
    assert.equal((await lsJson(config)).find((x) => x.reference === 'docker.io/lab/pair-b:1')?.complete, true, 'gc broke docker.io/lab/pair-b:1');
    assert.deepEqual(await unverifiedBlobFiles(storage), []);
  });

  test('berth hosts writes hosts.toml files containerd pulls through, and the daemon.json mirror entry', async () => {
    const out = path.join(work, 'certs.d');
    const daemonFile = path.join(work, 'daemon.json');
    const r = await cli(['hosts', '--url', b.url, '--out', out, '--docker', daemonFile]);
    assert.equal(r.code, 0, r.what);
    const hub = await readFile(path.join(out, 'docker.io', 'hosts.toml'), 'utf8');
    const quay = await readFile(path.join(out, 'quay.io', 'hosts.toml'), 'utf8');
    // The fallback is the upstream berth is configured with, for docker.io as for any other (issue #8 item 17).
    assert.match(hub, new RegExp(`^server = "${up.url}"$`, 'm'), hub);
    assert.match(quay, new RegExp(`^server = "${up.url}"$`, 'm'), quay);
    for (const toml of [hub, quay]) {
      assert.ok(toml.includes(`[host."${b.url}"]`), toml);
      assert.match(toml, /capabilities = \["pull", "resolve"\]/);
    }
    assert.ok(!existsSync(path.join(out, 'daemon.json')), "docker's daemon.json does not belong in containerd's certs.d");
    const daemon = JSON.parse(await readFile(daemonFile, 'utf8')) as Record<string, unknown>;
    assert.deepEqual(daemon['registry-mirrors'], [b.url]);
    assert.deepEqual(daemon['insecure-registries'], [b.host]);

    // On this machine the fallback must not be the real Docker Hub: only `server` changes.
    await containerd.writeHosts('docker.io', hub.replace(/^server = .*$/m, `server = "http://${DEAD_ENDPOINT}"`));
    const isolated = path.join(work, 'certs.d-isolated');
    const nf = await cli(['hosts', '--url', b.url, '--no-fallback', '--out', isolated]);
    assert.equal(nf.code, 0, nf.what);
    const quayIsolated = await readFile(path.join(isolated, 'quay.io', 'hosts.toml'), 'utf8');
    assert.match(quayIsolated, new RegExp(`^server = "${b.url}"$`, 'm'), quayIsolated);
    await containerd.writeHosts('quay.io', quayIsolated);

    const requestsBefore = await servedRequests(b);
    await containerd.pull('docker.io/lab/tiny:2');
    await containerd.pull('quay.io/org/app:1');
    const targets = await imageTargets(containerd);
    assert.equal(targets.get('docker.io/lab/tiny:2'), tiny.manifestDigest);
    assert.equal(targets.get('quay.io/org/app:1'), app.manifestDigest);
    // Each pull: the manifest and every blob came from berth (the only other place is a dead port).
    const wanted = 2 * (1 + blobsOf(tiny).length);
    await waitUntil('berth to have answered both pulls', async () => (await servedRequests(b)) - requestsBefore >= wanted, 10_000);
  });
});

/** Requests berth answered with 200 (manifests and blobs). */
async function servedRequests(b: InProcessBerth): Promise<number> {
  const metric = await b.berth.metrics.requests.get();
  return metric.values.filter((v) => (v.labels.route === 'manifest' || v.labels.route === 'blob') && v.labels.status === '200').reduce((n, v) => n + v.value, 0);
}
