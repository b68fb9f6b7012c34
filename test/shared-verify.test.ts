// storage.verifyReads hashes a cached blob once for all the whole-blob sends of it that overlap in time
// (src/store/shared-verify.ts): the send furthest ahead hashes, the others skip what it has seen. What must
// hold whatever the interleaving: every send that reaches the end learns the truth there (never "not yet"),
// a rotten file cuts every one of them before its last chunk, and a leader that goes away mid-file hands
// the hash on to whoever reaches that point next.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import type { Digest } from '../src/oci/digest.ts';
import { BlobStore, CorruptBlobError, READ_CHUNK } from '../src/store/blob-store.ts';
import { StoragePaths } from '../src/store/paths.ts';
import { SharedVerify } from '../src/store/shared-verify.ts';
import { flipByte } from './support/berth-cli.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';

const digestOf = (b: Buffer): Digest => `sha256:${createHash('sha256').update(b).digest('hex')}` as Digest;

describe('one hash shared by overlapping sends', () => {
  test('any interleaving of sends with any chunk sizes: each send ends knowing whether the bytes are the digest', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 5_000 }),
        fc.array(fc.array(fc.integer({ min: 1, max: 700 }), { minLength: 1, maxLength: 40 }), { minLength: 1, maxLength: 5 }),
        fc.array(fc.nat(), { maxLength: 400 }),
        fc.boolean(),
        fc.array(fc.nat({ max: 4 }), { maxLength: 5 }),
        (size, chunkings, schedule, rotten, leaving) => {
          const good = randomBytes(size);
          const file = Buffer.from(good);
          if (rotten) file[size >> 1] = file[size >> 1]! ^ 1;
          const shared = new SharedVerify();
          // Each send: its own chunk sizes, its position, its verdict at the end; a send in `leaving` stops halfway.
          const sends = chunkings.map((chunks, i) => ({ chunks, pos: 0, k: 0, verdict: undefined as boolean | undefined, done: false, quits: leaving.includes(i) }));
          const vs = sends.map(() => shared.join(digestOf(good), 7, size));
          const step = (i: number): void => {
            const s = sends[i]!;
            if (s.done) return;
            if (s.quits && s.pos >= size / 2) {
              s.done = true;
              vs[i]!.release();
              return;
            }
            const n = Math.min(s.chunks[s.k++ % s.chunks.length]!, size - s.pos);
            const verdict = vs[i]!.feed(s.pos, file.subarray(s.pos, s.pos + n));
            s.pos += n;
            if (s.pos === size) {
              s.verdict = verdict;
              s.done = true;
              vs[i]!.release();
            }
          };
          for (const x of schedule) step(x % sends.length);
          for (let i = 0; i < sends.length; i++) while (!sends[i]!.done) step(i);
          for (const s of sends) if (!s.quits) assert.equal(s.verdict, !rotten, 'every send that reached the end has the verdict');
          assert.equal(shared.size, 0, 'no verification outlives its sends');
        },
      ),
      { numRuns: 400 },
    );
  });

  test('a file of another inode is another verification', () => {
    const good = randomBytes(100);
    const shared = new SharedVerify();
    const a = shared.join(digestOf(good), 1, 100);
    const b = shared.join(digestOf(good), 2, 100);
    assert.equal(shared.size, 2);
    const bad = Buffer.from(good);
    bad[0] = bad[0]! ^ 1;
    assert.equal(a.feed(0, bad), false);
    assert.equal(b.feed(0, good), true, "the rotten inode's verdict is not the new one's");
    a.release();
    b.release();
    assert.equal(shared.size, 0);
  });
});

describe('BlobStore.send with verifyReads, many sends of one file at once', () => {
  let dir: string;
  let store: BlobStore;
  const SIZE = 40 * READ_CHUNK + 1234;

  before(async () => {
    dir = await makeTempDir('shared-verify');
    store = new BlobStore(new StoragePaths(dir), { verifyReads: true });
    await store.init();
  });
  after(async () => {
    if (dir) await removeTempDir(dir);
  });

  /** A send that records its bytes; `gate(chunkIndex)` may hold or fail a write. */
  function sender(d: Digest, gate: (n: number) => Promise<void> = async () => {}) {
    const got: Buffer[] = [];
    let n = 0;
    const done = store.send(d, 0, SIZE - 1, async (chunk) => {
      await gate(n++);
      got.push(Buffer.from(chunk));
    });
    return { done, bytes: () => Buffer.concat(got) };
  }

  test('eight sends of a good blob, the leader gone at a third: the other seven get every byte', async () => {
    const blob = randomBytes(SIZE);
    const d = digestOf(blob);
    await store.putBytes(d, blob);
    const leader = sender(d, async (n) => {
      if (n === 13) throw new Error('client reset');
    });
    // The followers start once the leader is ahead, so they rely on its hash up to where it left.
    await new Promise((r) => setImmediate(r));
    const followers = Array.from({ length: 7 }, () => sender(d));
    await assert.rejects(leader.done, /client reset/);
    for (const f of followers) {
      await f.done;
      assert.ok(f.bytes().equals(blob), 'a follower got the blob byte for byte');
    }
  });

  test('eight sends of a rotten blob: each one is cut before its last chunk, the file is quarantined once', async () => {
    const blob = randomBytes(SIZE);
    const d = digestOf(blob);
    await store.putBytes(d, blob);
    await flipByte(store.paths.blob(d), 5 * READ_CHUNK + 17);
    const sends = Array.from({ length: 8 }, () => sender(d));
    const outcomes = await Promise.allSettled(sends.map((s) => s.done));
    sends.forEach((s, i) => {
      const o = outcomes[i]!;
      assert.ok(o.status === 'rejected' && o.reason instanceof CorruptBlobError, `send ${i} is cut: ${o.status}`);
      assert.ok(s.bytes().length < SIZE, 'the last chunk was held back');
    });
    assert.equal(await store.stat(d), undefined, 'the rotten file left blobs/');
    // The blob fetched again is a new file: its sends hash it afresh and pass.
    await store.putBytes(d, blob);
    const again = sender(d);
    await again.done;
    assert.ok(again.bytes().equals(blob));
  });
});
