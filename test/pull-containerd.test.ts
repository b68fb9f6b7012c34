// Pull-through core, driven by the clients of a Kubernetes node and a laptop: containerd (hosts.toml
// mirror with ?ns=, and the override_path prefix form) and dockerd (--registry-mirror). Issue #2.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import http from 'node:http';
import { after, before, describe, test } from 'node:test';
import { type Upstream, startUpstream } from './support/upstream.ts';
import { type Image, type Seeded, MediaTypes, seedStandard } from './support/images.ts';
import { type InProcessBerth, startBerth } from './support/berth.ts';
import { type Containerd, mirrorHostsToml, startContainerd } from './support/containerd.ts';
import { type Dockerd, startDockerd } from './support/dockerd.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';

interface RawResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

function request(base: string, pathAndQuery: string, o: { method?: string; headers?: http.OutgoingHttpHeaders } = {}): Promise<RawResponse> {
  const u = new URL(base);
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: u.hostname, port: u.port, path: pathAndQuery, method: o.method ?? 'GET', headers: o.headers, agent: false },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end();
  });
}

/** The snapshot key containerd gives an unpacked image's top layer (image-spec "ChainID"). */
function chainId(image: Image): string {
  let chain = '';
  for (const layer of image.layers) {
    const diffId = layer.diffId!;
    chain = chain === '' ? diffId : `sha256:${createHash('sha256').update(`${chain} ${diffId}`).digest('hex')}`;
  }
  return chain;
}

/** `ctr images ls` rows: reference -> target digest. */
async function imageTargets(c: Containerd): Promise<Map<string, string>> {
  const { stdout } = await c.ctr(['images', 'ls']);
  const rows = new Map<string, string>();
  for (const line of stdout.split('\n').slice(1)) {
    const cols = line.trim().split(/\s+/);
    if (cols.length >= 3) rows.set(cols[0]!, cols[2]!);
  }
  return rows;
}

async function snapshotKeys(c: Containerd): Promise<string[]> {
  const { stdout } = await c.ctr(['snapshots', 'ls']);
  return stdout.split('\n').slice(1).map((l) => l.trim().split(/\s+/)[0]!).filter(Boolean);
}

/** GETs of `route` ('blob', 'manifest') that berth answered with 200, from its own request counter. */
async function servedGets(b: InProcessBerth, route: string): Promise<number> {
  const metric = await b.berth.ctx.metrics.requests.get();
  return metric.values
    .filter((v) => v.labels.route === route && v.labels.method === 'GET' && v.labels.status === '200')
    .reduce((n, v) => n + v.value, 0);
}

async function waitFor(what: string, cond: () => Promise<boolean>, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
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
    b = await startBerth({ upstreams: [{ host: 'docker.io', url: up.url }, { host: 'quay.io', url: up.url }] });
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
    await waitFor(`berth to have served ${blobs} blobs to dockerd`, async () => (await servedGets(b, 'blob')) - blobsBefore >= blobs);
  });
});
