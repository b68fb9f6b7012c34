// One repository must not be able to break another's blobs (issue #8 item 7). Any upstream manifest can
// name any digest with any size: `evil/x` declares the victim's layer with size 1. berth takes a blob's size
// hint only from manifests of the repository in the request, and routes a blob request that names no
// upstream (no ns, no host prefix) by the repository in its path, never by whichever repository referenced
// the digest first. Real docker-registry (it does not check declared sizes), real HTTP.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { type InProcessBerth, startBerth } from './support/berth.ts';
import { ACCEPT_ALL_MANIFESTS, baseLayer, buildImage, digestOf, type Image, pushImage } from './support/images.ts';
import { httpRequest, sha256 } from './support/links.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const LAYER_BYTES = 2_000_000;

let up: Upstream;
let b: InProcessBerth;

/** An image with one incompressible layer of about LAYER_BYTES after the base layer. */
async function imageWithBigLayer(): Promise<Image> {
  return buildImage({ format: 'oci', layers: [await baseLayer(), { files: { 'data.bin': randomBytes(LAYER_BYTES) } }] });
}

/** The same image, but its manifest declares its last layer with size 1 (the blobs are the real ones). */
function lyingAboutLastLayer(img: Image): Image {
  const json = JSON.parse(img.manifest.toString()) as { layers: Array<{ size: number }> };
  json.layers[json.layers.length - 1]!.size = 1;
  const manifest = Buffer.from(JSON.stringify(json));
  return { ...img, manifest, manifestDigest: digestOf(manifest) };
}

async function pullManifest(repo: string): Promise<void> {
  const r = await httpRequest(b.url, `/v2/${repo}/manifests/1`, { headers: { accept: ACCEPT_ALL_MANIFESTS } });
  assert.equal(r.status, 200, `${repo}: ${r.body.toString().slice(0, 200)}`);
}

before(async () => {
  up = await startUpstream();
  b = await startBerth({ upstreams: [{ host: 'docker.io', url: up.url }], lazyFill: 'on-demand' });
});

after(async () => {
  await b?.stop();
  await up?.stop();
});

describe('a foreign manifest that declares the wrong size for a layer', () => {
  let victim: Image;
  before(async () => {
    victim = await imageWithBigLayer();
    await pushImage(up, 'library/victim', '1', victim);
    await pushImage(up, 'evil/x', '1', lyingAboutLastLayer(victim));
    // The evil manifest is pulled through berth first, then the victim's.
    await pullManifest('evil/x');
    await pullManifest('library/victim');
  });

  test("does not change the size of the victim's Range reads, nor fail its whole GET", async () => {
    const layer = victim.layers.at(-1)!;
    const range = await httpRequest(b.url, `/v2/library/victim/blobs/${layer.digest}`, { headers: { range: 'bytes=0-99' } });
    assert.equal(range.status, 206, range.body.toString().slice(0, 200));
    assert.equal(range.headers['content-range'], `bytes 0-99/${layer.size}`);
    assert.deepEqual(range.body, layer.bytes!.subarray(0, 100));
    for (const attempt of [1, 2]) {
      const whole = await httpRequest(b.url, `/v2/library/victim/blobs/${layer.digest}`);
      assert.equal(whole.status, 200, `attempt ${attempt}: ${whole.body.toString().slice(0, 200)}`);
      assert.equal(sha256(whole.body), layer.digest);
    }
  });
});

describe('a blob request without ns or host prefix', () => {
  let victim: Image;
  before(async () => {
    victim = await imageWithBigLayer();
    await pushImage(up, 'library/victim2', '1', victim);
    await pushImage(up, 'evil/y', '1', victim);
    await pullManifest('evil/y');
    await pullManifest('library/victim2');
    // The repository that referenced the layers first drops them upstream.
    for (const blob of victim.layers) {
      const del = await httpRequest(up.url, `/v2/evil/y/blobs/${blob.digest}`, { method: 'DELETE' });
      assert.equal(del.status, 202, `DELETE ${blob.digest} from evil/y: ${del.status}`);
    }
  });

  test('goes to the repository it names, not to the first one that referenced the digest', async () => {
    for (const layer of victim.layers) {
      const head = await httpRequest(b.url, `/v2/library/victim2/blobs/${layer.digest}`, { method: 'HEAD' });
      assert.equal(head.status, 200, `HEAD ${layer.digest}`);
      assert.equal(Number(head.headers['content-length']), layer.size);
      const r = await httpRequest(b.url, `/v2/library/victim2/blobs/${layer.digest}`);
      assert.equal(r.status, 200, `GET ${layer.digest}: ${r.body.toString().slice(0, 200)}`);
      assert.equal(sha256(r.body), layer.digest);
    }
  });
});
describe("a wrong size in the requesting repository's own manifest", () => {
  let liar: Image;
  before(async () => {
    liar = lyingAboutLastLayer(await imageWithBigLayer());
    await pushImage(up, 'evil/z', '1', liar);
    await pullManifest('evil/z');
  });

  test("is the upstream's fault: 502 UPSTREAM_ERROR naming it, never a 500", async () => {
    const layer = liar.layers.at(-1)!;
    for (const headers of [{}, { range: 'bytes=0-99' }]) {
      const r = await httpRequest(b.url, `/v2/evil/z/blobs/${layer.digest}`, { headers });
      assert.equal(r.status, 502, `${JSON.stringify(headers)}: ${r.status} ${r.body.toString().slice(0, 300)}`);
      assert.match(r.body.toString(), /UPSTREAM_ERROR/);
      assert.match(r.body.toString(), /upstream docker\.io/);
    }
  });
});
