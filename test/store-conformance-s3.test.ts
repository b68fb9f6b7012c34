// The blob store conformance suite (test/support/conformance/blob-store.ts) against S3BlobStore on a real
// Ceph RADOS Gateway, each case on a fresh key prefix of one bucket; then what only the S3 driver has: the
// multipart paths (blobs bigger than one 8 MiB part), the multipart copy above CopyObject's limit, resumed
// and vanished reads (a relay cuts the gateway's connection mid-body), keys that are not blobs, the sweep
// of a killed writer's leftovers, and a gateway that is not there.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { HeadObjectCommand, ListMultipartUploadsCommand, ListObjectsV2Command, PutObjectCommand } from '@aws-sdk/client-s3';
import { RegistryError } from '../src/oci/errors.ts';
import { StoragePaths } from '../src/store/paths.ts';
import { DigestMismatchError, writeBlob } from '../src/store/roles.ts';
import { makeS3Client } from '../src/store/s3/client.ts';
import { S3Keys } from '../src/store/s3/keys.ts';
import { LocalBlobCache } from '../src/store/s3/local-cache.ts';
import { sweepIngest } from '../src/store/s3/open.ts';
import { S3BlobStore, type S3StoreOptions } from '../src/store/s3/s3-store.ts';
import type { S3Bucket } from '../src/store/s3/s3-writer.ts';
import { type Ceph, startCeph } from './support/ceph.ts';
import { blobStoreConformance, digestOf } from './support/conformance/blob-store.ts';
import { startRelay } from './support/relay.ts';
import { DEAD_ENDPOINT } from './support/safety.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';

let ceph: Ceph;
before(async () => {
  ceph = await startCeph({ port: 31810, sizeGb: 2 });
});
after(async () => {
  await ceph?.stop();
});

function bucketAt(endpoint: string): S3Bucket {
  const client = makeS3Client({ endpoint, region: 'us-east-1', bucket: ceph.bucket, prefix: '', accessKeyId: ceph.accessKeyId, secretAccessKey: ceph.secretAccessKey, forcePathStyle: true });
  return { client, bucket: ceph.bucket, endpoint };
}

/** Every key and every multipart upload under `prefix`: what a failed write must not add to. */
async function bucketResidue(s3: S3Bucket, prefix: string): Promise<string[]> {
  const objects = await s3.client.send(new ListObjectsV2Command({ Bucket: s3.bucket, Prefix: prefix }));
  const uploads = await s3.client.send(new ListMultipartUploadsCommand({ Bucket: s3.bucket, Prefix: prefix }));
  return [...(objects.Contents ?? []).map((o) => `object ${o.Key}`), ...(uploads.Uploads ?? []).map((u) => `upload ${u.Key}`)].sort();
}

async function filesUnder(root: string): Promise<string[]> {
  const entries = await readdir(root, { recursive: true, withFileTypes: true });
  return entries.filter((e) => e.isFile()).map((e) => `file ${path.relative(root, path.join(e.parentPath, e.name))}`);
}

/** A fresh store on its own prefix, its local working directory in a temp dir (and its local cache, when asked for, in there too). */
async function freshStore(endpoint = ceph.endpoint, opts: S3StoreOptions & { localCacheSize?: number } = {}) {
  const dir = await makeTempDir('conformance-s3');
  const paths = new StoragePaths(dir);
  if (opts.localCacheSize) opts = { ...opts, cache: new LocalBlobCache(path.join(dir, 'local-cache'), opts.localCacheSize, opts.verifyReads ?? false) };
  const s3 = bucketAt(endpoint);
  const prefix = `t-${randomBytes(6).toString('hex')}/`;
  const store = new S3BlobStore(s3, new S3Keys(prefix, randomBytes(8).toString('hex')), paths, opts);
  await store.init();
  return {
    store,
    s3,
    prefix,
    cache: opts.cache,
    paths,
    residue: async () => [...(await bucketResidue(bucketAt(ceph.endpoint), prefix)), ...(await filesUnder(dir))].sort(),
    // Fills hand commitFile their files from the local ingest/ (the working directory), as here.
    scratch: paths.ingest,
    cleanup: async () => {
      store.close();
      await removeTempDir(dir);
    },
  };
}

blobStoreConformance('S3BlobStore on Ceph RGW', () => freshStore());
blobStoreConformance('S3BlobStore on Ceph RGW with a local cache', () => freshStore(ceph.endpoint, { localCacheSize: 64 * 1024 * 1024, verifyReads: true }));

async function collect(stream: AsyncIterable<unknown>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

describe('S3BlobStore: what only the S3 driver has', () => {
  const MiB = 1024 * 1024;

  test('a blob of several 8 MiB parts: multipart upload to ingest/, verified, copied into place, ingest/ empty after', async () => {
    const under = await freshStore();
    try {
      const bytes = randomBytes(21 * MiB + 12_345);
      const d = digestOf(bytes);
      const w = await under.store.begin(d);
      for (let at = 0; at < bytes.length; at += 1_000_003) await w.write(bytes.subarray(at, at + 1_000_003));
      assert.deepEqual(await w.commit(), { size: bytes.length });
      assert.deepEqual(await under.store.stat(d), { size: bytes.length });
      assert.ok((await collect(under.store.read(d))).equals(bytes));
      const range = await collect(under.store.read(d, 9 * MiB - 5, 17 * MiB + 3));
      assert.ok(range.equals(bytes.subarray(9 * MiB - 5, 17 * MiB + 4)), 'a range across parts');
      assert.deepEqual(await bucketResidue(under.s3, under.prefix), [`object ${under.store.keys.blob(d)}`], 'only the blob: no ingest object, no open upload');
    } finally {
      await under.cleanup();
    }
  });

  test('multipart: wrong bytes are refused before the upload completes, an abort mid-upload leaves nothing', async () => {
    const under = await freshStore();
    try {
      const bytes = randomBytes(18 * MiB);
      const d = digestOf(Buffer.from('not these bytes'));
      await assert.rejects(writeBlob(under.store, d, [bytes.subarray(0, 9 * MiB), bytes.subarray(9 * MiB)]), DigestMismatchError);
      assert.deepEqual(await under.residue(), []);
      const w = await under.store.begin(digestOf(bytes));
      await w.write(bytes.subarray(0, 17 * MiB)); // two parts sent (one maybe still in flight)
      await w.abort();
      assert.deepEqual(await under.residue(), []);
    } finally {
      await under.cleanup();
    }
  });

  test('commitFile of a 20 MiB file: uploaded, re-hashed on the way (a file changed since it was hashed is refused)', async () => {
    const under = await freshStore();
    try {
      const bytes = randomBytes(20 * MiB);
      const d = digestOf(bytes);
      const file = path.join(under.scratch, 'fill.data');
      // The caller's hash says d, but the file's bytes changed after it was taken.
      const changed = Buffer.from(bytes);
      changed.writeUInt8(changed.readUInt8(15 * MiB) ^ 0xff, 15 * MiB);
      await writeFile(file, changed);
      await assert.rejects(under.store.commitFile(d, file, { digest: d, size: bytes.length }), DigestMismatchError);
      assert.deepEqual(await bucketResidue(under.s3, under.prefix), [], 'nothing in the bucket');
      assert.deepEqual(await filesUnder(under.paths.root), ['file ingest/fill.data'], 'the refused file stays, the caller removes it');
      await writeFile(file, bytes);
      await under.store.commitFile(d, file, { digest: d, size: bytes.length });
      assert.deepEqual(await filesUnder(under.paths.root), [], 'the committed file is taken away, as a rename would');
      assert.equal(digestOf(await collect(under.store.read(d))), d);
    } finally {
      await under.cleanup();
    }
  });

  test("commitFile of a blob the bucket holds already: no upload (per the gateway's log), the file is gone or becomes the local copy; a wrong-size object is replaced", async () => {
    const under = await freshStore(ceph.endpoint, { localCacheSize: 64 * MiB, verifyReads: true });
    // What reached the gateway under this store's prefix since `from`: its writes (PUT, POST), by key.
    const writesSince = async (from: number) =>
      (await ceph.requests())
        .slice(from)
        .filter((r) => r.path.startsWith(`/${ceph.bucket}/${under.prefix}`) && (r.method === 'PUT' || r.method === 'POST'))
        .map((r) => `${r.method} ${r.path.split('?')[0]!.slice(ceph.bucket.length + 2 + under.prefix.length)}${r.path.includes('?uploads') ? '?uploads' : ''}`);
    try {
      const bytes = randomBytes(9 * MiB + 1);
      const d = digestOf(bytes);
      const file = path.join(under.scratch, 'fill.data');
      let mark = (await ceph.requests()).length;
      await writeFile(file, bytes);
      await under.store.commitFile(d, file, { digest: d, size: bytes.length });
      const first = await writesSince(mark);
      assert.ok(
        first.some((w) => w.endsWith('?uploads')) && first.includes(`PUT ${under.store.keys.blob(d).slice(under.prefix.length)}`),
        `the first commit uploads and copies into place: ${first.join(', ')}`,
      );
      const blobKeyed = await under.s3.client.send(new HeadObjectCommand({ Bucket: under.s3.bucket, Key: under.store.keys.blob(d) }));

      // Another replica's fill of the same blob commits (its own store on the same prefix, its own working directory).
      const other = new S3BlobStore(bucketAt(ceph.endpoint), new S3Keys(under.prefix, randomBytes(8).toString('hex')), under.paths, {
        cache: new LocalBlobCache(path.join(under.paths.root, 'other-cache'), 64 * MiB, true),
      });
      await other.init();
      mark = (await ceph.requests()).length;
      await writeFile(file, bytes);
      await other.commitFile(d, file, { digest: d, size: bytes.length });
      assert.deepEqual(await writesSince(mark), [], 'nothing written to the bucket');
      const after = await under.s3.client.send(new HeadObjectCommand({ Bucket: under.s3.bucket, Key: under.store.keys.blob(d) }));
      assert.equal(after.ETag, blobKeyed.ETag);
      assert.equal(after.LastModified?.getTime(), blobKeyed.LastModified?.getTime());
      assert.ok(!(await filesUnder(under.paths.root)).includes('file ingest/fill.data'), 'the ingest file is gone');
      // …into the local cache, as after an upload: served from there even with the bucket's copy gone.
      assert.ok((await filesUnder(under.paths.root)).includes(`file other-cache/blobs/sha256/${d.slice(7, 9)}/${d.slice(7)}`), 'it became the local copy');
      other.close();

      // Still refused when the caller's claim does not hold (the file is not the size that hashed to d): the file stays.
      await writeFile(file, bytes.subarray(1));
      await assert.rejects(under.store.commitFile(d, file, { digest: d, size: bytes.length }), DigestMismatchError);
      assert.ok((await filesUnder(under.paths.root)).includes('file ingest/fill.data'));

      // An object of another size under the blob's key is not this blob: the commit uploads over it.
      await under.s3.client.send(new PutObjectCommand({ Bucket: under.s3.bucket, Key: under.store.keys.blob(d), Body: Buffer.from('not it') }));
      await writeFile(file, bytes);
      mark = (await ceph.requests()).length;
      await under.store.commitFile(d, file, { digest: d, size: bytes.length });
      assert.ok(
        (await writesSince(mark)).some((w) => w.endsWith('?uploads')),
        'uploaded again',
      );
      await under.cache?.forget(d);
      assert.equal(digestOf(await collect(under.store.read(d))), d);
    } finally {
      await under.cleanup();
    }
  });

  test('above the CopyObject limit the copy into place is a multipart copy (UploadPartCopy); quarantine uses it too', async () => {
    const under = await freshStore(ceph.endpoint, { copyLimits: { single: 6 * MiB, part: 5 * MiB } });
    try {
      const bytes = randomBytes(12 * MiB + 7);
      const d = digestOf(bytes);
      await writeBlob(under.store, d, [bytes]);
      assert.equal(digestOf(await collect(under.store.read(d))), d);
      const where = await under.store.quarantine(d);
      assert.ok(where?.startsWith(`${under.prefix}quarantine/`), String(where));
      assert.equal(await under.store.stat(d), undefined);
      assert.deepEqual(await bucketResidue(under.s3, under.prefix), [`object ${where}`]);
    } finally {
      await under.cleanup();
    }
  });

  test('list skips keys under blobs/ that are not blobs; stat of a misnamed key is not a blob', async () => {
    const under = await freshStore();
    try {
      const good = randomBytes(100);
      await under.store.putBytes(digestOf(good), good);
      const hex = digestOf(good).slice(7);
      for (const k of [`blobs/sha256/zz/${hex}`, `blobs/sha256/${hex.slice(0, 2)}/${hex}.tmp`, 'blobs/sha256/readme', `blobs/sha512/${hex.slice(0, 2)}/${hex}`, `blobs/sha256/00/${hex}`]) {
        await under.s3.client.send(new PutObjectCommand({ Bucket: under.s3.bucket, Key: `${under.prefix}${k}`, Body: Buffer.from('x') }));
      }
      const listed = [];
      for await (const b of under.store.list()) listed.push(b);
      assert.deepEqual(
        listed.map((b) => ({ digest: b.digest, size: b.size })),
        [{ digest: digestOf(good), size: 100 }],
      );
      // LastModified, which gc's --min-age needs for objects the index does not know yet.
      assert.ok(Math.abs(Date.now() - listed[0]!.modifiedAt!) < 10 * 60_000, `modifiedAt ${listed[0]!.modifiedAt}`);
    } finally {
      await under.cleanup();
    }
  });

  test('a read whose connection is cut mid-body resumes at that byte; if the blob vanished meanwhile the stream errors', async () => {
    const relay = await startRelay({ target: { host: '127.0.0.1', port: ceph.port } });
    const under = await freshStore();
    // Readers through the relay, each with its own client, so the planned connection is the GET's.
    const viaRelay = () => new S3BlobStore(bucketAt(relay.url()), under.store.keys, under.paths);
    try {
      const bytes = randomBytes(6 * MiB);
      const d = digestOf(bytes);
      await under.store.putBytes(d, bytes);
      relay.setPlan({ connections: [{ cutAfterBytes: 2 * MiB }] });
      const a = viaRelay();
      assert.ok((await collect(a.read(d))).equals(bytes), 'resumed: every byte, in order');
      assert.equal(relay.connections, 2, 'it did reconnect, once');
      a.close();
      // Cut every time, but each time after more bytes: a read that keeps moving keeps resuming.
      relay.setPlan({ connections: [1, 2, 3, 4, 5].map(() => ({ cutAfterBytes: 1 * MiB })) });
      const many = viaRelay();
      const before = relay.connections;
      assert.ok((await collect(many.read(d))).equals(bytes), 'five cuts, every byte');
      assert.equal(relay.connections - before, 6, 'five cut connections and the one that finished');
      many.close();
      // Cut again, and remove the object before the resume: an error, never a short body that ends cleanly.
      relay.setPlan({ connections: [{ cutAfterBytes: 2 * MiB }] });
      const b = viaRelay();
      let seen = 0;
      await assert.rejects(
        (async () => {
          for await (const c of b.read(d)) {
            if (seen < 512 * 1024 && seen + (c as Buffer).length >= 512 * 1024) await under.store.remove(d);
            seen += (c as Buffer).length;
          }
        })(),
        /vanished/,
      );
      assert.ok(seen >= 512 * 1024 && seen < bytes.length, `${seen} bytes before the error`);
      b.close();
    } finally {
      await relay.close();
      await under.cleanup();
    }
  });

  test("the sweep clears this replica's ingest leftovers (a killed writer's open upload and object), not another's", async () => {
    const under = await freshStore();
    try {
      const other = new S3Keys(under.prefix, 'ffffffffffffffff');
      const d = digestOf(Buffer.from('x'));
      const w = await under.store.begin(d);
      await w.write(randomBytes(9 * MiB)); // an upload is open, as if the process died here
      await under.s3.client.send(new PutObjectCommand({ Bucket: under.s3.bucket, Key: under.store.keys.ingestFor(d), Body: Buffer.from('left') }));
      const othersKey = other.ingestFor(d);
      await under.s3.client.send(new PutObjectCommand({ Bucket: under.s3.bucket, Key: othersKey, Body: Buffer.from('busy') }));
      assert.equal(await sweepIngest(under.s3, under.store.keys), 2);
      assert.deepEqual(await bucketResidue(under.s3, under.prefix), [`object ${othersKey}`]);
      assert.equal(await sweepIngest(under.s3, under.store.keys, Date.now() + 25 * 3600_000), 1, 'a day later the other replica is gone too');
    } finally {
      await under.cleanup();
    }
  });

  test('local cache: whole reads copy blobs in, served from local disk after; least recently used evicted past maxSize', async () => {
    const under = await freshStore(ceph.endpoint, { localCacheSize: 1000, verifyReads: true });
    const cache = under.cache!;
    const local = (b: Buffer) => `file local-cache/blobs/sha256/${digestOf(b).slice(7, 9)}/${digestOf(b).slice(7)}`;
    try {
      const blobs = Array.from({ length: 4 }, () => randomBytes(300));
      // Written through the store: in the bucket, and in the local cache (1000 bytes: three fit).
      for (const b of blobs.slice(0, 3)) await under.store.putBytes(digestOf(b), b);
      assert.equal(cache.size, 900);
      // Gone from the bucket behind the store's back: still served, from local disk, whole and in ranges.
      await under.s3.client.send(new PutObjectCommand({ Bucket: under.s3.bucket, Key: under.store.keys.blob(digestOf(blobs[0]!)), Body: Buffer.from('not it') }));
      assert.ok((await collect(under.store.read(digestOf(blobs[0]!)))).equals(blobs[0]!), 'the local copy');
      assert.ok((await collect(under.store.read(digestOf(blobs[0]!), 10, 19))).equals(blobs[0]!.subarray(10, 20)));
      // blobs[0] was just used, so the fourth pushes out blobs[1], the least recently used.
      await under.store.putBytes(digestOf(blobs[3]!), blobs[3]!);
      const files = (await under.residue()).filter((f) => f.startsWith('file local-cache/blobs/'));
      assert.deepEqual(files, [local(blobs[0]!), local(blobs[2]!), local(blobs[3]!)].sort());
      // A whole send from the bucket copies the blob back in (verified: the bytes hash to the name).
      const chunks: Buffer[] = [];
      await under.store.send(digestOf(blobs[1]!), 0, 299, async (c) => void chunks.push(Buffer.from(c)));
      assert.ok(Buffer.concat(chunks).equals(blobs[1]!));
      assert.ok((await under.residue()).includes(local(blobs[1]!)));
      // remove takes the local copy too.
      await under.store.remove(digestOf(blobs[1]!));
      assert.ok(!(await under.residue()).includes(local(blobs[1]!)));
      assert.equal(await under.store.stat(digestOf(blobs[1]!)), undefined);
    } finally {
      await under.cleanup();
    }
  });

  test('local cache: bytes in the bucket that do not hash to their name are never copied in', async () => {
    // verifyReads off: the send itself does not check, so only the local commit stands in the way.
    const under = await freshStore(ceph.endpoint, { localCacheSize: 10_000, verifyReads: false });
    try {
      const good = randomBytes(500);
      const d = digestOf(good);
      await under.s3.client.send(new PutObjectCommand({ Bucket: under.s3.bucket, Key: under.store.keys.blob(d), Body: randomBytes(500) }));
      await under.store.send(d, 0, 499, async () => undefined);
      assert.deepEqual(
        (await under.residue()).filter((f) => f.startsWith('file ')),
        [],
        'nothing local: not in the cache, no temp file left',
      );
    } finally {
      await under.cleanup();
    }
  });

  test('a gateway that is not there: stat, reads and writes fail fast as UNAVAILABLE naming the endpoint', async () => {
    const under = await freshStore(`http://${DEAD_ENDPOINT}`);
    try {
      const d = digestOf(Buffer.from('anything'));
      const t0 = Date.now();
      const unavailable = (err: unknown) => err instanceof RegistryError && err.code === 'UNAVAILABLE' && err.message.includes(DEAD_ENDPOINT);
      await assert.rejects(under.store.stat(d), unavailable);
      await assert.rejects(under.store.readBytes(d), unavailable);
      await assert.rejects(collect(under.store.read(d)), unavailable);
      await assert.rejects(under.store.putBytes(d, Buffer.from('anything')), unavailable);
      assert.ok(Date.now() - t0 < 10_000, `took ${Date.now() - t0} ms`);
    } finally {
      await under.cleanup();
    }
  });
});
