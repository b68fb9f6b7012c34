import { createHash } from 'node:crypto';
import { type FileHandle, mkdir, open, rm } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { DeleteObjectCommand, GetObjectCommand, HeadBucketCommand, HeadObjectCommand, ListObjectsV2Command, PutObjectCommand } from '@aws-sdk/client-s3';
import { LRUCache } from 'lru-cache';
import { type Digest, digestHex } from '../../oci/digest.ts';
import { RegistryError } from '../../oci/errors.ts';
import { type BlobStoreOptions, CorruptBlobError, READ_CHUNK } from '../blob-store.ts';
import type { StoragePaths } from '../paths.ts';
import { type BlobInfo, type BlobStorage, type BlobWriter, DigestMismatchError, type HashedFile } from '../roles.ts';
import { isNotFound, LISTING, SEND_BODY, s3Failure, s3Reason } from './client.ts';
import { copyObject } from './copy.ts';
import { PROBE_MS } from './gateway-watch.ts';
import type { S3Keys } from './keys.ts';
import type { LocalBlobCache, LocalFill } from './local-cache.ts';
import { objectBytes } from './s3-read.ts';
import { S3BlobWriter, type S3Bucket, type Staged, sendRead } from './s3-writer.ts';

/** commitFile reads the caller's file in pieces of this size (the writer copies them into its parts). */
const FILE_READ = 1024 * 1024;

export interface S3StoreOptions extends BlobStoreOptions {
  /** For tests: multipart copies above `single` bytes, in parts of `part` (defaults: 5 GiB, 1 GiB). */
  copyLimits?: { single: number; part: number };
  /** The fault tests' crash points (src/failpoints.ts): `store.s3.mid-upload`. */
  failpoints?: { hit(name: string): void };
  /** storage.s3.localCache: whole blobs kept on local disk too, read from there first. */
  cache?: LocalBlobCache;
}

const isMissing = (err: unknown) => (err as NodeJS.ErrnoException).code === 'ENOENT';

/**
 * How long a HeadObject's "it is there, this size" is believed without asking again. Blobs are content-addressed
 * and immutable, so only a removal can make it wrong: this replica's own drops it at once; another replica's
 * (quota on the elected one) is noticed by the next GET (NotFound drops it too), or after this.
 */
const KNOWN_TTL_MS = 30_000;
const KNOWN_MAX = 100_000;

/**
 * Blobs in an S3 bucket (the `s3` storage driver), keeping the filesystem store's invariant: an object under
 * blobs/ always hashes to its name. Every write ends in install(): bytes in memory are PUT to their key only
 * after their hash was checked; bigger writes are completed under ingest/ and copied into place only once
 * verified. `paths` is this replica's own working directory (fills' partial files, push sessions, the lock).
 */
export class S3BlobStore implements BlobStorage {
  /** Open reads per digest, in this process: quota and gc leave those blobs alone. */
  private readonly reading = new Map<Digest, number>();
  /** Digests a HeadObject (or a write) saw in the bucket, with their sizes: one HEAD per blob per KNOWN_TTL_MS, not per GET. */
  private readonly known = new LRUCache<Digest, number>({ max: KNOWN_MAX, ttl: KNOWN_TTL_MS, ttlAutopurge: false });

  constructor(
    readonly s3: S3Bucket,
    readonly keys: S3Keys,
    readonly paths: StoragePaths,
    private readonly opts: S3StoreOptions = {},
  ) {}

  /** The local working directories (blobs/ is in the bucket). */
  async init(): Promise<void> {
    for (const dir of [this.paths.ingest, this.paths.tmp, this.paths.uploads]) await mkdir(dir, { recursive: true });
    await this.opts.cache?.init();
  }

  busy(d: Digest): boolean {
    return (this.reading.get(d) ?? 0) > 0;
  }

  private opened(d: Digest): () => void {
    this.reading.set(d, (this.reading.get(d) ?? 0) + 1);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const n = (this.reading.get(d) ?? 1) - 1;
      if (n <= 0) this.reading.delete(d);
      else this.reading.set(d, n);
    };
  }

  /** HeadObject: a 404 is "not cached"; anything else is thrown (a 503 for the client, not a 404 that sends it upstream). */
  async stat(d: Digest): Promise<BlobInfo | undefined> {
    const local = this.opts.cache?.has(d);
    if (local !== undefined) return { size: local };
    const known = this.known.get(d);
    if (known !== undefined) return { size: known };
    try {
      const cmd = new HeadObjectCommand({ Bucket: this.s3.bucket, Key: this.keys.blob(d) });
      const head = await sendRead(this.s3, (o) => this.s3.client.send(cmd, o));
      const size = head.ContentLength ?? 0;
      this.known.set(d, size);
      return { size };
    } catch (err) {
      if (isNotFound(err)) {
        this.known.delete(d);
        return undefined;
      }
      throw s3Failure('look up a blob', this.s3.endpoint, err);
    }
  }

  /** [start, end] as ranged GETs; the stream errors (never ends early) if the object vanishes or the gateway goes. */
  read(d: Digest, start = 0, end?: number): Readable {
    const done = this.opened(d);
    const stream = Readable.from(this.bytes(d, start, end), { objectMode: false, highWaterMark: READ_CHUNK });
    stream.once('close', done);
    return stream;
  }

  /** From the local cache when the blob is there (a copy evicted meanwhile is read from the bucket), else the bucket. */
  private async *bytes(d: Digest, start: number, end: number | undefined): AsyncGenerator<Buffer> {
    const cache = this.opts.cache;
    if (cache?.has(d) !== undefined) {
      const fh = await open(cache.store.paths.blob(d), 'r').catch((err: unknown) => {
        if (isMissing(err)) return undefined;
        throw err;
      });
      if (fh) {
        // The handle's own stream closes it, also when the reader stops early.
        yield* fh.createReadStream({ start, ...(end !== undefined ? { end } : {}), highWaterMark: READ_CHUNK, autoClose: true });
        return;
      }
    }
    yield* this.fromBucket(d, start, end);
  }

  /** objectBytes of the blob; one that is not there (removed by another replica since a HEAD here said it was) is forgotten. */
  private fromBucket(d: Digest, start: number, end: number | undefined, onSize?: (size: number) => void): AsyncGenerator<Buffer> {
    return objectBytes(this.s3, this.keys.blob(d), start, end, onSize, () => this.known.delete(d));
  }

  /**
   * [start, end] through `write`, one S3 body chunk at a time (the next is read while the last is written).
   * With verifyReads a whole-blob send is hashed and its last chunk written only once the hash matches;
   * on a mismatch the object is quarantined and CorruptBlobError thrown, so the client's transfer is cut.
   */
  async send(d: Digest, start: number, end: number, write: (chunk: Buffer) => Promise<void>): Promise<void> {
    const done = this.opened(d);
    const cache = this.opts.cache;
    let local: LocalFill | undefined;
    try {
      if (cache?.has(d) !== undefined) {
        try {
          return await cache.store.send(d, start, end, write);
        } catch (err) {
          if (!isMissing(err)) throw err; // evicted since has(): nothing was written, read the bucket
        }
      }
      let size: number | undefined;
      const hash = this.opts.verifyReads && start === 0 ? createHash('sha256') : undefined;
      let pos = start;
      let pending: Promise<void> = Promise.resolve();
      for await (const chunk of this.fromBucket(d, start, end, (s) => (size = s))) {
        // A whole read copies the blob into the local cache as it goes (verified there on commit).
        if (pos === start && cache && start === 0 && size === end + 1 && cache.wants(d, size)) local = await cache.begin(d).catch(() => undefined);
        pos += chunk.length;
        if (hash && size === end + 1) {
          hash.update(chunk);
          if (pos > end && hash.digest('hex') !== digestHex(d)) {
            await pending.catch(() => undefined);
            await this.quarantine(d);
            throw new CorruptBlobError(`cached blob ${d} does not hash to its digest: quarantined, the next request fetches it again`);
          }
        }
        await pending;
        // Marked handled now: a write failing while the next chunk is read must not be "unhandled".
        pending = write(chunk);
        pending.catch(() => undefined);
        // A local disk that fails stops the copy, never the client's transfer.
        if (local) await local.write(chunk).catch(() => local?.abort().finally(() => (local = undefined)));
      }
      await pending;
      await local?.commit().catch(() => undefined);
      local = undefined;
    } finally {
      await local?.abort();
      done();
    }
  }

  async readBytes(d: Digest): Promise<Buffer | undefined> {
    const cache = this.opts.cache;
    const local = cache?.has(d) !== undefined ? await cache?.store.readBytes(d).catch(() => undefined) : undefined;
    if (local) return local;
    let bytes: Buffer;
    try {
      const cmd = new GetObjectCommand({ Bucket: this.s3.bucket, Key: this.keys.blob(d) });
      const res = await sendRead(this.s3, (o) => this.s3.client.send(cmd, o));
      bytes = Buffer.from((await res.Body?.transformToByteArray()) ?? []);
    } catch (err) {
      if (isNotFound(err)) {
        this.known.delete(d);
        return undefined;
      }
      throw s3Failure('read a blob', this.s3.endpoint, err);
    }
    if (this.opts.verifyReads && createHash('sha256').update(bytes).digest('hex') !== digestHex(d)) {
      await this.quarantine(d);
      return undefined;
    }
    await cache?.putBytes(d, bytes).catch(() => undefined);
    return bytes;
  }

  async begin(d: Digest): Promise<BlobWriter> {
    return new S3BlobWriter(d, this.s3, this.keys.ingestFor(d), (digest, hashed, staged) => this.install(digest, hashed, staged));
  }

  /** Bytes in memory: hashed here, then one PutObject straight to the blob's key (atomic: never a partial object). */
  async putBytes(d: Digest, bytes: Buffer): Promise<void> {
    const actual = `sha256:${createHash('sha256').update(bytes).digest('hex')}` as Digest;
    if (actual !== d) throw new RegistryError('DIGEST_INVALID', new DigestMismatchError(d, actual).message);
    await this.install(d, { digest: d, size: bytes.length }, { bytes });
    await this.opts.cache?.putBytes(d, bytes).catch(() => undefined);
  }

  /**
   * A file the caller wrote and hashed: refused (the file left where it is) unless that hash is `d` and the
   * file holds `hashed.size` bytes. A blob the bucket holds already (another replica's fill of it committed
   * first) is not uploaded again; otherwise the file is read once to upload it, and hashed again on the way:
   * the bytes that reach the bucket are the bytes that were verified, even if the file changed since the
   * caller hashed it, for a sha256 that costs a few percent of what the upload does. On success the file is
   * removed (as the filesystem store's rename takes it away); a reader holding it open keeps reading.
   */
  async commitFile(d: Digest, file: string, hashed: HashedFile): Promise<void> {
    if (hashed.digest !== d) throw new DigestMismatchError(d, hashed.digest);
    const fh = await open(file, 'r');
    try {
      const { size } = await fh.stat();
      if (size !== hashed.size) throw new DigestMismatchError(d, hashed.digest, `${file} holds ${size} bytes, not the ${hashed.size} that hashed to ${d}`);
      if (!(await this.inBucket(d, size))) await this.upload(d, file, fh, hashed);
    } finally {
      await fh.close();
    }
    // A fill's file is the freshest blob there is: it becomes the local copy when it can simply be renamed.
    if (!(await this.opts.cache?.adopt(d, file, hashed))) await rm(file, { force: true });
  }

  /**
   * Whether blobs/<d> is in the bucket with `size` bytes: one fresh HEAD (not `known`, which may predate a
   * removal by another replica). Existence and size are enough, because an object under blobs/ always hashes
   * to its name. Replicas sharing the bucket each commit their own fill of a blob they all read (the owner's
   * from the upstream, the others' through it): without this every one of them uploaded the same bytes again.
   * A HEAD that fails says nothing: the upload goes ahead (and reports the gateway's trouble if it has any).
   */
  private async inBucket(d: Digest, size: number): Promise<boolean> {
    try {
      const head = await this.s3.client.send(new HeadObjectCommand({ Bucket: this.s3.bucket, Key: this.keys.blob(d) }));
      if (head.ContentLength !== size) return false; // not this blob's bytes: ours replace it
    } catch {
      return false;
    }
    this.known.set(d, size);
    return true;
  }

  /** The file's bytes through a verified writer (multipart to ingest/, then copied into place). */
  private async upload(d: Digest, file: string, fh: FileHandle, hashed: HashedFile): Promise<void> {
    const { size } = hashed;
    const w = await this.begin(d);
    try {
      const buf = Buffer.allocUnsafe(Math.min(FILE_READ, Math.max(1, size)));
      for (let pos = 0; pos < size; ) {
        const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, size - pos), pos);
        if (bytesRead === 0) throw new DigestMismatchError(d, hashed.digest, `${file} shrank to ${pos} bytes while it was uploaded`);
        await w.write(buf.subarray(0, bytesRead));
        if (pos < size / 2 && pos + bytesRead >= size / 2) this.opts.failpoints?.hit('store.s3.mid-upload');
        pos += bytesRead;
      }
      await w.commit();
    } catch (err) {
      await w.abort();
      throw err;
    }
  }

  /**
   * The one way into blobs/: refused unless the bytes hashed to `d` and what is staged holds exactly
   * `hashed.size` bytes. Bytes in memory are PUT to the key; a completed ingest object is copied there
   * (server-side) and then deleted. Two writers of one digest may both land: same bytes, same object.
   */
  private async install(d: Digest, hashed: HashedFile, staged: Staged): Promise<void> {
    if (hashed.digest !== d) throw new DigestMismatchError(d, hashed.digest);
    const { client, bucket, endpoint } = this.s3;
    const Key = this.keys.blob(d);
    if ('bytes' in staged) {
      if (staged.bytes.length !== hashed.size) throw new DigestMismatchError(d, hashed.digest, `${staged.bytes.length} bytes staged, not ${hashed.size}`);
      await client.send(new PutObjectCommand({ Bucket: bucket, Key, Body: staged.bytes, ContentLength: staged.bytes.length }), SEND_BODY).catch((err: unknown) => {
        throw s3Failure('store a blob', endpoint, err);
      });
      this.known.set(d, hashed.size);
      return;
    }
    try {
      const head = await client.send(new HeadObjectCommand({ Bucket: bucket, Key: staged.key }));
      if (head.ContentLength !== hashed.size) throw new DigestMismatchError(d, hashed.digest, `${staged.key} holds ${head.ContentLength} bytes, not the ${hashed.size} that hashed to ${d}`);
      await copyObject(this.s3, staged.key, Key, hashed.size, this.opts.copyLimits);
    } catch (err) {
      if (err instanceof DigestMismatchError) throw err;
      throw s3Failure('store a blob', endpoint, err);
    }
    this.known.set(d, hashed.size);
    // The blob is in place; an ingest object that outlives a failed delete is cleared by the next start.
    await client.send(new DeleteObjectCommand({ Bucket: bucket, Key: staged.key })).catch(() => undefined);
  }

  async remove(d: Digest): Promise<void> {
    this.known.delete(d);
    await this.opts.cache?.forget(d);
    await this.s3.client.send(new DeleteObjectCommand({ Bucket: this.s3.bucket, Key: this.keys.blob(d) })).catch((err: unknown) => {
      if (!isNotFound(err)) throw s3Failure('remove a blob', this.s3.endpoint, err);
    });
  }

  /**
   * Every object under blobs/ named as a digest, in digest order (S3 lists keys in byte order); others skipped.
   * With its LastModified: gc leaves a young object whose row another replica has not written yet.
   */
  async *list(): AsyncIterable<{ digest: Digest; size: number; modifiedAt?: number }> {
    let ContinuationToken: string | undefined;
    do {
      const page = await this.s3.client
        .send(new ListObjectsV2Command({ Bucket: this.s3.bucket, Prefix: this.keys.blobs, ...(ContinuationToken ? { ContinuationToken } : {}) }), LISTING)
        .catch((err: unknown) => {
          throw s3Failure('list blobs', this.s3.endpoint, err);
        });
      for (const o of page.Contents ?? []) {
        const digest = o.Key ? this.keys.digestOf(o.Key) : undefined;
        if (digest) yield { digest, size: o.Size ?? 0, ...(o.LastModified ? { modifiedAt: o.LastModified.getTime() } : {}) };
      }
      ContinuationToken = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (ContinuationToken);
  }

  /** Copies the blob to quarantine/ and deletes it from blobs/; undefined when it was not there. */
  async quarantine(d: Digest): Promise<string | undefined> {
    await this.opts.cache?.forget(d);
    const info = await this.stat(d);
    if (!info) return undefined;
    const to = this.keys.quarantine(d);
    try {
      await copyObject(this.s3, this.keys.blob(d), to, info.size, this.opts.copyLimits);
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw s3Failure('quarantine a blob', this.s3.endpoint, err);
    }
    await this.remove(d);
    this.opts.onQuarantine?.(d, to);
    return to;
  }

  /**
   * /readyz: one HeadBucket (credentials and bucket checked, nothing written), answered within PROBE_MS or
   * failed with a message naming the bucket and the endpoint.
   */
  async probe(): Promise<void> {
    const { client, bucket, endpoint } = this.s3;
    try {
      await client.send(new HeadBucketCommand({ Bucket: bucket }), { abortSignal: AbortSignal.timeout(PROBE_MS), requestTimeout: PROBE_MS });
    } catch (err) {
      const why = (err as Error).name === 'AbortError' || (err as Error).name === 'TimeoutError' ? `no answer within ${PROBE_MS} ms` : s3Reason(err);
      throw new Error(`S3 bucket "${bucket}" at ${endpoint}: ${why}`);
    }
  }

  /** Frees the client's sockets. */
  close(): void {
    this.s3.client.destroy();
  }
}
