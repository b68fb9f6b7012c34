// Bytes on disk can rot (issue #8 item 16): a cached blob with one flipped byte must not be served as a
// clean 200. Whole-blob reads are hashed as they stream and the last byte is held back: on a mismatch the
// client's transfer is cut, the blob is moved to storage/quarantine/ and forgotten, and the next request
// fetches it from the upstream again. `berth verify` scrubs the whole store the same way.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import pino from 'pino';
import { ConfigSchema } from '../src/config/schema.ts';
import { createBerth } from '../src/server.ts';
import { type InProcessBerth, startBerth } from './support/berth.ts';
import { describeRun, flipByte, runBerth, writeCliConfig } from './support/berth-cli.ts';
import { buildImage, type Image, pushImage } from './support/images.ts';
import { upstreamTrafficSince } from './support/links.ts';
import { fetchOutcome } from './support/outcome.ts';
import { committedPath } from './support/storage.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const blobGets = (entries: Array<{ method: string; path: string }>, digest: string) => entries.filter((e) => e.method === 'GET' && e.path.split('?')[0]!.endsWith(`/blobs/${digest}`)).length;

describe('a cached blob that no longer hashes to its name', () => {
  let up: Upstream;
  let work: string;
  let img: Image;
  let b: InProcessBerth;

  before(async () => {
    work = await makeTempDir('cached-integrity');
    up = await startUpstream();
    img = await buildImage({ format: 'oci', layers: [{ randomBytes: 3_000_000, dir: work }, { files: { 'etc/small': 'small layer\n' } }] });
    await pushImage(up, 'lab/rot', '1', img);
    b = await startBerth({ upstreams: [{ host: 'docker.io', url: up.url }] });
  });

  after(async () => {
    await b?.stop();
    await up?.stop();
    if (work) await removeTempDir(work);
  });

  for (const [name, headers] of [
    ['a whole GET', {}],
    ['a Range of the whole blob', { Range: 'bytes=0-' }],
  ] as const) {
    test(`${name} is cut before its last byte, the blob is quarantined and fetched again`, async () => {
      const layer = img.layers[0]!;
      const url = `/v2/lab/rot/blobs/${layer.digest}`;
      const fill = await fetchOutcome(b.url, url);
      assert.equal(fill.status, 200);
      const file = committedPath(b, layer.digest);
      assert.ok(existsSync(file), 'the layer is cached');
      await flipByte(file, Math.floor((await stat(file)).size / 2));

      const bad = await fetchOutcome(b.url, url, { headers });
      assert.ok(!bad.complete, `the client must see a broken transfer, got a complete ${bad.status} of ${bad.body.length} bytes`);
      assert.ok(bad.body.length < layer.size, 'the last byte was held back');
      assert.ok(!existsSync(file), 'the rotten file left blobs/');
      const quarantined = await readdir(path.join(b.storage, 'quarantine'));
      assert.ok(
        quarantined.some((f) => f.startsWith(layer.digest.slice(7))),
        `quarantine/ holds it: ${quarantined.join(', ')}`,
      );
      assert.equal(await b.berth.index.getBlob(layer.digest as never), undefined, 'its index row is gone');

      const mark = up.logLineCount();
      const good = await fetchOutcome(b.url, url);
      assert.equal(good.status, 200);
      assert.ok(good.complete);
      assert.equal(good.body.length, layer.size);
      assert.equal(blobGets(await upstreamTrafficSince(up, mark), layer.digest), 1, 'the next request refetched it from the upstream');
      const hit = await fetchOutcome(b.url, url);
      assert.ok(hit.complete && hit.body.length === layer.size, 'and then serves it from the cache again');
    });
  }

  test('a rotten cached manifest is not served: it is refetched', async () => {
    const url = `/v2/lab/rot/manifests/${img.manifestDigest}`;
    const headers = { Accept: img.mediaType };
    assert.equal((await fetchOutcome(b.url, url, { headers })).status, 200);
    const file = committedPath(b, img.manifestDigest);
    await flipByte(file, 10);
    const r = await fetchOutcome(b.url, url, { headers });
    if (r.complete && r.status === 200) assert.deepEqual(r.body, img.manifest, 'a 200 for a manifest carries its exact bytes');
    else assert.fail(`expected the manifest to be refetched, got ${r.status} complete=${r.complete}`);
  });

  test('storage.verifyReads: false serves the cached bytes unchecked (the operator chose speed)', async () => {
    const storage = path.join(work, 'unverified');
    const config = ConfigSchema.parse({ listen: '127.0.0.1:0', storage: { path: storage, verifyReads: false }, upstreams: [{ host: 'docker.io', url: up.url }] });
    const other = await createBerth({ ...config, defaultUpstream: 'docker.io' }, pino({ level: 'silent' }));
    try {
      const base = `http://127.0.0.1:${(await other.listen()).port}`;
      const layer = img.layers[0]!;
      const url = `/v2/lab/rot/blobs/${layer.digest}`;
      assert.equal((await fetchOutcome(base, url)).status, 200);
      const file = committedPath({ storage }, layer.digest);
      await flipByte(file, 1000);
      const r = await fetchOutcome(base, url);
      assert.ok(r.complete && r.status === 200, 'served without the check');
    } finally {
      await other.close();
    }
  });
});

describe('berth verify', () => {
  let up: Upstream;
  let work: string;
  let img: Image;

  before(async () => {
    work = await makeTempDir('verify-cmd');
    up = await startUpstream();
    img = await buildImage({ format: 'oci', layers: [{ randomBytes: 2_000_000, dir: work }, { files: { 'etc/x': 'x\n' } }] });
    await pushImage(up, 'lab/scrub', '1', img);
  });

  after(async () => {
    await up?.stop();
    if (work) await removeTempDir(work);
  });

  test('names every blob that does not hash to its name, exits 1, and with --repair quarantines them', async () => {
    const storage = path.join(work, 'storage');
    const b = await startBerth({ upstreams: [{ host: 'docker.io', url: up.url }], storage });
    try {
      const pulled = await fetchOutcome(b.url, `/v2/lab/scrub/manifests/1`, { headers: { Accept: img.mediaType } });
      assert.equal(pulled.status, 200);
      for (const l of img.layers) assert.equal((await fetchOutcome(b.url, `/v2/lab/scrub/blobs/${l.digest}`)).status, 200);
      assert.equal((await fetchOutcome(b.url, `/v2/lab/scrub/blobs/${img.config.digest}`)).status, 200);
    } finally {
      await b.stop();
    }
    const config = await writeCliConfig(path.join(work, 'berth.yaml'), { storage, upstreams: [{ host: 'docker.io', url: up.url }] });
    const clean = await runBerth(['verify', '--config', config]);
    assert.equal(clean.code, 0, describeRun(['verify'], clean));
    assert.match(clean.stdout, /4 blobs.*ok|all 4 blobs/i, describeRun(['verify'], clean));

    const bad = img.layers[0]!;
    const file = path.join(storage, 'blobs', 'sha256', bad.digest.slice(7, 9), bad.digest.slice(7));
    await flipByte(file, Math.floor((await stat(file)).size / 2));
    const found = await runBerth(['verify', '--config', config]);
    assert.equal(found.code, 1, describeRun(['verify'], found));
    assert.match(found.stdout + found.stderr, new RegExp(bad.digest), 'names the bad blob');
    assert.ok(existsSync(file), 'without --repair nothing moves');

    const repaired = await runBerth(['verify', '--repair', '--config', config]);
    assert.equal(repaired.code, 1, describeRun(['verify', '--repair'], repaired));
    assert.ok(!existsSync(file), 'with --repair the bad blob left blobs/');
    assert.ok((await readdir(path.join(storage, 'quarantine'))).some((f) => f.startsWith(bad.digest.slice(7))));
    const after = await runBerth(['verify', '--config', config]);
    assert.equal(after.code, 0, describeRun(['verify'], after));
  });
});
