// The real stargz-snapshotter pulling lazily through berth (issue #11, "End to end with real clients"):
// `ctr-remote i rpull` through berth, the layers FUSE-mounted by containerd-stargz-grpc, `ctr run
// --snapshotter stargz` printing a file of the image, and only a small part of the big layer fetched —
// asserted on what reached the upstream (berth with `lazyFill: on-demand`, so nothing is completed behind
// the reader's back).
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { blobBytesServed } from './support/accesslog.ts';
import { type InProcessBerth, startBerth } from './support/berth.ts';
import { mirrorHostsToml } from './support/containerd.ts';
import { baseLayer, buildImage, type Image, imagesAreRunnable, MediaTypes, pushImage } from './support/images.ts';
import { httpRequest } from './support/links.ts';
import { type Stargz, startStargz } from './support/stargz.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const MB = 1_000_000;
const BIG = 60 * MB;

interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
}

/** The image manifest under `repo:tag` on the upstream, read directly (not through berth). */
async function upstreamManifest(up: Upstream, repo: string, tag: string): Promise<{ layers: Descriptor[] }> {
  const res = await httpRequest(up.url, `/v2/${repo}/manifests/${tag}`, { headers: { accept: MediaTypes.oci.manifest } });
  assert.equal(res.status, 200, `upstream ${repo}:${tag}: ${res.body.toString()}`);
  return JSON.parse(res.body.toString()) as { layers: Descriptor[] };
}

const biggest = (layers: Descriptor[]): Descriptor => layers.reduce((a, b) => (b.size > a.size ? b : a));

describe('stargz-snapshotter pulls lazily through berth', () => {
  let up: Upstream;
  let b: InProcessBerth;
  let sgz: Stargz;
  let work: string;
  let app: Image;
  const greeting = `hello from a lazily pulled layer ${randomUUID()}\n`;

  before(async () => {
    assert.ok(await imagesAreRunnable(), 'no static busybox on this machine (Debian package busybox-static): the images cannot run');
    work = await makeTempDir('estargz-snapshotter');
    up = await startUpstream();
    // A runnable image: busybox, then a layer with a big file and a small one.
    app = await buildImage({ format: 'oci', layers: [await baseLayer(), { files: { 'data/big.bin': randomBytes(BIG), 'etc/berth/greeting.txt': greeting } }] });
    await pushImage(up, 'lab/app', '1', app);
    b = await startBerth({ upstreams: [{ host: 'docker.io', url: up.url }], lazyFill: 'on-demand' });
    sgz = await startStargz({ mirrors: { 'docker.io': b.host } });
    await sgz.writeHosts('docker.io', mirrorHostsToml(b.url));
  });

  after(async () => {
    await sgz?.stop();
    await b?.stop();
    await up?.stop();
    if (work) await removeTempDir(work);
  });

  describe('an image that is eStargz upstream (converted by ctr-remote)', () => {
    before(async () => {
      // ctr-remote converts in containerd's content store: fetch the ordinary image straight from the
      // upstream (loopback, plain http) into a namespace of its own, convert, push the result back.
      const opts = { namespace: 'convert', timeoutMs: 300_000 };
      const src = `${up.host}/lab/app:1`;
      const dst = `${up.host}/lab/app-esgz:1`;
      await sgz.ctr(['content', 'fetch', '--plain-http', src], opts);
      await sgz.ctrRemote(['images', 'convert', '--estargz', '--oci', src, dst], opts);
      await sgz.ctr(['images', 'push', '--plain-http', dst], opts);
    });

    test('rpull mounts its layers over FUSE, ctr run prints a small file, the big layer stays mostly unread', async () => {
      const esgz = await upstreamManifest(up, 'lab/app-esgz', '1');
      assert.ok(
        esgz.layers.every((l) => l.annotations?.['containerd.io/snapshot/stargz/toc.digest']),
        'ctr-remote did not produce eStargz layers',
      );
      const big = biggest(esgz.layers);
      assert.ok(big.size > BIG, `the big layer is ${big.size} bytes`);
      const mark = up.logLineCount();

      await sgz.rpull('docker.io/lab/app-esgz:1');
      const fuse = await sgz.fuseMounts();
      assert.ok(fuse.length >= esgz.layers.length, `expected a FUSE mount per layer under ${sgz.snapshotterRoot}, got ${JSON.stringify(fuse)}`);

      const out = await sgz.run('docker.io/lab/app-esgz:1', ['cat', '/etc/berth/greeting.txt']);
      assert.equal(out, greeting);

      // Both layers were read through berth: the small file's chunk, the TOCs, busybox.
      const traffic = await up.waitForAccess((es) => es.some((e) => e.path.includes('/blobs/') && e.method === 'GET'), { since: mark });
      const bigRead = blobBytesServed(traffic, big.digest);
      assert.ok(bigRead > 0, 'berth never asked the upstream for the big layer');
      assert.ok(bigRead < big.size / 10, `the upstream sent ${bigRead} of the big layer's ${big.size} bytes`);
    });
  });
});
