// What every blob store (src/store/roles.ts) must do, as distribution's storage driver testsuites: a
// test file calls blobStoreConformance() with a factory of fresh, empty stores, and each case runs on its
// own store. The filesystem store runs it in test/store-conformance.test.ts; an S3 store (issue #12)
// runs the same cases. Correctness only: memory and speed are measured elsewhere.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, test } from 'node:test';
import type { Digest } from '../../../src/oci/digest.ts';
import { RegistryError } from '../../../src/oci/errors.ts';
import { type BlobStorage, DigestMismatchError, writeBlob } from '../../../src/store/roles.ts';

export interface BlobStoreUnderTest {
  store: BlobStorage;
  /** Every file or object the store holds anywhere (committed or not): what a failed write must not add to. */
  residue(): Promise<string[]>;
  /** A local directory for files handed to commitFile (for the filesystem store: one on the same filesystem). */
  scratch: string;
  cleanup(): Promise<void>;
}

export const digestOf = (b: Buffer): Digest => `sha256:${createHash('sha256').update(b).digest('hex')}` as Digest;

async function collect(stream: AsyncIterable<unknown>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

/** Through the zero-garbage path: chunks are copied, since send may reuse its buffers once a write resolved. */
async function sent(store: BlobStorage, d: Digest, start: number, end: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  await store.send(d, start, end, async (c) => {
    chunks.push(Buffer.from(c));
  });
  return Buffer.concat(chunks);
}

async function listed(store: BlobStorage): Promise<Array<{ digest: Digest; size: number }>> {
  const out: Array<{ digest: Digest; size: number }> = [];
  // Digest and size are what every store lists; a store may add what it knows (S3: modifiedAt, for gc).
  for await (const b of store.list()) out.push({ digest: b.digest, size: b.size });
  return out;
}

export function blobStoreConformance(name: string, make: () => Promise<BlobStoreUnderTest>): void {
  describe(`blob store conformance: ${name}`, () => {
    let current: BlobStoreUnderTest | undefined;
    const fresh = async () => (current = await make());
    afterEach(async () => {
      await current?.cleanup();
      current = undefined;
    });

    test('a missing blob: stat is undefined, readBytes is undefined, list is empty, remove is fine', async () => {
      const { store } = await fresh();
      const d = digestOf(Buffer.from('never written'));
      assert.equal(await store.stat(d), undefined);
      assert.equal(await store.readBytes(d), undefined);
      assert.deepEqual(await listed(store), []);
      await store.remove(d);
      assert.equal(store.busy(d), false);
    });

    test('write → commit → stat, read, readBytes and send give the bytes back exactly', async () => {
      const { store } = await fresh();
      const bytes = randomBytes(10_000);
      const d = digestOf(bytes);
      const w = await store.begin(d);
      assert.equal(w.digest, d);
      await w.write(bytes.subarray(0, 3));
      await w.write(bytes.subarray(3, 4000));
      await w.write(bytes.subarray(4000));
      assert.equal(w.written, bytes.length);
      assert.deepEqual(await w.commit(), { size: bytes.length });
      await w.abort(); // after a good commit: a no-op, the blob stays
      assert.deepEqual(await store.stat(d), { size: bytes.length });
      assert.ok((await collect(store.read(d))).equals(bytes), 'read');
      assert.ok((await store.readBytes(d))?.equals(bytes), 'readBytes');
      assert.ok((await sent(store, d, 0, bytes.length - 1)).equals(bytes), 'send');
      assert.deepEqual(await listed(store), [{ digest: d, size: bytes.length }]);
    });

    test('an empty blob commits and reads back empty', async () => {
      const { store } = await fresh();
      const empty = Buffer.alloc(0);
      const info = await writeBlob(store, digestOf(empty), [empty]);
      assert.deepEqual(info, { size: 0 });
      assert.deepEqual(await store.stat(digestOf(empty)), { size: 0 });
      assert.equal((await store.readBytes(digestOf(empty)))?.length, 0);
    });

    test('ranged reads at the edges: first byte, last byte, one byte inside, the whole', async () => {
      const { store } = await fresh();
      const bytes = randomBytes(4099);
      const d = digestOf(bytes);
      await writeBlob(store, d, [bytes]);
      const last = bytes.length - 1;
      for (const [start, end] of [
        [0, 0],
        [last, last],
        [1234, 1234],
        [0, last],
        [1, last - 1],
        [last - 10, last],
      ] as const) {
        const want = bytes.subarray(start, end + 1);
        assert.ok((await collect(store.read(d, start, end))).equals(want), `read ${start}-${end}`);
        assert.ok((await sent(store, d, start, end)).equals(want), `send ${start}-${end}`);
      }
    });

    test('a blob of many read chunks streams whole and in ranges across chunk boundaries', async () => {
      const { store } = await fresh();
      const bytes = randomBytes(5 * 256 * 1024 + 12_345);
      const d = digestOf(bytes);
      // Written in odd-sized pieces, as a network delivers them.
      const pieces: Buffer[] = [];
      for (let at = 0; at < bytes.length; at += 65_537) pieces.push(bytes.subarray(at, at + 65_537));
      await writeBlob(store, d, pieces);
      assert.equal(digestOf(await collect(store.read(d))), d, 'read whole');
      assert.equal(digestOf(await sent(store, d, 0, bytes.length - 1)), d, 'send whole');
      const [start, end] = [256 * 1024 - 7, 3 * 256 * 1024 + 9];
      assert.ok((await sent(store, d, start, end)).equals(bytes.subarray(start, end + 1)), 'send across chunks');
      assert.ok((await collect(store.read(d, start, end))).equals(bytes.subarray(start, end + 1)), 'read across chunks');
    });

    test('bytes that do not hash to the digest: commit fails with DigestMismatchError and leaves nothing', async () => {
      const under = await fresh();
      const { store } = under;
      const before = await under.residue();
      const d = digestOf(Buffer.from('what was announced'));
      const w = await store.begin(d);
      await w.write(Buffer.from('what arrived instead'));
      await assert.rejects(w.commit(), (err: unknown) => err instanceof DigestMismatchError && err.expected === d && err.actual === digestOf(Buffer.from('what arrived instead')));
      await w.abort();
      assert.equal(await store.stat(d), undefined);
      assert.deepEqual(await under.residue(), before, 'no file left behind');
      // writeBlob (the import path) fails the same way and leaves nothing either.
      await assert.rejects(writeBlob(store, d, [Buffer.from('x'), Buffer.from('y')]), DigestMismatchError);
      assert.deepEqual(await under.residue(), before, 'no file left behind by writeBlob');
    });

    test('putBytes refuses bytes of another digest as DIGEST_INVALID and leaves nothing; good bytes read back', async () => {
      const under = await fresh();
      const { store } = under;
      const before = await under.residue();
      const good = Buffer.from('{"schemaVersion":2}');
      await assert.rejects(store.putBytes(digestOf(good), Buffer.from('{"schemaVersion":3}')), (err: unknown) => err instanceof RegistryError && err.code === 'DIGEST_INVALID');
      assert.deepEqual(await under.residue(), before);
      await store.putBytes(digestOf(good), good);
      assert.ok((await store.readBytes(digestOf(good)))?.equals(good));
    });

    test('abort leaves nothing, after some bytes or none', async () => {
      const under = await fresh();
      const { store } = under;
      const before = await under.residue();
      const bytes = randomBytes(1000);
      const w = await store.begin(digestOf(bytes));
      await w.write(bytes.subarray(0, 500));
      await w.abort();
      await w.abort();
      await (await store.begin(digestOf(bytes))).abort();
      assert.equal(await store.stat(digestOf(bytes)), undefined);
      assert.deepEqual(await under.residue(), before);
      await assert.rejects(w.write(bytes.subarray(500)), 'a write after abort is refused');
    });

    test('a write that fails half-way (its body errors) leaves nothing', async () => {
      const under = await fresh();
      const { store } = under;
      const before = await under.residue();
      const bytes = randomBytes(3000);
      async function* broken() {
        yield bytes.subarray(0, 1000);
        throw new Error('the client went away');
      }
      await assert.rejects(writeBlob(store, digestOf(bytes), broken()), /went away/);
      assert.equal(await store.stat(digestOf(bytes)), undefined);
      assert.deepEqual(await under.residue(), before);
    });

    test('two concurrent writers of one digest, interleaved: both commit, one good blob', async () => {
      const under = await fresh();
      const { store } = under;
      const bytes = randomBytes(300_000);
      const d = digestOf(bytes);
      const [a, b] = await Promise.all([store.begin(d), store.begin(d)]);
      for (let at = 0; at < bytes.length; at += 50_000) {
        await Promise.all([a.write(bytes.subarray(at, at + 50_000)), b.write(bytes.subarray(at, at + 50_000))]);
      }
      const results = await Promise.all([a.commit(), b.commit()]);
      assert.deepEqual(results, [{ size: bytes.length }, { size: bytes.length }]);
      assert.deepEqual(await listed(store), [{ digest: d, size: bytes.length }]);
      assert.equal(digestOf(await collect(store.read(d))), d);
      // And one good and one bad writer of the same digest: the good blob stands.
      const [good, bad] = await Promise.all([store.begin(d), store.begin(d)]);
      await Promise.all([good.write(bytes), bad.write(randomBytes(10))]);
      const [g, x] = await Promise.allSettled([good.commit(), bad.commit()]);
      assert.equal(g.status, 'fulfilled');
      assert.equal(x.status, 'rejected');
      assert.equal(digestOf(await collect(store.read(d))), d);
    });

    test('commitFile takes a file the caller hashed, only when that hash is the digest and the size is the file', async () => {
      const under = await fresh();
      const { store, scratch } = under;
      const bytes = randomBytes(20_000);
      const d = digestOf(bytes);
      const file = path.join(scratch, 'ingest-like.data');
      await writeFile(file, bytes);
      const before = await under.residue();
      const other = digestOf(Buffer.from('other'));
      await assert.rejects(store.commitFile(d, file, { digest: other, size: bytes.length }), DigestMismatchError, 'another hash');
      await assert.rejects(store.commitFile(d, file, { digest: d, size: bytes.length - 1 }), DigestMismatchError, 'a file longer than what was hashed');
      assert.equal(await store.stat(d), undefined);
      assert.deepEqual(await under.residue(), before, 'a refused file stays where it was, nothing added');
      await store.commitFile(d, file, { digest: d, size: bytes.length });
      assert.deepEqual(await store.stat(d), { size: bytes.length });
      assert.ok((await collect(store.read(d))).equals(bytes));
    });

    test('remove: the blob is gone from stat, reads and list; other blobs stay', async () => {
      const { store } = await fresh();
      const a = randomBytes(100);
      const b = randomBytes(200);
      await writeBlob(store, digestOf(a), [a]);
      await writeBlob(store, digestOf(b), [b]);
      await store.remove(digestOf(a));
      assert.equal(await store.stat(digestOf(a)), undefined);
      assert.equal(await store.readBytes(digestOf(a)), undefined);
      assert.deepEqual(await listed(store), [{ digest: digestOf(b), size: 200 }]);
      await store.remove(digestOf(a));
    });

    test('list gives every committed blob once, in digest order, with its size', async () => {
      const { store } = await fresh();
      const blobs = Array.from({ length: 12 }, (_, i) => randomBytes(10 + i));
      for (const b of blobs) await writeBlob(store, digestOf(b), [b]);
      const want = blobs.map((b) => ({ digest: digestOf(b), size: b.length })).sort((x, y) => (x.digest < y.digest ? -1 : 1));
      assert.deepEqual(await listed(store), want);
    });

    test('busy while a read stream is open, not after it closed', async () => {
      const { store } = await fresh();
      const bytes = randomBytes(2 * 256 * 1024);
      const d = digestOf(bytes);
      await writeBlob(store, d, [bytes]);
      const stream = store.read(d);
      assert.equal(store.busy(d), true);
      await collect(stream);
      // The store counts the stream out on its 'close' (its listener was added first, so it ran first).
      if (!stream.closed) await once(stream, 'close');
      assert.equal(store.busy(d), false);
    });

    test('quarantine takes a blob out of reach once; a fresh write of it commits again', async () => {
      const { store } = await fresh();
      const bytes = randomBytes(500);
      const d = digestOf(bytes);
      await writeBlob(store, d, [bytes]);
      assert.ok(await store.quarantine(d), 'says where it went');
      assert.equal(await store.stat(d), undefined);
      assert.deepEqual(await listed(store), []);
      assert.equal(await store.quarantine(d), undefined, 'a second quarantine finds nothing');
      await writeBlob(store, d, [bytes]);
      assert.ok((await store.readBytes(d))?.equals(bytes));
    });
  });
}
