import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import type { Context } from 'koa';
import { RegistryError } from '../oci/errors.ts';
import { type ByteRange, parseRange, rangeLength } from '../oci/range.ts';
import type { BlobHandle } from '../registry/blobs.ts';
import { answerError } from './errors.ts';

/** Headers every blob response carries: content is immutable, so caches may keep it for good. */
export function setBlobHeaders(ctx: Context, digest: string): void {
  ctx.set('Docker-Content-Digest', digest);
  ctx.set('ETag', `"${digest}"`);
  ctx.set('Accept-Ranges', 'bytes');
  ctx.set('Cache-Control', 'max-age=31536000, immutable');
}

/**
 * Sends a blob: whole (200), one range (206 with Content-Range) or several (206 multipart/byteranges).
 * The body streams from disk or from the fill; memory does not grow with the blob's size.
 * `onBytes` is told, once the response is over, how many body bytes left (for metrics): counted once
 * per response rather than per chunk, which would cost a call on the hottest path.
 */
export function sendBlob(ctx: Context, blob: BlobHandle, ranges: ByteRange[] | undefined, onBytes: (n: number) => void): void {
  setBlobHeaders(ctx, blob.digest);
  const socket = ctx.req.socket;
  const before = socket.bytesWritten;
  ctx.res.once('close', () => {
    onBytes(ctx.res.writableFinished ? (ctx.length ?? 0) : Math.max(0, socket.bytesWritten - before));
  });
  if (blob.send && (!ranges || ranges.length === 1)) {
    const r = ranges?.[0] ?? { start: 0, end: blob.size - 1 };
    ctx.status = ranges ? 206 : 200;
    ctx.type = 'application/octet-stream';
    ctx.length = rangeLength(r);
    if (ranges) ctx.set('Content-Range', `bytes ${r.start}-${r.end}/${blob.size}`);
    if (blob.size === 0) {
      ctx.body = Buffer.alloc(0);
      return;
    }
    sendDirect(ctx, (write) => blob.send!(r.start, r.end, write));
    return;
  }
  if (!ranges) {
    ctx.status = 200;
    ctx.type = 'application/octet-stream';
    ctx.length = blob.size;
    if (blob.size === 0) ctx.body = Buffer.alloc(0);
    else sendStream(ctx, blob.read(0, blob.size - 1, true));
    return;
  }
  ctx.status = 206;
  if (ranges.length === 1) {
    const r = ranges[0]!;
    ctx.type = 'application/octet-stream';
    ctx.length = rangeLength(r);
    ctx.set('Content-Range', `bytes ${r.start}-${r.end}/${blob.size}`);
    // A range that is the whole blob (`bytes=0-`) is held back like a whole GET: last byte after the digest check.
    sendStream(ctx, blob.read(r.start, r.end, r.start === 0 && r.end === blob.size - 1));
    return;
  }
  const boundary = `berth-${randomBytes(12).toString('hex')}`;
  const heads = ranges.map((r, i) => Buffer.from(`${i === 0 ? '' : '\r\n'}--${boundary}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes ${r.start}-${r.end}/${blob.size}\r\n\r\n`));
  const tail = Buffer.from(`\r\n--${boundary}--\r\n`);
  const length = heads.reduce((n, h, i) => n + h.length + rangeLength(ranges[i]!), 0) + tail.length;
  const wanted = ranges;
  // Parts that together cover the whole blob are a whole GET in pieces: the last byte to go out waits for
  // the digest check (all other bytes were read by then), so wrong bytes cut the response.
  const whole = coversWhole(ranges, blob.size);
  async function* parts(): AsyncGenerator<Buffer> {
    for (let i = 0; i < wanted.length; i++) {
      const r = wanted[i]!;
      yield heads[i]!;
      for await (const chunk of blob.read(r.start, r.end, whole && i === wanted.length - 1)) yield chunk as Buffer;
    }
    yield tail;
  }
  ctx.type = `multipart/byteranges; boundary=${boundary}`;
  ctx.length = length;
  sendStream(ctx, Readable.from(parts(), { objectMode: false, highWaterMark: 256 * 1024 }));
}

/**
 * A body stream (a fill read, a multipart body) written as sendDirect writes: a stream that fails before
 * its first byte (a small blob whose bytes are wrong, a fill that failed at once) is still answered with a
 * status and an error code, which koa's own piping cannot do (it destroys the socket). Leaving the loop
 * early (a failed write: the client went away) destroys the stream, which lets its fill reader go.
 */
function sendStream(ctx: Context, stream: Readable): void {
  sendDirect(ctx, async (write) => {
    try {
      for await (const chunk of stream) await write(chunk as Buffer);
    } finally {
      stream.destroy();
    }
  });
}

/** Whether `ranges` together cover every byte of a blob of `size` bytes. */
export function coversWhole(ranges: ByteRange[], size: number): boolean {
  let reach = 0;
  for (const r of [...ranges].sort((a, b) => a.start - b.start)) {
    if (r.start > reach) return false;
    reach = Math.max(reach, r.end + 1);
  }
  return reach >= size;
}

/** Parses the client's Range header against the blob's size (throws 400 / 416 as the spec wants). */
export function requestedRanges(ctx: Context, digest: string, size: number): ByteRange[] | undefined {
  const h = ctx.get('Range');
  if (!h) return undefined;
  // If-Range with a validator other than ours means "the whole thing".
  const ifRange = ctx.get('If-Range');
  if (ifRange && ifRange !== `"${digest}"` && ifRange !== digest) return undefined;
  return parseRange(h, size);
}

/** Rejects a malformed Range header before any work is done (satisfiability needs the size, later). */
export function checkRangeSyntax(ctx: Context): boolean {
  const h = ctx.get('Range');
  if (!h) return false;
  try {
    parseRange(h, Number.MAX_SAFE_INTEGER);
  } catch (err) {
    // Past the end of any blob (a first byte beyond 2^53): well-formed, and a 416 once the size is known.
    if (!(err instanceof RegistryError && err.code === 'RANGE_NOT_SATISFIABLE')) throw err;
  }
  return true;
}

/**
 * Writes the body straight to the socket (koa steps aside: ctx.respond = false), each chunk awaited
 * until the socket took it. A failure after the headers went out destroys the socket: the client must
 * see a broken transfer, never a clean short body.
 */
function sendDirect(ctx: Context, body: (write: (chunk: Buffer) => Promise<void>) => Promise<void>): void {
  const res = ctx.res;
  ctx.respond = false;
  let gone: Error | undefined;
  // The write in flight: node drops a write into a socket that is destroyed but has not emitted 'close'
  // yet (no callback ever), so 'close' fails it, or the send would hang holding its fill reader or file.
  let inFlight: ((err: Error) => void) | undefined;
  res.once('close', () => {
    if (!res.writableFinished) gone = new Error('client closed the connection');
    if (gone) inFlight?.(gone);
  });
  const write = (chunk: Buffer) =>
    new Promise<void>((ok, fail) => {
      if (gone || res.destroyed) return fail(gone ?? new Error('client closed the connection'));
      inFlight = fail;
      res.write(chunk, (err) => {
        inFlight = undefined;
        if (err) fail(err);
        else ok();
      });
    });
  body(write).then(
    () => res.end(),
    // Before the first byte (a fill that failed at once: wrong bytes, a full disk) the client still gets a
    // status and an error code; after it, a broken transfer.
    (err: Error) => (res.headersSent || gone ? res.destroy(err) : answerError(ctx, err)),
  );
}
