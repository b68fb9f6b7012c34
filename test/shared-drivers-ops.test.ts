// The operator commands on the shared drivers together (issue #12): storage.driver s3 (one Ceph RGW bucket)
// AND index.driver postgres (one database), beside a running `berth serve` replica, from other working
// directories with the same bucket and database (as another replica's config). Real docker-registry upstream,
// real skopeo. What each command does is checked where it lands: objects in the bucket, rows through `ls`,
// requests in the upstream's access log.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { GetObjectCommand, ListObjectsV2Command, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { stringify } from 'yaml';
import { makeS3Client } from '../src/store/s3/client.ts';
import type { AccessEntry } from './support/accesslog.ts';
import { blobFiles, describeRun, type LsRow, lsJson, runBerth } from './support/berth-cli.ts';
import { type Ceph, startCeph } from './support/ceph.ts';
import { CLUSTER_SECRET, query, type Replica, startReplica } from './support/cluster.ts';
import { request } from './support/http.ts';
import { buildImage, digestOf, type Image, pushImage } from './support/images.ts';
import { upstreamTrafficSince, waitUntil } from './support/links.ts';
import { freePort } from './support/ports.ts';
import { type Postgres, startPostgres } from './support/postgres.ts';
import { assertPulledImage } from './support/pulled-image.ts';
import { type Relay, startRelay } from './support/relay.ts';
import { skopeoCopy } from './support/skopeo.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const PREFIX = 'ops/';
const digestsOf = (img: Image) => [img.manifestDigest, img.config.digest, ...img.layers.map((l) => l.digest)];
const blobGets = (traffic: AccessEntry[]) =>
  traffic
    .filter((e) => e.method === 'GET' && e.status === 200 && /\/blobs\/sha256:/.test(e.path))
    .map((e) => e.path.split('?')[0]!.split('/blobs/')[1]!)
    .sort();

describe('operator commands on storage.driver s3 + index.driver postgres', () => {
  let ceph: Ceph;
  let pg: Postgres;
  let up: Upstream;
  let work: string;
  let pgUrl: string;
  let client: S3Client;
  let serve: Replica;
  /** Pulled through the serve replica; w1 and w2 share their first layer (prewarmed at once from two directories). */
  let app: Image;
  let w1: Image;
  let w2: Image;
  /** Prewarmed by digest through a relay that can hold its layer, while gc runs elsewhere. */
  let slow: Image;
  /** Prewarmed through the same relay, held, while berth serve is asked for its layer. */
  let held: Image;
  let relay: Relay;
  const configs = new Map<string, string>();

  const s3 = () => ({ endpoint: ceph.endpoint, bucket: ceph.bucket, prefix: PREFIX, accessKeyId: ceph.accessKeyId, secretAccessKey: ceph.secretAccessKey });
  const upstreams = () => [{ host: 'docker.io', url: up.url }];
  const key = (d: string) => `${PREFIX}blobs/sha256/${d.slice(7, 9)}/${d.slice(7)}`;

  /** Every digest under the bucket's blobs/ (of this file's prefix). */
  const bucketDigests = async (): Promise<Set<string>> => {
    const out = new Set<string>();
    let ContinuationToken: string | undefined;
    do {
      const page = await client.send(new ListObjectsV2Command({ Bucket: ceph.bucket, Prefix: `${PREFIX}blobs/`, ...(ContinuationToken ? { ContinuationToken } : {}) }));
      for (const o of page.Contents ?? []) out.add(`sha256:${o.Key!.split('/').pop()}`);
      ContinuationToken = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (ContinuationToken);
    return out;
  };
  const assertInBucket = async (digests: string[], what: string) => {
    const have = await bucketDigests();
    for (const d of digests) assert.ok(have.has(d), `${what}: ${d} is not in the bucket`);
    // Whatever is there hashes to its name (the store's invariant), for what this check names.
    for (const d of digests) {
      const body = await client.send(new GetObjectCommand({ Bucket: ceph.bucket, Key: key(d) }));
      assert.equal(digestOf(Buffer.from(await body.Body!.transformToByteArray())), d, `${key(d)} does not hash to its name`);
    }
  };

  /**
   * A working directory of its own with a replica's config (same bucket, same database, a cluster section
   * advertising a URL nobody listens on: this replica is not running, only its operator commands are).
   */
  const workdir = async (name: string, upstreamUrl = up.url): Promise<string> => {
    const dir = path.join(work, name);
    await mkdir(dir, { recursive: true });
    const file = path.join(work, `${name}.yaml`);
    await writeFile(
      file,
      stringify({
        storage: { path: dir, driver: 's3', s3: s3() },
        index: { driver: 'postgres', postgres: { url: pgUrl } },
        cluster: { advertise: `http://127.0.0.1:${await freePort()}`, secret: CLUSTER_SECRET, leaseTimeout: '3s' },
        upstreams: [{ host: 'docker.io', url: upstreamUrl }],
        retries: { attempts: 2, backoff: '50ms' },
        log: { level: 'warn' },
      }),
    );
    configs.set(name, file);
    return file;
  };
  const cli = async (args: string[]) => {
    const r = await runBerth(args);
    assert.equal(r.code, 0, describeRun(args, r));
    return r;
  };
  /** What the shared database holds, asked directly (cheaper than a `berth ls` where ls is not what is tested). */
  const indexed = async (digests: string[]) => (await query<{ digest: string }>(pgUrl, 'SELECT digest FROM blobs WHERE digest = ANY($1)', [digests])).map((r) => r.digest).sort();
  const pinned = async (reference: string) => (await query(pgUrl, 'SELECT 1 FROM pins WHERE reference = $1', [reference])).length > 0;
  const tagged = async (repository: string) => (await query(pgUrl, 'SELECT 1 FROM tags WHERE repository = $1', [repository])).length > 0;
  const listed = async (config: string): Promise<Map<string, LsRow>> => new Map((await lsJson(config)).map((r) => [r.reference, r]));
  const row = async (config: string, ref: string): Promise<LsRow | undefined> => (await listed(config)).get(ref);

  before(async () => {
    work = await makeTempDir('shared-drivers-ops');
    await Promise.all([
      // A port block of its own (cluster-s3 31470, s3-store 31830, store-conformance-s3 31810, s3-faults 31250).
      startCeph({ port: 31490, sizeGb: 2 }).then((c) => (ceph = c)),
      startPostgres().then(async (p) => {
        pg = p;
        pgUrl = await p.createDatabase();
      }),
      (async () => {
        up = await startUpstream();
        const shared = { files: { 'shared.bin': randomBytes(512 * 1024) } };
        app = await buildImage({ format: 'oci', layers: [{ files: { 'app.txt': `app ${work}\n` } }, { randomBytes: 3 * 1024 * 1024, dir: work }] });
        w1 = await buildImage({ format: 'oci', layers: [shared, { files: { 'w1.txt': `w1 ${work}\n` } }] });
        w2 = await buildImage({ format: 'docker', layers: [shared, { randomBytes: 1024 * 1024, dir: work }] });
        await pushImage(up, 'lab/app', '1', app);
        await pushImage(up, 'lab/w1', '1', w1);
        await pushImage(up, 'lab/w2', '1', w2);
        slow = await buildImage({ format: 'oci', layers: [{ randomBytes: 2 * 1024 * 1024, dir: work }] });
        await pushImage(up, 'lab/slow', '1', slow);
        held = await buildImage({ format: 'oci', layers: [{ randomBytes: 2 * 1024 * 1024, dir: work }] });
        await pushImage(up, 'lab/held', '1', held);
        relay = await startRelay({ target: { host: '127.0.0.1', port: up.port } });
      })(),
    ]);
    client = makeS3Client({ ...s3(), region: 'us-east-1', forcePathStyle: true });
    serve = await startReplica('serve', { pgUrl, upstreams: upstreams(), s3: s3() });
  });

  after(async () => {
    await serve?.stop().catch(() => undefined);
    client?.destroy();
    await relay?.close();
    await up?.stop();
    await pg?.destroy();
    await ceph?.stop();
    if (work) await removeTempDir(work);
  });

  test('skopeo pulls byte for byte through berth serve; another working directory lists the tag as complete', async () => {
    const dir = path.join(work, 'pull-app');
    await skopeoCopy(`docker://127.0.0.1:${serve.port}/lab/app:1`, `dir:${dir}`, { srcTlsVerify: false });
    await assertPulledImage(dir, app);
    await assertInBucket(digestsOf(app), 'pulled through serve');

    const b = await workdir('b');
    const seen = await row(b, 'docker.io/lab/app:1');
    assert.equal(seen?.digest, app.manifestDigest, 'ls from another working directory sees the tag berth serve cached');
    assert.equal(seen?.complete, true, 'complete: the bytes are in the shared bucket');
    assert.equal(seen?.pinned, false);
    assert.equal(seen?.size, app.manifest.length + app.config.size + app.layers.reduce((n, l) => n + l.size, 0));
    assert.deepEqual(await blobFiles(path.join(work, 'b')), [], 'nothing of the blobs is in the working directory');
  });

  test('two prewarms at once from two working directories fetch into the bucket, once per blob, and pin', async () => {
    const [b, c] = [configs.get('b')!, await workdir('c')];
    const mark = up.logLineCount();
    const [r1, r2] = await Promise.all([runBerth(['prewarm', 'docker.io/lab/w1:1', '--config', b]), runBerth(['prewarm', 'docker.io/lab/w2:1', '--config', c])]);
    assert.equal(r1.code, 0, describeRun(['prewarm', 'w1'], r1));
    assert.equal(r2.code, 0, describeRun(['prewarm', 'w2'], r2));
    await assertInBucket([...digestsOf(w1), ...digestsOf(w2)], 'prewarmed');
    const fetched = blobGets(await upstreamTrafficSince(up, mark));
    const wanted = [...new Set([w1.config, w2.config, ...w1.layers, ...w2.layers].map((b) => b.digest))].sort();
    // The shared layer may be read by both (two fills in two processes), never anything else, nothing missing.
    assert.deepEqual([...new Set(fetched)].sort(), wanted, 'the upstream served exactly the blobs of the two images');
    assert.ok(fetched.length <= wanted.length + 1, `blob GETs upstream: ${fetched.join(' ')}`);
    const rows = await listed(b);
    for (const img of [w1, w2]) {
      const r = rows.get(`docker.io/lab/${img === w1 ? 'w1' : 'w2'}:1`);
      assert.deepEqual([r?.digest, r?.complete, r?.pinned], [img.manifestDigest, true, true], 'ls lists it complete and pinned');
    }
  });

  test('gc from one working directory beside a prewarm from another removes nothing of the image being prewarmed', async () => {
    const d = await workdir('d', relay.url());
    // The layer crawls (about 4 KB/s) until gc is done: the manifest and config are in, nothing pins them yet.
    relay.setRate(4096);
    const ref = `docker.io/lab/slow@${slow.manifestDigest}`;
    const prewarm = runBerth(['prewarm', ref, '--config', d]);
    await waitUntil('the prewarm stored the manifest and config', async () => (await indexed([slow.manifestDigest, slow.config.digest])).length === 2, 60_000, 100);
    const gc = await cli(['gc', '--config', configs.get('b')!]);
    relay.setRate(undefined);
    const r = await prewarm;
    assert.equal(r.code, 0, describeRun(['prewarm', ref], r));
    assert.match(gc.stdout, /removed 0 partial downloads, 0 unreferenced blobs, 0 unindexed files/);
    await assertInBucket(digestsOf(slow), 'prewarmed beside a gc');
  });

  test('berth serve asked for a layer a prewarm in another working directory is fetching serves it at once', async () => {
    const d = configs.get('d')!;
    relay.setRate(8192);
    const since = relay.bytesDown;
    const prewarm = runBerth(['prewarm', 'docker.io/lab/held:1', '--config', d]);
    try {
      // Past the manifest and config: the layer's body is crawling through the relay.
      await waitUntil('the prewarm is reading the layer', () => relay.bytesDown - since > 24 * 1024, 60_000, 50);
      const layer = held.layers[0]!;
      const started = Date.now();
      const r = await request(serve.url, `/v2/lab/held/blobs/${layer.digest}`, { timeoutMs: 60_000 });
      assert.equal(r.status, 200, `${r.status} after ${Date.now() - started} ms: ${r.body.toString('utf8').slice(0, 400)}`);
      assert.equal(digestOf(r.body), layer.digest);
    } finally {
      relay.setRate(undefined);
    }
    const r = await prewarm;
    assert.equal(r.code, 0, describeRun(['prewarm', 'held'], r));
    await assertInBucket(digestsOf(held), 'prewarmed while served');
  });

  test('pin and unpin from another working directory; rm refuses a pinned tag, rm --force removes its own blobs from the bucket', async () => {
    const b = configs.get('b')!;
    const c = configs.get('c')!;
    await cli(['unpin', 'docker.io/lab/w1:1', '--config', b]);
    assert.equal(await pinned('docker.io/lab/w1:1'), false, 'unpinned in the shared database');
    // Two commands at once from two working directories: a pin and an export of the same image.
    const bundle = path.join(work, 'w1.tar');
    await Promise.all([cli(['pin', 'docker.io/lab/w1:1', '--config', b]), cli(['export', 'docker.io/lab/w1:1', '-o', bundle, '--config', c])]);
    assert.equal(await pinned('docker.io/lab/w1:1'), true);
    const refused = await runBerth(['rm', 'docker.io/lab/w1:1', '--config', b]);
    assert.equal(refused.code, 1, describeRun(['rm'], refused));
    assert.match(refused.stderr, /is pinned/);
    await assertInBucket(digestsOf(w1), 'rm refused');

    await cli(['rm', '--force', 'docker.io/lab/w1:1', '--config', b]);
    assert.equal(await tagged('lab/w1'), false, 'the tag is gone from the shared index');
    assert.deepEqual(await indexed(digestsOf(w2)), digestsOf(w2).sort(), 'w2 is untouched');
    const left = await bucketDigests();
    const shared = w1.layers[0]!.digest;
    for (const d of digestsOf(w1).filter((d) => d !== shared)) assert.equal(left.has(d), false, `${d} of w1 is still in the bucket`);
    assert.ok(left.has(shared), 'the layer w2 shares stays');

    // Imported back through the shared drivers: complete and pinned again, and berth serve serves it without the upstream.
    await cli(['import', bundle, '--config', c]);
    const again = await row(b, 'docker.io/lab/w1:1');
    assert.deepEqual([again?.digest, again?.complete, again?.pinned], [w1.manifestDigest, true, true]);
    await assertInBucket(digestsOf(w1), 'imported');
    const mark = up.logLineCount();
    const dir = path.join(work, 'pull-w1');
    await skopeoCopy(`docker://127.0.0.1:${serve.port}/lab/w1:1`, `dir:${dir}`, { srcTlsVerify: false });
    await assertPulledImage(dir, w1);
    assert.deepEqual(await upstreamTrafficSince(up, mark), [], 'berth serve asked the upstream nothing for an imported image');
  });

  test('rm of an image berth serve has served: gone from the bucket, and berth serve asked again refetches it (never a 500)', async () => {
    const b = configs.get('b')!;
    await cli(['rm', 'docker.io/lab/app:1', '--config', b]);
    const left = await bucketDigests();
    for (const d of digestsOf(app)) assert.equal(left.has(d), false, `${d} of app is still in the bucket`);

    // The replica remembers rows and objects for a while; what it answers must still be right.
    for (const blob of [app.config, ...app.layers]) {
      let r = await request(serve.url, `/v2/lab/app/blobs/${blob.digest}`, { timeoutMs: 30_000 });
      // "removed meanwhile" is a 503 by design (nothing was sent); the client's retry fills it.
      if (r.status === 503) r = await request(serve.url, `/v2/lab/app/blobs/${blob.digest}`, { timeoutMs: 30_000 });
      assert.equal(r.status, 200, `${blob.digest}: ${r.status} ${r.body.toString('utf8').slice(0, 300)}`);
      assert.equal(digestOf(r.body), blob.digest);
    }
    for (const reference of [app.manifestDigest, '1']) {
      const get = () => request(serve.url, `/v2/lab/app/manifests/${reference}`, { headers: { Accept: app.mediaType }, timeoutMs: 30_000 });
      let r = await get();
      if (r.status === 503) r = await get();
      assert.equal(r.status, 200, `manifest ${reference}: ${r.status} ${r.body.toString('utf8').slice(0, 300)}`);
      assert.ok(r.body.equals(app.manifest), `manifest ${reference} is not the pushed one`);
    }
    const dir = path.join(work, 'pull-app-again');
    await skopeoCopy(`docker://127.0.0.1:${serve.port}/lab/app:1`, `dir:${dir}`, { srcTlsVerify: false });
    await assertPulledImage(dir, app);
    await assertInBucket(digestsOf(app), 'refetched');
    assert.doesNotMatch(serve.log(), /"statusCode":500|internal error/);
  });

  test('gc --min-age 0s removes nothing in use; an object under blobs/ the index does not know goes, once older than --min-age', async () => {
    const b = configs.get('b')!;
    const before = await bucketDigests();
    const stray = Buffer.from(`stray ${work}`);
    const strayDigest = digestOf(stray);
    await client.send(new PutObjectCommand({ Bucket: ceph.bucket, Key: key(strayDigest), Body: stray }));

    // Younger than --min-age (1h): maybe a replica's fill whose row comes next; it stays.
    const young = await cli(['gc', '--config', b]);
    assert.match(young.stdout, /removed 0 partial downloads, 0 unreferenced blobs, 0 unindexed files/);
    assert.ok((await bucketDigests()).has(strayDigest), 'gc removed an object younger than --min-age');

    const gc = await cli(['gc', '--min-age', '0s', '--config', b]);
    assert.match(gc.stdout, /removed 0 partial downloads, 0 unreferenced blobs, 1 unindexed files/);
    const after = await bucketDigests();
    assert.deepEqual([...after].sort(), [...before].sort(), 'gc removed the stray object and nothing else');
    for (const img of [app, w1, w2, slow, held]) {
      assert.deepEqual(await indexed(digestsOf(img)), digestsOf(img).sort(), 'gc removed rows of an image in use');
      await assertInBucket(digestsOf(img), 'after gc');
    }
  });

  test('index rebuild is refused on postgres, writing nothing', async () => {
    const r = await runBerth(['index', 'rebuild', '--config', configs.get('b')!]);
    assert.equal(r.code, 1, describeRun(['index', 'rebuild'], r));
    assert.match(r.stderr, /index\.driver is postgres/);
    assert.deepEqual(
      (await readdir(path.join(work, 'b'))).filter((f) => f.startsWith('berth.db')),
      [],
    );
  });
});
