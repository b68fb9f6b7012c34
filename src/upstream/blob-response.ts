import type { Digest } from '../oci/digest.ts';
import { RegistryError } from '../oci/errors.ts';
import { IntegrityError } from '../oci/integrity.ts';
import { discard, namedFailures } from './bodies.ts';
import { withinClaim } from './claimed-range.ts';
import { brokenOff, header, type UpstreamResponse } from './transport.ts';

/** A blob GET as the registry layer sees it. */
export interface UpstreamBlob {
  /** The whole blob's size (Content-Length of a 200, the `/size` of a 206's Content-Range). */
  size: number;
  /** Offset of the body's first byte in the blob: 0 unless `partial`. */
  start: number;
  /** The upstream honoured the Range (206); false when it sent the whole blob instead. */
  partial: boolean;
  /** The bytes; a 206's body is held to its claim (it fails before yielding a byte past it). */
  body: AsyncIterable<Buffer>;
  /** Drops the body unread and frees its connection (a body nobody iterates would hold it for good). */
  cancel(): void;
}

/**
 * The checks a blob response must pass before a byte of it is written: a 206 needs a Content-Range that
 * parses and fits the blob, with a Content-Length (if any) that matches it; every answer needs a size.
 * A 206 that contradicts itself is wrong bytes (IntegrityError); one that says too little to use is a
 * plain upstream error. The connection is dropped on any failure.
 */
export function blobFromResponse(res: UpstreamResponse, host: string, d: Digest, signal?: AbortSignal): UpstreamBlob {
  const partial = res.status === 206;
  // A transfer that breaks is UNAVAILABLE naming the upstream (the fill retries it like any other).
  let body: AsyncIterable<Buffer> = namedFailures(res.body, (err) => brokenOff(host, `blob ${d}`, err), signal);
  let start = 0;
  let size = Number(header(res.headers, 'content-length'));
  if (partial) {
    const m = /^bytes (\d+)-(\d+)\/(\d+)$/.exec(header(res.headers, 'content-range') ?? '');
    if (!m) {
      discard(res.body);
      throw new RegistryError('UPSTREAM_ERROR', `upstream ${host} sent a 206 without a usable Content-Range`);
    }
    start = Number(m[1]);
    size = Number(m[3]);
    const claimed = Number(m[2]) - start + 1;
    const length = header(res.headers, 'content-length');
    if (claimed <= 0 || Number(m[2]) >= size || (length !== undefined && Number(length) !== claimed)) {
      discard(res.body);
      throw new IntegrityError(`upstream ${host} answered 206 for blob ${d} with Content-Range ${m[0].slice(6)} and Content-Length ${length ?? 'none'}`);
    }
    // A body longer than its claim fails before any of the excess is written.
    body = withinClaim(body, claimed, `upstream ${host}, blob ${d}`, () => discard(res.body));
  }
  if (!Number.isSafeInteger(size) || size < 0) {
    discard(res.body);
    throw new RegistryError('UPSTREAM_ERROR', `upstream ${host} sent no Content-Length for blob ${d}`);
  }
  return { partial, start, size, body, cancel: () => discard(res.body) };
}
