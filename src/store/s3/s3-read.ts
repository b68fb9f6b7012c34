import type { Readable } from 'node:stream';
import { GetObjectCommand, type GetObjectCommandOutput } from '@aws-sdk/client-s3';
import { RegistryError } from '../../oci/errors.ts';
import { isNotFound, s3Failure } from './client.ts';
import { type S3Bucket, sendRead } from './s3-writer.ts';

/**
 * How often in a row a read picks up a transfer that broke (a socket reset, an idle timeout while its
 * client was not reading) where it stopped; a resume that moved bytes starts the count again.
 */
const RESUMES = 2;

/** The object's whole size, from a ranged answer's Content-Range or a whole one's Content-Length. */
function totalSize(res: GetObjectCommandOutput): number | undefined {
  const m = /\/(\d+)$/.exec(res.ContentRange ?? '');
  if (m) return Number(m[1]);
  return res.ContentRange ? undefined : res.ContentLength;
}

/**
 * The bytes [start, end] (inclusive; `end` undefined: to the object's end) of an object as ranged GETs:
 * S3 sends only what is asked, and memory stays one socket's buffers whatever the size. A transfer that
 * breaks is resumed from the byte it stopped at; one that cannot be (the object vanished, the gateway is
 * gone) or that ends short errors, so a reader never mistakes a truncated body for the whole.
 * `onSize` hears the object's whole size with the first answer. Stopping early (return/destroy) frees the socket.
 */
export async function* objectBytes(s3: S3Bucket, key: string, start: number, end: number | undefined, onSize?: (size: number) => void, onGone?: () => void): AsyncGenerator<Buffer> {
  let pos = start;
  let last = end;
  let failures = 0;
  for (let attempt = 0; ; attempt++) {
    if (last !== undefined && pos > last) return;
    const from = pos;
    let res: GetObjectCommandOutput;
    try {
      // No Range for a whole read: an empty object has no byte 0 to ask for.
      const Range = pos > 0 || last !== undefined ? `bytes=${pos}-${last ?? ''}` : undefined;
      const cmd = new GetObjectCommand({ Bucket: s3.bucket, Key: key, ...(Range ? { Range } : {}) });
      res = await sendRead(s3, (o) => s3.client.send(cmd, o));
    } catch (err) {
      if (isNotFound(err)) {
        onGone?.();
        if (pos > start) throw new Error(`${key} is not in bucket ${s3.bucket} (it vanished at byte ${pos})`);
        // Nothing sent yet: `gone`, so the request becomes a miss and fetches the blob again
        // (src/registry/evicted.ts); where no one refetches, a 503 the client retries, not a 500.
        throw Object.assign(new RegistryError('UNAVAILABLE', `blob ${key} is no longer in bucket ${s3.bucket} (removed meanwhile); try again`), { gone: true });
      }
      throw s3Failure('read a blob', s3.endpoint, err);
    }
    const size = totalSize(res);
    if (attempt === 0 && size !== undefined) onSize?.(size);
    if (last === undefined && size !== undefined) last = size - 1;
    const body = res.Body as Readable | undefined;
    let broken: unknown;
    try {
      if (body) {
        for await (const chunk of body) {
          pos += (chunk as Buffer).length;
          yield chunk as Buffer;
        }
      }
    } catch (err) {
      broken = err;
    } finally {
      body?.destroy();
    }
    if (last !== undefined && pos > last) return;
    if (last === undefined && !broken) return;
    failures = pos > from ? 1 : failures + 1;
    if (failures > RESUMES) {
      if (broken) throw s3Failure('read a blob', s3.endpoint, broken);
      throw new Error(`${key} ended at byte ${pos}, short of ${last! + 1}`);
    }
  }
}
