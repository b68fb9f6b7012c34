import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import type { Context } from 'koa';
import { parseRange, rangeLength, type ByteRange } from '../oci/range.ts';
import type { BlobHandle } from '../registry/blobs.ts';

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
 * `onBytes` counts what was sent, for metrics.
 */
export function sendBlob(ctx: Context, blob: BlobHandle, ranges: ByteRange[] | undefined, onBytes: (n: number) => void): void {
  setBlobHeaders(ctx, blob.digest);
  const count = (s: Readable): Readable => {
    s.on('data', (c: string | Buffer) => onBytes(c.length));
    return s;
  };
  if (!ranges) {
    ctx.status = 200;
    ctx.body = count(blob.read(0, blob.size - 1, true));
    ctx.type = 'application/octet-stream';
    ctx.length = blob.size;
    if (blob.size === 0) ctx.body = Buffer.alloc(0);
    return;
  }
  ctx.status = 206;
  if (ranges.length === 1) {
    const r = ranges[0]!;
    ctx.body = count(blob.read(r.start, r.end));
    ctx.type = 'application/octet-stream';
    ctx.length = rangeLength(r);
    ctx.set('Content-Range', `bytes ${r.start}-${r.end}/${blob.size}`);
    return;
  }
  const boundary = `berth-${randomBytes(12).toString('hex')}`;
  const heads = ranges.map(
    (r, i) => Buffer.from(`${i === 0 ? '' : '\r\n'}--${boundary}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes ${r.start}-${r.end}/${blob.size}\r\n\r\n`),
  );
  const tail = Buffer.from(`\r\n--${boundary}--\r\n`);
  const length = heads.reduce((n, h, i) => n + h.length + rangeLength(ranges[i]!), 0) + tail.length;
  const wanted = ranges;
  async function* parts(): AsyncGenerator<Buffer> {
    for (let i = 0; i < wanted.length; i++) {
      const r = wanted[i]!;
      yield heads[i]!;
      for await (const chunk of count(blob.read(r.start, r.end))) yield chunk as Buffer;
    }
    yield tail;
  }
  const out = Readable.from(parts(), { objectMode: false, highWaterMark: 256 * 1024 });
  ctx.body = out;
  ctx.type = `multipart/byteranges; boundary=${boundary}`;
  ctx.length = length;
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
  parseRange(h, Number.MAX_SAFE_INTEGER);
  return true;
}
