// The S3 driver when the gateway fails during operation, on a real Ceph RADOS Gateway (issue #12): radosgw
// frozen (SIGSTOP: connections are accepted, nothing answers) and stopped (connections refused). What is in
// the local disk cache (storage.s3.localCache) is still served, blobs and manifests; a blob only in the bucket
// and a miss answer 503 within seconds naming the S3 store, never a 500 and never a hang; /readyz turns 503
// naming the bucket; berth serves again once radosgw is back, without a restart. SIGKILL of berth while a
// pushed blob or a fill is being uploaded (the failpoint, and a kill from outside at a moment the test picks)
// leaves nothing under blobs/, and the restart clears the open upload. The per-replica memo of HeadObject:
// one HEAD per blob, not per GET; a removal here or elsewhere is not served from it. A percentage
// storage.maxSize with the s3 driver is refused at start-up.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ListMultipartUploadsCommand, ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import { ConfigError, loadConfig } from '../src/config/load.ts';
import { RegistryError } from '../src/oci/errors.ts';
import { StoragePaths } from '../src/store/paths.ts';
import { makeS3Client } from '../src/store/s3/client.ts';
import { S3Keys } from '../src/store/s3/keys.ts';
import { S3BlobStore } from '../src/store/s3/s3-store.ts';
import { type InProcessBerth, startBerth } from './support/berth.ts';
import { type BerthChild, startBerthChild } from './support/berth-child.ts';
import { type Ceph, startCeph } from './support/ceph.ts';
import { digestOf } from './support/conformance/blob-store.ts';
import { hashedGet, request } from './support/http.ts';
import { buildImage, type Image, pushImage, type Seeded, seedStandard } from './support/images.ts';
import { waitUntil } from './support/links.ts';
import { forgetPrefixClaim, isPrefixClaim } from './support/s3-claim.ts';
import { exists } from './support/storage.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const MiB = 1024 * 1024;
const ACCEPT = 'application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json';

let ceph: Ceph;
let up: Upstream;
let seeded: Seeded;
/** Pushed upstream only, never pulled before the gateway goes: a miss (one per fault). */
const cold: Record<'frozen' | 'stopped', Image> = {} as never;
let work: string;
let client: S3Client;

const s3Of = (prefix: string) => ({ endpoint: ceph.endpoint, bucket: ceph.bucket, prefix, accessKeyId: ceph.accessKeyId, secretAccessKey: ceph.secretAccessKey });
const upstreams = () => [{ host: 'docker.io', url: up.url }];

/** Keys and open multipart uploads under `prefix` (but its claim, src/store/prefix-claim.ts). */
async function inBucket(prefix: string): Promise<{ objects: string[]; uploads: string[] }> {
  const objects = await client.send(new ListObjectsV2Command({ Bucket: ceph.bucket, Prefix: prefix }));
  const uploads = await client.send(new ListMultipartUploadsCommand({ Bucket: ceph.bucket, Prefix: prefix }));
  return {
    objects: (objects.Contents ?? [])
      .map((o) => o.Key!)
      .filter((k) => !isPrefixClaim(k))
      .sort(),
    uploads: (uploads.Uploads ?? []).map((u) => u.Key!).sort(),
  };
}

/** A 503 UNAVAILABLE naming the S3 store, answered within `withinMs`. */
async function assertUnavailable(base: string, p: string, withinMs: number, what: string): Promise<void> {
  const t0 = Date.now();
  const res = await request(base, p, { timeoutMs: 60_000 });
  const ms = Date.now() - t0;
  assert.equal(res.status, 503, `${what}: ${res.status} ${res.body.toString()}`);
  const body = JSON.parse(res.body.toString()) as { errors: Array<{ code: string; message: string }> };
  assert.equal(body.errors[0]?.code, 'UNAVAILABLE', what);
  assert.match(body.errors[0]!.message, /S3 store at http:\/\/127\.0\.0\.1:\d+/, what);
  assert.ok(ms < withinMs, `${what}: answered in ${ms} ms`);
}

async function readyz(base: string): Promise<{ status: number; ms: number; checks: Record<string, string> }> {
  const t0 = Date.now();
  const res = await request(base, '/readyz', { timeoutMs: 60_000 });
  return { status: res.status, ms: Date.now() - t0, checks: (JSON.parse(res.body.toString()) as { checks: Record<string, string> }).checks };
}

before(async () => {
  work = await makeTempDir('s3-faults');
  await Promise.all([
    startCeph({ port: 31250, sizeGb: 3 }).then((c) => (ceph = c)),
    (async () => {
      up = await startUpstream();
      seeded = await seedStandard(up, work, { bigBytes: 40 * MiB });
      for (const fault of ['frozen', 'stopped'] as const) {
        cold[fault] = await buildImage({ format: 'oci', layers: [{ files: { 'cold.bin': randomBytes(200_000) } }] });
        await pushImage(up, `lab/cold-${fault}`, '1', cold[fault]);
      }
    })(),
  ]);
  client = makeS3Client({ ...s3Of(''), region: 'us-east-1', forcePathStyle: true });
});

after(async () => {
  client?.destroy();
  await up?.stop();
  await ceph?.stop();
  await removeTempDir(work);
});

describe('radosgw frozen or stopped while berth runs', () => {
  let local: InProcessBerth;
  let plain: InProcessBerth;
  const l0 = () => seeded.small.layers[0]!;

  before(async () => {
    // Two replicas on one prefix: `plain` has no local cache, `local` keeps whole reads on its disk.
    const cacheDir = path.join(work, 'local-cache');
    plain = await startBerth({ upstreams: upstreams(), s3: s3Of('f/') });
    // Each with its own SQLite index: the prefix's claim is plain's, forgotten for the second.
    await forgetPrefixClaim(client, ceph.bucket, 'f/');
    local = await startBerth({ upstreams: upstreams(), s3: { ...s3Of('f/'), localCache: { path: cacheDir, maxSize: '200MiB' } } });
    // plain fills the image into the bucket; local reads the manifest and one layer from there (copied in).
    for (const l of seeded.small.layers) assert.equal((await hashedGet(`${plain.url}/v2/lab/small/blobs/${l.digest}`)).digest, l.digest);
    assert.equal((await request(local.url, '/v2/lab/small/manifests/1', { headers: { accept: ACCEPT } })).status, 200);
    assert.equal((await hashedGet(`${local.url}/v2/lab/small/blobs/${l0().digest}`)).digest, l0().digest);
    await waitUntil('the local copy', () => exists(path.join(cacheDir, 'blobs', 'sha256', l0().digest.slice(7, 9), l0().digest.slice(7))), 30_000);
    assert.deepEqual((await readyz(local.url)).checks, { index: 'ok', storage: 'ok', s3: 'ok' });
  });
  after(async () => {
    await local?.stop();
    await plain?.stop();
  });

  for (const fault of ['frozen', 'stopped'] as const) {
    test(`radosgw ${fault}: local copies served, the rest 503 fast naming S3, /readyz 503 naming the bucket; back without a restart`, async () => {
      // In the bucket only (the recovery below copies it in, so each fault has its own), and a miss.
      const inBucketOnly = seeded.small.layers[fault === 'frozen' ? 1 : 2]!;
      const miss = cold[fault].layers[0]!;
      const mark = up.logLineCount();
      if (fault === 'frozen') await ceph.pauseGateway();
      else await ceph.stopGateway();
      try {
        // From local disk: the layer and the manifest, by tag and by digest.
        assert.equal((await hashedGet(`${local.url}/v2/lab/small/blobs/${l0().digest}`)).digest, l0().digest, 'the local copy');
        for (const ref of ['1', seeded.small.manifestDigest]) {
          const m = await request(local.url, `/v2/lab/small/manifests/${ref}`, { headers: { accept: ACCEPT }, timeoutMs: 30_000 });
          assert.equal(m.status, 200, `manifest ${ref}: ${m.status} ${m.body.toString()}`);
          assert.ok(m.body.equals(seeded.small.manifest));
        }
        // Frozen: the read is aborted once a HeadBucket gets no answer either (about 8 s); stopped: refused at once.
        const bound = fault === 'frozen' ? 14_000 : 3000;
        await assertUnavailable(local.url, `/v2/lab/small/blobs/${inBucketOnly.digest}`, bound, 'in the bucket only');
        await assertUnavailable(plain.url, `/v2/lab/small/blobs/${l0().digest}`, bound, 'no local cache');
        await assertUnavailable(local.url, `/v2/lab/cold-${fault}/blobs/${miss.digest}`, bound, 'a miss');
        const r = await readyz(local.url);
        assert.equal(r.status, 503);
        assert.match(r.checks.s3!, new RegExp(`^failed: S3 bucket "${ceph.bucket}" at ${ceph.endpoint.replace(/[.]/g, '\\.')}`));
        assert.equal(r.checks.storage, 'ok', 'the local directory is fine');
        assert.ok(r.ms < 6000, `/readyz answered in ${r.ms} ms`);
        const blobRequests = (await up.accessLogSince(mark)).filter((e) => e.path.includes('/blobs/'));
        assert.deepEqual(blobRequests, [], 'an unreachable store sends nobody upstream for blobs');
      } finally {
        if (fault === 'frozen') await ceph.resumeGateway();
        else await ceph.start();
      }
      for (const b of [local, plain]) {
        await waitUntil('ready again', async () => (await readyz(b.url)).status === 200, 30_000);
        assert.equal((await hashedGet(`${b.url}/v2/lab/small/blobs/${inBucketOnly.digest}`)).digest, inBucketOnly.digest, 'recovered without a restart');
      }
      assert.equal((await hashedGet(`${local.url}/v2/lab/cold-${fault}/blobs/${miss.digest}`)).digest, miss.digest, 'misses fill again');
    });
  }
});

describe('SIGKILL of berth while it uploads to the bucket: nothing under blobs/', () => {
  const children: BerthChild[] = [];
  after(async () => {
    for (const c of children) await c.stop().catch(() => undefined);
  });

  test('a pushed blob, killed half-way through its upload (store.s3.mid-upload): an open upload under ingest/ only; the restart clears it, the push works', async () => {
    const b = await startBerthChild(
      { upstreams: [{ host: '127.0.0.1:9', url: 'http://127.0.0.1:9' }], local: { prefixes: ['site/'], allowAnonymousPush: true }, s3: s3Of('p/') },
      { env: { BERTH_FAILPOINTS: 'store.s3.mid-upload' } },
    );
    children.push(b);
    const bytes = randomBytes(20 * MiB);
    const d = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
    const push = () => fetch(`${b.url}/v2/site/app/blobs/uploads/?digest=${d}`, { method: 'POST', body: bytes, headers: { 'content-type': 'application/octet-stream' } });
    await push().catch(() => undefined);
    assert.equal(await b.process.exited, null, 'berth killed itself at the failpoint');
    const left = await inBucket('p/');
    assert.ok(left.uploads.length === 1 && left.uploads[0]!.startsWith('p/ingest/'), `an open upload under ingest/: ${JSON.stringify(left)}`);
    assert.deepEqual(left.objects, [], 'no object at all, under blobs/ or elsewhere');
    await b.restart({ env: {} });
    assert.deepEqual(await inBucket('p/'), { objects: [], uploads: [] }, 'the restart cleared its own leftovers');
    const res = await push();
    assert.equal(res.status, 201, await res.text());
    assert.deepEqual(await inBucket('p/'), { objects: [`p/blobs/sha256/${d.slice(7, 9)}/${d.slice(7)}`], uploads: [] });
    assert.equal((await hashedGet(`${b.url}/v2/site/app/blobs/${d}`)).digest, d);
  });

  test('a fill killed from outside while its parts go up: no blob under blobs/, the restart clears the upload and serves the blob', async () => {
    const big = seeded.big!.layers[0]!;
    const b = await startBerthChild({ upstreams: upstreams(), s3: s3Of('k/') });
    children.push(b);
    const get = hashedGet(`${b.url}/v2/lab/big/blobs/${big.digest}`).catch(() => undefined);
    // The moment the first multipart upload is open under ingest/: parts are being sent.
    await waitUntil('an upload under ingest/', async () => (await inBucket('k/ingest/')).uploads.length > 0, 60_000, 5);
    await b.kill('SIGKILL');
    await get;
    const left = await inBucket('k/');
    assert.deepEqual(
      left.objects.filter((k) => k.startsWith('k/blobs/')),
      [],
      `nothing under blobs/: ${JSON.stringify(left)}`,
    );
    await b.restart();
    assert.deepEqual(await inBucket('k/'), { objects: [], uploads: [] }, 'the restart cleared the open upload');
    assert.equal((await hashedGet(`${b.url}/v2/lab/big/blobs/${big.digest}`)).digest, big.digest);
    assert.deepEqual((await inBucket('k/')).uploads, []);
  });
});

describe('the HeadObject memo of a replica without a local cache', () => {
  test('one HeadObject per blob, not per GET; a removal here forgets it at once, one by another replica at the next read', async () => {
    const dir = await makeTempDir('s3-memo');
    const prefix = `m-${randomBytes(4).toString('hex')}/`;
    const bucketFor = () => ({ client: makeS3Client({ ...s3Of(prefix), region: 'us-east-1', forcePathStyle: true }), bucket: ceph.bucket, endpoint: ceph.endpoint });
    const a = new S3BlobStore(bucketFor(), new S3Keys(prefix, 'aaaaaaaaaaaaaaaa'), new StoragePaths(path.join(dir, 'a')));
    const other = new S3BlobStore(bucketFor(), new S3Keys(prefix, 'bbbbbbbbbbbbbbbb'), new StoragePaths(path.join(dir, 'b')));
    await Promise.all([a.init(), other.init()]);
    const commands: string[] = [];
    a.s3.client.middlewareStack.add(
      (next, ctx) => (args) => {
        commands.push(ctx.commandName as string);
        return next(args);
      },
      { step: 'initialize' },
    );
    const heads = () => commands.filter((c) => c === 'HeadObjectCommand').length;
    try {
      const bytes = randomBytes(1000);
      const d = digestOf(bytes);
      await other.putBytes(d, bytes);
      for (let i = 0; i < 5; i++) assert.deepEqual(await a.stat(d), { size: 1000 });
      assert.equal(heads(), 1, 'five stats, one HeadObject');
      // Removed by another replica: the next read finds it gone (a 503 to retry, nothing sent), then stat says so.
      await other.remove(d);
      assert.deepEqual(await a.stat(d), { size: 1000 }, 'still believed: nothing told this replica');
      await assert.rejects(
        (async () => {
          for await (const _ of a.read(d));
        })(),
        (err: unknown) => err instanceof RegistryError && err.code === 'UNAVAILABLE' && /no longer in bucket/.test(err.message),
      );
      assert.equal(await a.stat(d), undefined, 'forgotten after the failed read');
      // Written and removed here: known at once without a HEAD, forgotten at once.
      await a.putBytes(d, bytes);
      const before = heads();
      assert.deepEqual(await a.stat(d), { size: 1000 });
      assert.equal(heads(), before, 'its own write needs no HEAD');
      await a.remove(d);
      assert.equal(await a.stat(d), undefined);
    } finally {
      a.close();
      other.close();
      await removeTempDir(dir);
    }
  });
});

test('storage.maxSize as a percentage with driver s3 is refused: a bucket has no disk size', async () => {
  const file = path.join(work, 'percent.yaml');
  await writeFile(file, `storage:\n  driver: s3\n  maxSize: "80%"\n  s3:\n    endpoint: http://127.0.0.1:9\n    bucket: b\n`);
  assert.throws(
    () => loadConfig({ config: file }, {}),
    (err: unknown) => err instanceof ConfigError && /storage\.maxSize: must be a size .* with driver: s3/.test(err.message),
  );
  await writeFile(file, `storage:\n  driver: s3\n  maxSize: 500GiB\n  s3:\n    endpoint: http://127.0.0.1:9\n    bucket: b\n`);
  assert.equal(loadConfig({ config: file }, {}).storage.maxSize?.bytes, 500 * 1024 ** 3);
});
