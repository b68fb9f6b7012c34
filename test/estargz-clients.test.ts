// eStargz on demand (issue #11) with real clients: skopeo copies the -esgz image out of berth (checking
// every digest on the way), and containerd with the plain overlayfs snapshotter pulls it and runs it: a
// converted image must still work for nodes without stargz-snapshotter.
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import zlib from 'node:zlib';
import { type InProcessBerth, startBerth } from './support/berth.ts';
import { type Containerd, imageTargets, mirrorHostsToml, startContainerd } from './support/containerd.ts';
import { ACCEPT_ALL_MANIFESTS, imagesAreRunnable, type Seeded, seedStandard } from './support/images.ts';
import { httpRequest, sha256 } from './support/links.ts';
import { skopeoCopy } from './support/skopeo.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const TOC = 'containerd.io/snapshot/stargz/toc.digest';

describe('real clients pull the -esgz image', () => {
  let up: Upstream;
  let seeded: Seeded;
  let work: string;
  let berth: InProcessBerth;
  let containerd: Containerd;

  before(async () => {
    work = await makeTempDir('esgz-clients');
    up = await startUpstream();
    seeded = await seedStandard(up, work);
    [berth, containerd] = await Promise.all([startBerth({ upstreams: [{ host: 'docker.io', url: up.url }] }), startContainerd()]);
    await containerd.writeHosts('docker.io', mirrorHostsToml(berth.url));
  });

  after(async () => {
    await containerd?.stop();
    await berth?.stop();
    await up?.stop();
    await removeTempDir(work);
  });

  test('skopeo copy of lab/small:1-esgz to a dir: every blob hashes to its digest, the layers are the annotated ones', async () => {
    const dir = path.join(work, 'skopeo-esgz');
    await skopeoCopy(`docker://${berth.host}/lab/small:1-esgz`, `dir:${dir}`);
    const served = await httpRequest(berth.url, '/v2/lab/small/manifests/1-esgz', { headers: { accept: ACCEPT_ALL_MANIFESTS } });
    assert.equal(served.status, 200);
    const manifest = await readFile(path.join(dir, 'manifest.json'));
    assert.deepEqual(manifest, served.body, 'skopeo kept the manifest byte for byte');
    const m = JSON.parse(manifest.toString('utf8')) as { config: { digest: string }; layers: Array<{ digest: string; annotations?: Record<string, string> }> };
    const files = new Set(await readdir(dir));
    for (const d of [m.config.digest, ...m.layers.map((l) => l.digest)]) {
      const hex = d.slice('sha256:'.length);
      assert.ok(files.has(hex), `skopeo wrote ${hex}`);
      assert.equal(sha256(await readFile(path.join(dir, hex))), d);
    }
    const config = JSON.parse((await readFile(path.join(dir, m.config.digest.slice(7)))).toString('utf8')) as { rootfs: { diff_ids: string[] } };
    for (const [i, l] of m.layers.entries()) {
      assert.ok(l.annotations?.[TOC], `layer ${i} has its TOC digest`);
      assert.equal(config.rootfs.diff_ids[i], sha256(zlib.gunzipSync(await readFile(path.join(dir, l.digest.slice(7))))));
      assert.notEqual(l.digest, seeded.small.layers[i]!.digest);
    }
  });

  test('ctr pulls lab/small:1-esgz through berth with overlayfs and `ctr run` prints a file of it', async () => {
    assert.ok(await imagesAreRunnable(), 'a static busybox is needed to run the image (Debian: busybox-static)');
    const ref = 'docker.io/lab/small:1-esgz';
    await containerd.pull(ref);
    const served = await httpRequest(berth.url, '/v2/lab/small/manifests/1-esgz', { method: 'HEAD', headers: { accept: ACCEPT_ALL_MANIFESTS } });
    assert.equal((await imageTargets(containerd)).get(ref), served.headers['docker-content-digest']);
    const { stdout } = await containerd.ctr(['run', '--rm', ref, `esgz-${process.pid}`, '/bin/cat', '/app/hello.txt'], { timeoutMs: 60_000 });
    assert.match(stdout, /^hello from layer 2 /);
  });
});
