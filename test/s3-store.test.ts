// berth with storage.driver s3 on a real Ceph RADOS Gateway, in front of a real docker-registry (issue #12):
// skopeo pulls byte for byte with every blob in the bucket and none on local disk; a Range read of a cached
// blob is a ranged GET (a relay counts what crossed); a 100 MB blob streams with bounded memory; a process
// killed half-way through its upload leaves an open upload under ingest/ that its restart clears; with
// radosgw stopped misses answer 503 fast and berth recovers once it is back; an unreachable bucket at start-up
// exits 2 naming S3 and the endpoint; a restart on the same bucket serves the image offline. Also measures
// cached throughput of the S3 driver against the filesystem driver (printed, not asserted).
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { HeadObjectCommand, ListMultipartUploadsCommand, ListObjectsV2Command } from '@aws-sdk/client-s3';
import { stringify } from 'yaml';
import { makeS3Client } from '../src/store/s3/client.ts';
import { type InProcessBerth, startBerth } from './support/berth.ts';
import { type BerthChild, startBerthChild } from './support/berth-child.ts';
import { type Ceph, startCeph } from './support/ceph.ts';
import { hashedGet, request } from './support/http.ts';
import { buildImage, digestOfFile, type Image, pushImage, type Seeded, seedStandard } from './support/images.ts';
import { waitUntil } from './support/links.ts';
import { startRelay } from './support/relay.ts';
import { forgetPrefixClaim, isPrefixClaim } from './support/s3-claim.ts';
import { DEAD_ENDPOINT } from './support/safety.ts';
import { skopeoCopy } from './support/skopeo.ts';
import { exists } from './support/storage.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const MiB = 1024 * 1024;
const BIG_BYTES = 100 * MiB;
const ROOT = path.resolve(import.meta.dirname, '..');
const run = promisify(execFile);

let ceph: Ceph;
let up: Upstream;
let seeded: Seeded;
/** Pushed upstream only, never pulled before the gateway goes down: a miss. */
let cold: Image;
let seedDir: string;
let work: string;
let aStorage: string;
let a: InProcessBerth;

const s3Of = (prefix: string, endpoint = ceph.endpoint) => ({ endpoint, bucket: ceph.bucket, prefix, accessKeyId: ceph.accessKeyId, secretAccessKey: ceph.secretAccessKey });
const upstreams = () => [{ host: 'docker.io', url: up.url }];
const bucket = () => makeS3Client({ ...s3Of(''), region: 'us-east-1', forcePathStyle: true });

/** The claim of `prefix`, deleted: the next instance there, with its own SQLite index, may start. */
async function forgetClaim(prefix: string): Promise<void> {
  const client = bucket();
  try {
    await forgetPrefixClaim(client, ceph.bucket, prefix);
  } finally {
    client.destroy();
  }
}

/** Keys and open multipart uploads under `prefix` (but its claim, src/store/prefix-claim.ts). */
async function inBucket(prefix: string): Promise<{ objects: string[]; uploads: string[] }> {
  const client = bucket();
  try {
    const objects = await client.send(new ListObjectsV2Command({ Bucket: ceph.bucket, Prefix: prefix }));
    const uploads = await client.send(new ListMultipartUploadsCommand({ Bucket: ceph.bucket, Prefix: prefix }));
    return {
      objects: (objects.Contents ?? [])
        .map((o) => o.Key!)
        .filter((k) => !isPrefixClaim(k))
        .sort(),
      uploads: (uploads.Uploads ?? []).map((u) => u.Key!).sort(),
    };
  } finally {
    client.destroy();
  }
}

async function headStatus(key: string): Promise<number> {
  const client = bucket();
  try {
    await client.send(new HeadObjectCommand({ Bucket: ceph.bucket, Key: key }));
    return 200;
  } catch (err) {
    return (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode ?? 0;
  } finally {
    client.destroy();
  }
}

const blobKey = (prefix: string, digest: string) => `${prefix}blobs/sha256/${digest.slice(7, 9)}/${digest.slice(7)}`;

/** Files under a local directory (none when it does not exist). */
async function filesUnder(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true }).catch(() => []);
  return entries.filter((e) => e.isFile()).map((e) => path.join(e.parentPath, e.name));
}

/** A skopeo `dir:` pull has the pushed manifest and every blob, each hashing to its name. */
async function assertPulled(dir: string, image: Image): Promise<void> {
  assert.ok((await readFile(path.join(dir, 'manifest.json'))).equals(image.manifest), 'manifest bytes');
  for (const b of [image.config, ...image.layers]) assert.equal(await digestOfFile(path.join(dir, b.digest.slice(7))), b.digest);
}

/** Peak RSS of a child while `body` runs, sampled every 50 ms. */
async function peakRss(child: BerthChild, body: () => Promise<void>): Promise<number> {
  let peak = child.rss();
  const timer = setInterval(() => {
    try {
      peak = Math.max(peak, child.rss());
    } catch {
      // gone: the body's assertions say why
    }
  }, 50);
  try {
    await body();
  } finally {
    clearInterval(timer);
  }
  return Math.max(peak, child.rss());
}

describe('berth on S3 storage (Ceph RGW)', () => {
  before(async () => {
    seedDir = await makeTempDir('seed-s3');
    work = await makeTempDir('s3-store');
    aStorage = path.join(work, 'a-storage');
    await Promise.all([
      startCeph({ port: 31830, sizeGb: 4 }).then((c) => (ceph = c)),
      (async () => {
        up = await startUpstream();
        seeded = await seedStandard(up, seedDir, { bigBytes: BIG_BYTES });
        cold = await buildImage({ format: 'oci', layers: [{ files: { 'cold.bin': randomBytes(300_000) } }] });
        await pushImage(up, 'lab/cold', '1', cold);
      })(),
    ]);
    a = await startBerth({ upstreams: upstreams(), storage: aStorage, s3: s3Of('a/') });
  });

  after(async () => {
    await a?.stop();
    await up?.stop();
    await ceph?.stop();
    await Promise.all([removeTempDir(seedDir), removeTempDir(work)]);
  });

  test('skopeo pulls through berth byte for byte; every blob is in the bucket, none on local disk, nothing left under ingest/', async () => {
    const dir = path.join(work, 'pull-1');
    await skopeoCopy(`docker://${a.host}/lab/small:1`, `dir:${dir}`);
    await assertPulled(dir, seeded.small);
    const big = seeded.big!.layers[0]!;
    const got = await hashedGet(`${a.url}/v2/lab/big/blobs/${big.digest}`);
    assert.equal(got.digest, big.digest);
    const { objects, uploads } = await inBucket('a/');
    for (const d of [seeded.small.manifestDigest, seeded.small.config.digest, ...seeded.small.layers.map((l) => l.digest), big.digest]) {
      assert.ok(objects.includes(blobKey('a/', d)), `${d} is in the bucket`);
    }
    assert.deepEqual(
      objects.filter((k) => !k.startsWith('a/blobs/')),
      [],
      'only blobs/: no ingest object, no quarantine',
    );
    assert.deepEqual(uploads, [], 'no multipart upload left open');
    assert.deepEqual(await filesUnder(path.join(aStorage, 'blobs')), [], 'no blob on local disk');
    assert.deepEqual(await filesUnder(path.join(aStorage, 'ingest')), [], 'the fill files went to the bucket');
  });

  test('a Range read of a cached blob is a ranged GET to S3: a 1000-byte range of the 100 MB layer moves kilobytes', async () => {
    const big = seeded.big!.layers[0]!;
    const relay = await startRelay({ target: { host: '127.0.0.1', port: ceph.port } });
    // A second berth on the same bucket, reaching S3 only through the relay, offline: nothing else to ask.
    // Its own SQLite index on a's prefix: the prefix's claim is a's, forgotten for this reader.
    await forgetClaim('a/');
    const b = await startBerth({ upstreams: upstreams(), offline: true, s3: s3Of('a/', relay.url()) });
    try {
      const start = 50_000_000;
      const res = await request(b.url, `/v2/lab/big/blobs/${big.digest}`, { headers: { range: `bytes=${start}-${start + 999}` } });
      assert.equal(res.status, 206);
      assert.equal(res.headers['content-range'], `bytes ${start}-${start + 999}/${big.size}`);
      const want = Buffer.alloc(1000);
      const fh = await import('node:fs/promises').then((f) => f.open(big.path!, 'r'));
      await fh.read(want, 0, 1000, start);
      await fh.close();
      assert.ok(res.body.equals(want), 'the bytes of that range');
      assert.ok(relay.bytesDown < 64 * 1024, `${relay.bytesDown} bytes came from S3 for a 1000-byte range`);
    } finally {
      await b.stop();
      await relay.close();
    }
  });

  test('a 100 MB blob streams cold and cached with memory bounded far below its size (and cached throughput, S3 vs filesystem)', async (t) => {
    const big = seeded.big!.layers[0]!;
    const c = await startBerthChild({ upstreams: upstreams(), s3: s3Of('c/') });
    const fs = await startBerthChild({ upstreams: upstreams() });
    try {
      // Start-up and first-request allocations are not growth: warm with the small image first.
      for (const l of seeded.small.layers) assert.equal((await hashedGet(`${c.url}/v2/lab/small/blobs/${l.digest}`)).digest, l.digest);
      const baseline = c.rss();
      const peakCold = await peakRss(c, async () => {
        assert.equal((await hashedGet(`${c.url}/v2/lab/big/blobs/${big.digest}`)).digest, big.digest);
      });
      assert.equal(await headStatus(blobKey('c/', big.digest)), 200, 'committed to the bucket');
      const timed = async (url: string) => {
        let best = Number.POSITIVE_INFINITY;
        for (let i = 0; i < 3; i++) {
          const g = await hashedGet(url);
          assert.equal(g.digest, big.digest);
          best = Math.min(best, g.doneAt - g.headersAt);
        }
        return BIG_BYTES / MiB / (best / 1000);
      };
      let s3Rate = 0;
      const peakCached = await peakRss(c, async () => {
        s3Rate = await timed(`${c.url}/v2/lab/big/blobs/${big.digest}`);
      });
      const fsBaseline = fs.rss();
      const fsPeakCold = await peakRss(fs, async () => {
        assert.equal((await hashedGet(`${fs.url}/v2/lab/big/blobs/${big.digest}`)).digest, big.digest);
      });
      const fsRate = await timed(`${fs.url}/v2/lab/big/blobs/${big.digest}`);
      const growth = (p: number) => (p - baseline) / MiB;
      t.diagnostic(
        `RSS growth: cold fill ${growth(peakCold).toFixed(0)} MiB (filesystem driver: ${((fsPeakCold - fsBaseline) / MiB).toFixed(0)} MiB), cached reads ${growth(peakCached).toFixed(0)} MiB (blob ${BIG_BYTES / MiB} MiB)`,
      );
      t.diagnostic(`cached GET of the 100 MiB blob, best of 3: s3 driver ${s3Rate.toFixed(0)} MiB/s, filesystem driver ${fsRate.toFixed(0)} MiB/s`);
      // A driver that held the blob (or a part per MiB of it) would grow by its 100 MiB at least; a fill's
      // buffers plus the upload's two 8 MiB parts stay well under that.
      assert.ok(growth(peakCold) < 80, `cold: RSS grew ${growth(peakCold).toFixed(0)} MiB`);
      assert.ok(growth(peakCached) < 80, `cached: RSS grew ${growth(peakCached).toFixed(0)} MiB`);
    } finally {
      await c.stop();
      await fs.stop();
    }
  });

  test('storage.s3.localCache: a whole read copies the blob to local disk; it is served from there, also with radosgw stopped (a miss is a 503)', async (t) => {
    const big = seeded.big!.layers[0]!;
    const cacheDir = path.join(work, 'e-local-cache');
    // Prefix c/: the previous test left the 100 MB layer and the small image's layers there.
    await forgetClaim('c/');
    const e = await startBerthChild({ upstreams: upstreams(), s3: { ...s3Of('c/'), localCache: { path: cacheDir, maxSize: '300MiB' } } });
    try {
      assert.equal((await hashedGet(`${e.url}/v2/lab/big/blobs/${big.digest}`)).digest, big.digest, 'from the bucket');
      const localCopy = path.join(cacheDir, 'blobs', 'sha256', big.digest.slice(7, 9), big.digest.slice(7));
      // The copy is committed (synced, renamed) just after the client's last byte went out.
      await waitUntil('the local copy', () => exists(localCopy), 30_000);
      assert.equal(await digestOfFile(localCopy), big.digest, 'copied in, verified');
      let best = Number.POSITIVE_INFINITY;
      for (let i = 0; i < 3; i++) {
        const g = await hashedGet(`${e.url}/v2/lab/big/blobs/${big.digest}`);
        assert.equal(g.digest, big.digest);
        best = Math.min(best, g.doneAt - g.headersAt);
      }
      t.diagnostic(`cached GET of the 100 MiB blob, best of 3: s3 driver with the local cache ${(BIG_BYTES / MiB / (best / 1000)).toFixed(0)} MiB/s`);
      await ceph.stopGateway();
      try {
        assert.equal((await hashedGet(`${e.url}/v2/lab/big/blobs/${big.digest}`)).digest, big.digest, 'from local disk, radosgw down');
        const notLocal = seeded.small.layers[2]!;
        const res = await request(e.url, `/v2/lab/small/blobs/${notLocal.digest}`, { timeoutMs: 30_000 });
        assert.equal(res.status, 503, 'in the bucket only: unavailable while radosgw is down');
      } finally {
        await ceph.start();
      }
    } finally {
      await e.stop();
    }
  });

  test('killed half-way through uploading a fill: an open upload under ingest/, never a blob; the restart clears it and completes the blob', async () => {
    const big = seeded.big!.layers[0]!;
    const d = await startBerthChild({ upstreams: upstreams(), s3: s3Of('d/') }, { env: { BERTH_FAILPOINTS: 'store.s3.mid-upload' } });
    try {
      await hashedGet(`${d.url}/v2/lab/big/blobs/${big.digest}`).catch(() => undefined);
      assert.equal(await d.process.exited, null, 'berth killed itself at the failpoint');
      const left = await inBucket('d/');
      assert.ok(left.uploads.length >= 1 && left.uploads.every((k) => k.startsWith('d/ingest/')), `an open upload under ingest/: ${JSON.stringify(left)}`);
      assert.deepEqual(
        left.objects.filter((k) => k.startsWith('d/blobs/')),
        [],
        'nothing under blobs/',
      );
      await d.restart({ env: {} });
      assert.deepEqual(await inBucket('d/'), { objects: [], uploads: [] }, 'the restart cleared its own leftovers');
      assert.equal((await hashedGet(`${d.url}/v2/lab/big/blobs/${big.digest}`)).digest, big.digest);
      const after = await inBucket('d/');
      assert.deepEqual(after, { objects: [blobKey('d/', big.digest)], uploads: [] });
    } finally {
      await d.stop();
    }
  });

  test('radosgw stopped: a miss and a cached blob answer 503 fast without asking the upstream; berth recovers once it is back', async () => {
    const layer = cold.layers[0]!;
    const cached = seeded.small.layers[1]!;
    await ceph.stopGateway();
    try {
      const mark = up.logLineCount();
      for (const [name, digest] of [
        ['lab/cold', layer.digest],
        ['lab/small', cached.digest],
      ] as const) {
        const t0 = Date.now();
        const res = await request(a.url, `/v2/${name}/blobs/${digest}`, { timeoutMs: 30_000 });
        const ms = Date.now() - t0;
        assert.equal(res.status, 503, `${name}: ${res.status} ${res.body.toString()}`);
        const body = JSON.parse(res.body.toString()) as { errors: Array<{ code: string; message: string }> };
        assert.equal(body.errors[0]?.code, 'UNAVAILABLE');
        assert.match(body.errors[0]!.message, new RegExp(`S3 store at ${ceph.endpoint.replace(/[.]/g, '\\.')}`));
        assert.ok(ms < 5000, `${name}: answered in ${ms} ms`);
      }
      const seen = await up.accessLogSince(mark);
      assert.deepEqual(
        seen.filter((e) => e.path.includes('/blobs/')),
        [],
        'no blob request reached the upstream',
      );
    } finally {
      await ceph.start();
    }
    assert.equal((await hashedGet(`${a.url}/v2/lab/cold/blobs/${layer.digest}`)).digest, layer.digest, 'recovered without a restart');
    assert.equal((await hashedGet(`${a.url}/v2/lab/small/blobs/${cached.digest}`)).digest, cached.digest);
  });

  test('an unreachable or missing bucket at start-up: exit code 2 and a message naming S3, the bucket and the endpoint', async () => {
    const cases = [
      { s3: s3Of('x/', `http://${DEAD_ENDPOINT}`), want: new RegExp(`S3 bucket "${ceph.bucket}" at http://${DEAD_ENDPOINT.replace(/[.]/g, '\\.')}`) },
      { s3: { ...s3Of('x/'), bucket: 'no-such-bucket' }, want: /S3 bucket "no-such-bucket" at .*no such bucket/ },
      { s3: { ...s3Of('x/'), secretAccessKey: 'wrong' }, want: /access denied|SignatureDoesNotMatch|HTTP 403/ },
    ];
    for (const c of cases) {
      const file = path.join(work, `bad-${randomBytes(4).toString('hex')}.yaml`);
      await writeFile(file, stringify({ listen: '127.0.0.1:0', storage: { path: path.join(work, 'bad-storage'), driver: 's3', s3: c.s3 }, upstreams: upstreams() }));
      const t0 = Date.now();
      const r = await run(process.execPath, ['--import', 'tsx', path.join(ROOT, 'src/main.ts'), 'serve', '--config', file], { cwd: ROOT, timeout: 60_000 }).then(
        () => ({ code: 0, stderr: '' }),
        (err: { code?: number; stderr?: string }) => ({ code: err.code, stderr: err.stderr ?? '' }),
      );
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, c.want);
      assert.ok(Date.now() - t0 < 30_000);
    }
    // And driver: s3 without storage.s3 is a configuration error.
    const file = path.join(work, 'no-s3.yaml');
    await writeFile(file, stringify({ storage: { path: path.join(work, 'bad-storage'), driver: 's3' }, upstreams: upstreams() }));
    const r = await run(process.execPath, ['--import', 'tsx', path.join(ROOT, 'src/main.ts'), 'serve', '--config', file], { cwd: ROOT, timeout: 60_000 }).then(
      () => ({ code: 0, stderr: '' }),
      (err: { code?: number; stderr?: string }) => ({ code: err.code, stderr: err.stderr ?? '' }),
    );
    assert.equal(r.code, 2);
    assert.match(r.stderr, /storage\.s3.*required with driver: s3/);
  });

  test('a restart on the same storage directory and bucket serves the image offline, without a single upstream request', async () => {
    await a.stop();
    // The reader of the Range test claimed a/ after a (a restart of a on its own is tested in s3-prefix-claim).
    await forgetClaim('a/');
    a = await startBerth({ upstreams: upstreams(), storage: aStorage, offline: true, s3: s3Of('a/') });
    const mark = up.logLineCount();
    const dir = path.join(work, 'pull-offline');
    await skopeoCopy(`docker://${a.host}/lab/small:1`, `dir:${dir}`);
    await assertPulled(dir, seeded.small);
    assert.deepEqual(await up.accessLogSince(mark), []);
    assert.deepEqual(await filesUnder(path.join(aStorage, 'blobs')), [], 'served from the bucket: no blob on local disk');
    assert.equal(createHash('sha256').update(seeded.small.manifest).digest('hex'), seeded.small.manifestDigest.slice(7));
  });
});
