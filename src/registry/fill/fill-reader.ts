import { setTimeout as sleep } from 'node:timers/promises';
import { isTransient } from '../fill-errors.ts';
import type { Extents } from './extents.ts';
import type { FillPhase } from './fill-state.ts';
import type { LazyFetch } from './lazy-fetches.ts';

/** What a reader needs of its fill (fill.ts). */
export interface ReadableFill {
  readonly state: FillPhase;
  readonly error: Error | undefined;
  readonly extents: Extents;
  /** The sequential fill will bring `pos` soon: waiting for it beats a Range request of our own. */
  sequentialWillBring(pos: number): boolean;
  fetchRange(start: number, end: number): LazyFetch;
  whenDone(): Promise<void>;
  read(buf: Buffer, pos: number): Promise<number>;
  /** The next published change (bytes landed, a fetch ended, commit or failure). */
  changed(): Promise<void>;
  retries: { attempts: number; backoff: number };
}

const READ_CHUNK = 256 * 1024;
const MAX_LAZY_SPAN = 16 * 1024 * 1024;

/** The two buffers a send (sendFill) alternates between, READ_CHUNK each. */
export function fillBuffers(): [Buffer, Buffer] {
  return [Buffer.allocUnsafe(READ_CHUNK), Buffer.allocUnsafe(READ_CHUNK)];
}

/**
 * [start, end] of a fill through `write` (which resolves once the socket took the chunk), with two reused
 * buffers: one is read into while the other is written, as BlobStore.send does for committed blobs. A
 * cold fill is read by every client of the blob, and a fresh 256 KB buffer per chunk per client cost a
 * quarter of the CPU in garbage collection (bench/cluster). A chunk is yielded by readFill only once the
 * one before it in the same buffer was written, so no byte is overwritten before it left.
 */
export async function sendFill(fill: ReadableFill, start: number, end: number, holdBack: boolean, write: (chunk: Buffer) => Promise<void>): Promise<void> {
  let pending: Promise<void> = Promise.resolve();
  for await (const chunk of readFill(fill, start, end, holdBack, fillBuffers())) {
    await pending;
    // The write can fail (the client reset) while the next read is in flight: mark it handled now; the
    // `await pending` above, or the one below, still sees it.
    pending = write(chunk);
    pending.catch(() => undefined);
  }
  await pending;
}

/**
 * The bytes [start, end] (inclusive) of a fill, as they land. Bytes nothing is bringing are fetched by
 * Range. A fetch that failed is retried after a doubling pause only when the failure is transient, and at
 * most `retries.attempts` times; otherwise (404, wrong bytes, an open breaker) the reader fails at once.
 * Every wait is on a real event or timer, so a fetch that fails without I/O cannot spin the event loop.
 * `holdBack`: the last byte waits for the digest check (a reader whose request covers the whole blob: see fill.ts).
 * `buffers`: read into these in turn instead of a new buffer per chunk; only for a consumer that is done with
 * a chunk before it asks for the one after next (sendFill).
 */
export async function* readFill(fill: ReadableFill, start: number, end: number, holdBack: boolean, buffers?: [Buffer, Buffer]): AsyncGenerator<Buffer> {
  if (holdBack && end - start < READ_CHUNK) {
    // A small blob read whole goes out in one piece once verified: wrong bytes are then a status with an
    // error code (the headers are not out yet), not a connection cut after all but one byte.
    const held: Buffer[] = [];
    for await (const chunk of readSpan(fill, start, end, holdBack)) held.push(chunk);
    yield held.length === 1 ? held[0]! : Buffer.concat(held);
    return;
  }
  yield* readSpan(fill, start, end, holdBack, buffers);
}

async function* readSpan(fill: ReadableFill, start: number, end: number, holdBack: boolean, buffers?: [Buffer, Buffer]): AsyncGenerator<Buffer> {
  let pos = start;
  let turn = 0;
  let failures = 0;
  let last: LazyFetch | undefined;
  while (pos <= end) {
    if (fill.state === 'failed') throw fill.error;
    // The held-back byte waits for the digest check once it is on disk (fetched below like any other byte:
    // the last part of a multipart response may end anywhere, and nothing else may bring it).
    if (holdBack && pos === end && fill.state !== 'committed' && fill.extents.availableFrom(end) > end) {
      // The commit too, not only the digest check: a client that has the whole blob finds it cached.
      await fill.whenDone();
      const one = Buffer.allocUnsafe(1);
      await fill.read(one, end);
      pos += 1;
      yield one;
      continue;
    }
    const limit = end + 1 - (holdBack && pos < end && fill.state !== 'committed' ? 1 : 0);
    const avail = Math.min(fill.extents.availableFrom(pos), limit);
    if (avail > pos) {
      failures = 0;
      last = undefined;
      const n = Math.min(avail, pos + READ_CHUNK) - pos;
      const buf = buffers ? buffers[turn]!.subarray(0, n) : Buffer.allocUnsafe(n);
      turn ^= 1;
      const got = await fill.read(buf, pos);
      if (got !== n) throw new Error(`short read of ingest file at ${pos}`);
      pos += n;
      yield buf;
      continue;
    }
    if (last?.error) {
      const err = last.error;
      last = undefined;
      failures++;
      if (!isTransient(err) || failures > fill.retries.attempts) throw err;
      await sleep(fill.retries.backoff * 2 ** (failures - 1));
      continue;
    }
    // No await between these checks and the wait: events are emitted only after I/O, never in between.
    if (!fill.sequentialWillBring(pos)) last = fill.fetchRange(pos, Math.min(end, pos + MAX_LAZY_SPAN - 1));
    if (fill.extents.availableFrom(pos) > pos || (fill.state as string) === 'failed' || last?.error) continue;
    await fill.changed();
  }
}
