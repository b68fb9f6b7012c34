// Isolated sites (issue #4), serving side: a berth that has pulled images keeps serving them when the
// upstream goes away — online with stale-if-error (a `Warning` header, counted in /metrics), and with
// `offline: true` without ever opening a connection, answering a fast 404 for what it does not have.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { type InProcessBerth, servedGets, startBerth, type UpstreamSpec } from './support/berth.ts';
import { ociLayoutManifests } from './support/berth-cli.ts';
import { type Containerd, imageTargets, mirrorHostsToml, startContainerd } from './support/containerd.ts';
import { ACCEPT_ALL_MANIFESTS, type Seeded, seedStandard } from './support/images.ts';
import { httpRequest, metricValue, sha256, waitUntil } from './support/links.ts';
import { type CountingListener, startCountingListener } from './support/relay.ts';
import { skopeoCopy } from './support/skopeo.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

/** Removes every image from containerd and waits for its garbage collection: the next pull fetches everything again. */
async function forgetAllImages(c: Containerd): Promise<void> {
  const { stdout } = await c.ctr(['images', 'ls', '--quiet']);
  const refs = stdout.split('\n').filter(Boolean);
  if (refs.length > 0) await c.ctr(['images', 'rm', '--sync', ...refs]);
  const content = await c.ctr(['content', 'ls', '--quiet']);
  assert.equal(content.stdout.trim(), '', 'containerd still holds content after removing its images');
}

const hostArch = process.arch === 'arm64' ? 'arm64' : 'amd64';

describe('an isolated site keeps pulling what berth has cached', () => {
  let up: Upstream;
  let seeded: Seeded;
  let seedDir: string;
  let work: string;
  let storage: string;
  let upstreams: UpstreamSpec[];
  let online: InProcessBerth | undefined;
  let offline: InProcessBerth | undefined;
  let containerd: Containerd;
  let listener: CountingListener | undefined;
  let listenerBaseline = 0;

  before(async () => {
    seedDir = await makeTempDir('seed-offline');
    work = await makeTempDir('offline-work');
    storage = path.join(work, 'storage');
    up = await startUpstream();
    seeded = await seedStandard(up, seedDir);
    upstreams = [
      { host: 'docker.io', url: up.url },
      { host: 'quay.io', url: up.url },
    ];
    // tagTtl 1s: the stale-if-error test needs the cached tags to be due for revalidation soon.
    [online, containerd] = await Promise.all([startBerth({ upstreams, storage, tagTtl: '1s' }), startContainerd()]);
    await containerd.writeHosts('docker.io', mirrorHostsToml(online.url));
    await containerd.writeHosts('quay.io', mirrorHostsToml(online.url));
    // The connected day: skopeo and containerd pull through berth.
    await skopeoCopy(`docker://${online.host}/lab/small:1`, `oci:${path.join(work, 'online-small')}`);
    await containerd.pull('docker.io/lab/small:1');
    await containerd.pull('quay.io/org/multi:1');
  });

  after(async () => {
    await containerd?.stop();
    await online?.stop();
    await offline?.stop();
    await listener?.close();
    await up?.stop();
    await removeTempDir(seedDir);
    await removeTempDir(work);
  });

  test('with the upstream down, an online berth still serves a cached tag, with a Warning header, and counts it', async () => {
    assert.ok(online);
    const staleBefore = await metricValue(online.url, 'berth_stale_served_total');
    await up.halt();
    // Within tagTtl the tag is served from cache without asking; after it, the revalidating HEAD fails.
    const res = await waitUntil(
      'a stale-if-error answer with a Warning header',
      async () => {
        const r = await httpRequest(online!.url, '/v2/lab/small/manifests/1', { headers: { accept: ACCEPT_ALL_MANIFESTS } });
        return r.status !== 200 || r.headers.warning !== undefined ? r : undefined;
      },
      20_000,
      100,
    );
    assert.equal(res.status, 200, `expected the cached manifest, got ${res.status} ${res.body.toString('utf8')}`);
    assert.match(String(res.headers.warning), /^110 /, 'the Warning header is not a 110 "Response is stale"');
    assert.equal(res.headers['docker-content-digest'], seeded.small.manifestDigest);
    assert.equal(sha256(res.body), seeded.small.manifestDigest);
    assert.ok((await metricValue(online.url, 'berth_stale_served_total')) > staleBefore, 'berth_stale_served_total did not increase');

    // A real client gets the whole image meanwhile.
    const dir = path.join(work, 'stale-small');
    await skopeoCopy(`docker://${online.host}/lab/small:1`, `oci:${dir}`);
    assert.equal((await ociLayoutManifests(dir))[0]?.digest, seeded.small.manifestDigest);
  });

  describe('restarted with offline: true on the same storage', () => {
    let blobsBefore = 0;

    before(async () => {
      await online?.stop();
      online = undefined;
      await up.halt(); // (already down if the test above ran)
      // Anything that still tried the upstream would now connect here and be counted.
      listener = await startCountingListener(up.port);
      // Proof that the listener really is where berth would connect.
      await new Promise<void>((resolve, reject) => {
        const s = net.connect(up.port, '127.0.0.1', () => resolve());
        s.on('error', reject);
        s.on('close', () => s.destroy());
      });
      await waitUntil('the counting listener to see the probe', () => listener!.connections === 1, 5_000);
      listenerBaseline = listener.connections;
      offline = await startBerth({ upstreams, storage, offline: true });
      await containerd.writeHosts('docker.io', mirrorHostsToml(offline.url));
      await containerd.writeHosts('quay.io', mirrorHostsToml(offline.url));
      await forgetAllImages(containerd);
      blobsBefore = await servedGets(offline, 'blob');
    });

    test('skopeo pulls by tag, by digest and by host prefix, with digests as pushed', async () => {
      assert.ok(offline);
      const byTag = path.join(work, 'off-tag');
      await skopeoCopy(`docker://${offline.host}/lab/small:1`, `oci:${byTag}`);
      assert.equal((await ociLayoutManifests(byTag))[0]?.digest, seeded.small.manifestDigest);

      const byDigest = path.join(work, 'off-digest');
      await skopeoCopy(`docker://${offline.host}/lab/small@${seeded.small.manifestDigest}`, `oci:${byDigest}`);
      assert.equal((await ociLayoutManifests(byDigest))[0]?.digest, seeded.small.manifestDigest);

      // containerd cached only this machine's platform of the index; skopeo picks the same one.
      const prefixed = path.join(work, 'off-quay');
      await skopeoCopy(`docker://${offline.host}/quay.io/org/multi:1`, `oci:${prefixed}`);
      const mine = seeded.multi.images.find((i) => i.platform.architecture === hostArch)!;
      assert.equal((await ociLayoutManifests(prefixed))[0]?.digest, mine.manifestDigest);
      assert.equal(listener!.connections, listenerBaseline, 'offline berth opened a connection to the upstream');
    });

    test('containerd pulls by tag and by digest through hosts.toml, with digests as pushed', async () => {
      assert.ok(offline);
      await containerd.pull('docker.io/lab/small:1');
      await containerd.pull(`docker.io/lab/small@${seeded.small.manifestDigest}`);
      await containerd.pull('quay.io/org/multi:1');
      const targets = await imageTargets(containerd);
      assert.equal(targets.get('docker.io/lab/small:1'), seeded.small.manifestDigest);
      assert.equal(targets.get(`docker.io/lab/small@${seeded.small.manifestDigest}`), seeded.small.manifestDigest);
      assert.equal(targets.get('quay.io/org/multi:1'), seeded.multi.digest);
      // containerd started empty: the layers really came from the offline berth.
      const layers = seeded.small.layers.length + 1; // + config
      assert.ok((await servedGets(offline, 'blob')) - blobsBefore >= layers, 'berth did not serve the blobs containerd pulled');
      assert.equal(listener!.connections, listenerBaseline, 'offline berth opened a connection to the upstream');
    });

    test('what is not cached is a fast 404 saying berth is offline, and still no connection', async () => {
      assert.ok(offline);
      const unknownDigest = `sha256:${randomBytes(32).toString('hex')}`;
      const cases: Array<{ path: string; method?: string; code: string }> = [
        { path: '/v2/lab/small/manifests/not-pulled', code: 'MANIFEST_UNKNOWN' },
        { path: '/v2/lab/never-seen/manifests/1?ns=docker.io', code: 'MANIFEST_UNKNOWN' },
        { path: `/v2/lab/small/manifests/${unknownDigest}`, code: 'MANIFEST_UNKNOWN' },
        { path: `/v2/quay.io/org/multi/blobs/${unknownDigest}`, code: 'BLOB_UNKNOWN' },
        { path: `/v2/lab/small/blobs/${unknownDigest}?ns=docker.io`, code: 'BLOB_UNKNOWN' },
      ];
      for (const c of cases) {
        const r = await httpRequest(offline.url, c.path, { headers: { accept: ACCEPT_ALL_MANIFESTS }, timeoutMs: 30_000 });
        const text = r.body.toString('utf8');
        assert.equal(r.status, 404, `${c.path}: ${r.status} ${text}`);
        const err = (JSON.parse(text) as { errors: Array<{ code: string; message: string }> }).errors[0];
        assert.equal(err?.code, c.code, `${c.path}: ${text}`);
        assert.match(err?.message ?? '', /offline/, `${c.path}: the message does not say berth is offline: ${text}`);
        // Offline answers come from the local index: well under the seconds a connect timeout would take.
        assert.ok(r.totalMs < 5_000, `${c.path} took ${Math.round(r.totalMs)} ms`);
      }
      const head = await httpRequest(offline.url, `/v2/lab/small/blobs/${unknownDigest}`, { method: 'HEAD' });
      assert.equal(head.status, 404);
      // The platform containerd never pulled is not there either: a pull of it fails instead of hanging.
      const other = seeded.multi.images.find((i) => i.platform.architecture !== hostArch)!;
      const miss = await httpRequest(offline.url, `/v2/org/multi/manifests/${other.manifestDigest}?ns=quay.io`, { headers: { accept: ACCEPT_ALL_MANIFESTS } });
      assert.equal(miss.status, 404);
      assert.equal(listener!.connections, listenerBaseline, 'offline berth opened a connection to the upstream');
    });
  });
});
