import type { Readable } from 'node:stream';
import type { Digest } from '../oci/digest.ts';

/**
 * The blob store in roles, as distribution splits its BlobStatter / BlobProvider / BlobIngester: each
 * consumer names the role it uses, so a second implementation (S3, issue #12) has to provide only what
 * is asked of a store, and test/support/conformance/blob-store.ts says what each role promises.
 *
 * The one invariant every implementation keeps: a committed blob always hashes to its name. Bytes reach
 * the store only through BlobIngester, whose every entrance ends in the same verified commit.
 */

export interface BlobInfo {
  size: number;
}

export interface BlobStatter {
  /** The committed blob's size, or undefined when it is not there. */
  stat(d: Digest): Promise<BlobInfo | undefined>;
}

export interface BlobReader extends BlobStatter {
  /** A stream of [start, end] (inclusive, defaults: the whole blob) of a committed blob. */
  read(d: Digest, start?: number, end?: number): Readable;
  /**
   * Sends [start, end] (inclusive) through `write`, which resolves once the chunk was handed on; the
   * zero-garbage path for serving (a fixed pair of buffers per stream, however long it runs).
   */
  send(d: Digest, start: number, end: number, write: (chunk: Buffer) => Promise<void>): Promise<void>;
  /** A small blob (a manifest) whole; undefined when absent (or found rotten and quarantined). */
  readBytes(d: Digest): Promise<Buffer | undefined>;
}

/**
 * A verified write in progress: bytes are hashed as they are written; commit() puts the blob in place
 * only if they hash to the digest it was begun for, and otherwise fails leaving nothing behind.
 */
export interface BlobWriter {
  readonly digest: Digest;
  /** Bytes written so far. */
  readonly written: number;
  write(chunk: Buffer): Promise<void>;
  /** Verifies, makes durable and puts in place; on any failure (DigestMismatchError first) nothing is left. */
  commit(): Promise<BlobInfo>;
  /** Gives up: nothing is left. Idempotent, and a no-op after commit. */
  abort(): Promise<void>;
}

/** What a caller's own hash of a file's bytes came to (a fill hashes while the bytes arrive). */
export interface HashedFile {
  /** `sha256:<hex>` of the file's bytes, as the caller computed it. */
  digest: Digest;
  size: number;
}

export interface BlobIngester {
  /** Begins a verified write of `d`. Concurrent writers of one digest are fine: each commits a good blob. */
  begin(d: Digest): Promise<BlobWriter>;
  /** A small blob held in memory; throws RegistryError DIGEST_INVALID when it does not hash to `d`. */
  putBytes(d: Digest, bytes: Buffer): Promise<void>;
  /**
   * Takes over a file the caller wrote and hashed itself (a fill's ingest file: random-access, resumable,
   * hashed in order as it arrived). Refused (DigestMismatchError) unless `hashed.digest` is `d` and the
   * file holds `hashed.size` bytes; on refusal the file stays where it was, the caller's to remove.
   */
  commitFile(d: Digest, file: string, hashed: HashedFile): Promise<void>;
}

export interface BlobRemover {
  /** Whether the blob is being read now: quota and gc leave it alone. */
  busy(d: Digest): boolean;
  /** Removes a committed blob; absent is fine. */
  remove(d: Digest): Promise<void>;
}

export interface BlobEnumerator {
  /** Every committed blob, in digest order. */
  list(): AsyncIterable<{ digest: Digest; size: number }>;
  /** Moves a blob that no longer hashes to its name out of reach; where it went, or undefined if it was gone. */
  quarantine(d: Digest): Promise<string | undefined>;
}

/** Everything a blob store is. */
export interface BlobStorage extends BlobReader, BlobIngester, BlobRemover, BlobEnumerator {}

/** The bytes did not hash to the digest they were written for. */
export class DigestMismatchError extends Error {
  override name = 'DigestMismatchError';
  constructor(
    readonly expected: Digest,
    readonly actual: string,
    why = `content hashes to ${actual}, not ${expected}`,
  ) {
    super(why);
  }
}

/** Streams `body` into a verified write of `d`; resolves with what was committed, leaves nothing on failure. */
export async function writeBlob(store: BlobIngester, d: Digest, body: AsyncIterable<Buffer> | Iterable<Buffer>, onChunk: (n: number) => void = () => {}): Promise<BlobInfo> {
  const w = await store.begin(d);
  try {
    for await (const chunk of body) {
      await w.write(chunk);
      onChunk(chunk.length);
    }
    return await w.commit();
  } catch (err) {
    await w.abort();
    throw err;
  }
}
