// The send of a running fill (Fill.send, fill-reader.ts sendFill): the hot path of a cold blob, which
// every client of the blob reads. It must reuse two buffers however long the blob (a new 256 KB buffer per
// chunk per client was a quarter of the CPU in garbage collection), never overwrite a chunk whose write is
// still pending, and, for a whole-blob read, hold its last byte back until the fill is committed.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import path from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { setImmediate as nextTurn } from 'node:timers/promises';
import type { Digest } from '../src/oci/digest.ts';
import type { Fill } from '../src/registry/fill/fill.ts';
import { Fills } from '../src/registry/fill/fills.ts';
import { wholeBlobSource } from './support/fill-source.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';

const SIZE = 3 * 1024 * 1024 + 17;
let work: string;
before(async () => {
  work = await makeTempDir('fill-send');
});
after(async () => {
  if (work) await removeTempDir(work);
});

async function coldFill(name: string, bytes: Buffer): Promise<Fill> {
  const d = `sha256:${createHash('sha256').update(bytes).digest('hex')}` as Digest;
  const fills = new Fills({ started: () => {}, ended: () => {} });
  const { fill } = await fills.acquire(name, d, wholeBlobSource(bytes, { paced: true }), {
    dataFile: path.join(work, `${name}.data`),
    metaFile: path.join(work, `${name}.json`),
    retries: { attempts: 0, backoff: 1 },
    abandonAfterMs: 60_000,
    abandonGraceMs: 60_000,
    commit: async () => {},
    readCommitted: () => Readable.from([]),
    log: () => {},
  });
  fill.start();
  return fill;
}

/**
 * A client write that takes a turn of the event loop to be "taken by the socket", and checks that the
 * chunk it was given still holds the same bytes when it is taken (nothing overwrote a pending chunk).
 */
function slowClient(fill: Fill) {
  const got: Buffer[] = [];
  const buffers = new Set<ArrayBufferLike>();
  let lastByteAt: string | undefined;
  let received = 0;
  const write = async (chunk: Buffer) => {
    const copy = Buffer.from(chunk);
    if (chunk.length > 1) buffers.add(chunk.buffer);
    await nextTurn();
    assert.ok(copy.equals(chunk), 'a chunk changed while its write was pending');
    got.push(copy);
    received += chunk.length;
    if (received === SIZE) lastByteAt = fill.state;
  };
  return { write, got, buffers, lastByteAt: () => lastByteAt };
}

describe('sending a running fill', () => {
  test('a whole read: the right bytes through two reused buffers; the last byte only once the fill is committed', async () => {
    const bytes = randomBytes(SIZE);
    const fill = await coldFill('whole', bytes);
    const clients = [slowClient(fill), slowClient(fill), slowClient(fill)];
    await Promise.all(clients.map((c) => fill.send(0, SIZE - 1, c.write, { verified: true })));
    for (const c of clients) {
      assert.ok(Buffer.concat(c.got).equals(bytes), 'the bytes sent are the blob');
      assert.ok(c.got.length > 12, `sent in many chunks (${c.got.length})`);
      assert.ok(c.buffers.size <= 2, `${c.buffers.size} distinct buffers for ${c.got.length} chunks`);
      assert.equal(c.lastByteAt(), 'committed');
    }
  });

  test('a range read is not held back, and a failed write ends the send with its error and releases the fill', async () => {
    const bytes = Buffer.alloc(SIZE, 9);
    const fill = await coldFill('range', bytes);
    const part: Buffer[] = [];
    await fill.send(1000, 700_000, async (c) => void part.push(Buffer.from(c)));
    assert.equal(Buffer.concat(part).length, 699_001);
    let writes = 0;
    await assert.rejects(
      fill.send(0, SIZE - 1, async () => {
        if (++writes === 3) throw new Error('client went away');
      }),
      /client went away/,
    );
    assert.equal(fill.readers, 0);
    await fill.whenDone();
  });
});
