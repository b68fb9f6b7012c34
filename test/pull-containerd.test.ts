// Pull-through core, driven by the clients of a Kubernetes node and a laptop: containerd (hosts.toml
// mirror with ?ns=, and the override_path prefix form) and dockerd (--registry-mirror). Issue #2.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { type InProcessBerth, servedGets, startBerth } from './support/berth.ts';
import { type Containerd, imageTargets, mirrorHostsToml, startContainerd } from './support/containerd.ts';
import { type Dockerd, startDockerd } from './support/dockerd.ts';
import { request } from './support/http.ts';
import { type Image, MediaTypes, type Seeded, seedStandard } from './support/images.ts';
import { waitUntil } from './support/links.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

/** The snapshot key containerd gives an unpacked image's top layer (image-spec "ChainID"). */
function chainId(image: Image): string {
  let chain = '';
  for (const layer of image.layers) {
    const diffId = layer.diffId!;
    chain = chain === '' ? diffId : `sha256:${createHash('sha256').update(`${chain} ${diffId}`).digest('hex')}`;
  }
  return chain;
}

async function snapshotKeys(c: Containerd): Promise<string[]> {
  const { stdout } = await c.ctr(['snapshots', 'ls']);
  return stdout
    .split('\n')
    .slice(1)
    .map((l) => l.trim().split(/\s+/)[0]!)
    .filter(Boolean);
}

describe('containerd and dockerd pulling through berth', () => {
  let up: Upstream;
  let seeded: Seeded;
  let seedDir: string;
  let b: InProcessBerth;
  let containerd: Containerd;
  let dockerd: Dockerd | undefined;
  let dockerdError: Error | undefined;

  before(async () => {
    seedDir = await makeTempDir('seed-containerd');
    up = await startUpstream();
    seeded = await seedStandard(up, seedDir);
    b = await startBerth({
      upstreams: [
        { host: 'docker.io', url: up.url },
        { host: 'quay.io', url: up.url },
      ],
    });
    containerd = await startContainerd();
    await containerd.writeHosts('docker.io', mirrorHostsToml(b.url));
    await containerd.writeHosts('quay.io', mirrorHostsToml(`${b.url}/v2/quay.io`, { overridePath: true }));
    // dockerd is started here once; if this machine cannot run it, the dockerd test fails with the reason.
    dockerd = await startDockerd({ mirror: b.url }).catch((err: Error) => {
      dockerdError = err;
      return undefined;
    });
  });

  after(async () => {
    await dockerd?.stop();
    await containerd?.stop();
    await b?.stop();
    await up?.stop();
    await removeTempDir(seedDir);
  });

  test('containerd pulls and unpacks docker.io/library/small:1 through a hosts.toml mirror', async () => {
    const mark = up.logLineCount();
    await containerd.pull('docker.io/library/small:1');
    const targets = await imageTargets(containerd);
    assert.equal(targets.get('docker.io/library/small:1'), seeded.small.manifestDigest);
    assert.ok((await snapshotKeys(containerd)).includes(chainId(seeded.small)), 'the unpacked top layer is not among the snapshots');
    // containerd asked berth with ?ns=docker.io; berth asked the upstream without it, under library/.
    const traffic = await up.waitForAccess((es) => es.some((e) => e.path === '/v2/library/small/manifests/1'), { since: mark });
    assert.ok(!traffic.some((e) => e.path.includes('ns=')), 'ns= was forwarded to the upstream');
  });

  test('containerd pulls quay.io/org/multi:1 through an override_path prefix mirror', async () => {
    const mark = up.logLineCount();
    await containerd.pull('quay.io/org/multi:1', { platform: 'linux/amd64' });
    const targets = await imageTargets(containerd);
    assert.equal(targets.get('quay.io/org/multi:1'), seeded.multi.digest);
    const amd64 = seeded.multi.images.find((i) => i.platform.architecture === 'amd64')!;
    assert.ok((await snapshotKeys(containerd)).includes(chainId(amd64)), 'the amd64 image was not unpacked');
    const traffic = await up.waitForAccess((es) => es.some((e) => e.path === '/v2/org/multi/manifests/1'), { since: mark });
    assert.ok(!traffic.some((e) => e.path.includes('quay.io')), 'the /v2/quay.io prefix leaked into the upstream path');
  });

  test('berth echoes the ns it was asked for in OCI-Namespace', async () => {
    const accept = [MediaTypes.oci.manifest, MediaTypes.oci.index].join(', ');
    const hub = await request(b.url, '/v2/library/small/manifests/1?ns=docker.io', { headers: { accept } });
    assert.equal(hub.status, 200);
    assert.equal(hub.headers['oci-namespace'], 'docker.io');
    assert.equal(hub.headers['docker-content-digest'], seeded.small.manifestDigest);
    const quay = await request(b.url, '/v2/quay.io/org/multi/manifests/1?ns=quay.io', { method: 'HEAD', headers: { accept } });
    assert.equal(quay.status, 200);
    assert.equal(quay.headers['oci-namespace'], 'quay.io');
    assert.equal(quay.headers['docker-content-digest'], seeded.multi.digest);
    const layer = seeded.small.layers[1]!;
    const blob = await request(b.url, `/v2/library/small/blobs/${layer.digest}?ns=docker.io`);
    assert.equal(blob.status, 200);
    assert.equal(blob.headers['oci-namespace'], 'docker.io');
    assert.ok(blob.body.equals(layer.bytes!));
  });

  test('dockerd with --registry-mirror pulls small:1 (docker.io/library/small:1) through berth', async () => {
    assert.ok(dockerd, `dockerd could not start on this machine: ${dockerdError?.message}`);
    const blobsBefore = await servedGets(b, 'blob');
    await dockerd.docker(['pull', 'small:1'], { timeoutMs: 120_000 });
    const { stdout } = await dockerd.docker(['image', 'inspect', '--format', '{{json .RepoDigests}} {{.Id}}', 'small:1']);
    const [repoDigests, id] = stdout.trim().split(' ');
    assert.deepEqual(JSON.parse(repoDigests!), [`small@${seeded.small.manifestDigest}`]);
    assert.equal(id, seeded.small.config.digest);
    // The layers and the config really came from berth (dockerd's fallback to Docker Hub is dead here anyway).
    const blobs = 1 + seeded.small.layers.length;
    await waitUntil(`berth to have served ${blobs} blobs to dockerd`, async () => (await servedGets(b, 'blob')) - blobsBefore >= blobs, 5_000);
  });
});
