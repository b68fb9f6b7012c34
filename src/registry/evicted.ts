import { Readable } from 'node:stream';
import type { BlobHandle } from './blobs.ts';

/** The store's "no such blob": a file's ENOENT, or the S3 store's object not found (`gone`, src/store/s3/s3-read.ts). */
function isGone(err: unknown): boolean {
  const e = err as { code?: unknown; gone?: unknown } | undefined;
  return e?.code === 'ENOENT' || e?.gone === true;
}

/**
 * A committed blob found by a look (stat) can be gone by the time it is opened: the quota, gc or `berth rm`
 * removed it in between, or, on shared storage, another replica did. Nothing was sent yet, so the request
 * is still a plain miss: `again` opens the blob anew (it finds no file, forgets the row and joins or starts
 * a fill) and the same bytes are sent from there. Once any byte has gone out, a failure stays a cut
 * transfer, as everywhere else. `wantsWhole` is the request's own: a ranged reread fetches its ranges first.
 */
export function refetchIfEvicted(hit: BlobHandle, wantsWhole: boolean, again: () => Promise<BlobHandle>): BlobHandle {
  const reopen = async (start: number, end: number): Promise<BlobHandle> => {
    const other = await again();
    try {
      if (other.size !== hit.size) throw new Error(`blob ${hit.digest} is ${other.size} bytes now, ${hit.size} when it was found`);
      if (!wantsWhole && other.prefetch) await other.prefetch([{ start, end }]);
      return other;
    } catch (err) {
      other.unused?.();
      throw err;
    }
  };
  /** [start, end] of `h` through `write`, by its zero-copy send when it has one. */
  const sendFrom = async (h: BlobHandle, start: number, end: number, whole: boolean, write: (chunk: Buffer) => Promise<void>) => {
    if (h.send) return h.send(start, end, write);
    const stream = h.read(start, end, whole);
    try {
      for await (const chunk of stream) await write(chunk as Buffer);
    } finally {
      stream.destroy();
    }
  };
  const send = async (start: number, end: number, write: (chunk: Buffer) => Promise<void>): Promise<void> => {
    const whole = start === 0 && end === hit.size - 1;
    let sent = false;
    try {
      await sendFrom(hit, start, end, whole, (chunk) => {
        sent = true;
        return write(chunk);
      });
      return;
    } catch (err) {
      if (sent || !isGone(err)) throw err;
    }
    await sendFrom(await reopen(start, end), start, end, whole, write);
  };
  return {
    ...hit,
    send,
    read: (start, end, whole) =>
      Readable.from(
        (async function* () {
          // A generator, so that a reader who stops early (destroys the stream) closes whichever read is open.
          let sent = false;
          const first = hit.read(start, end, whole);
          try {
            for await (const chunk of first) {
              sent = true;
              yield chunk as Buffer;
            }
            return;
          } catch (err) {
            if (sent || !isGone(err)) throw err;
          } finally {
            first.destroy();
          }
          const again = (await reopen(start, end)).read(start, end, whole ?? (start === 0 && end === hit.size - 1));
          try {
            for await (const chunk of again) yield chunk as Buffer;
          } finally {
            again.destroy();
          }
        })(),
        { objectMode: false },
      ),
  };
}
