import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, type ReadStream } from 'node:fs';
import { type FileHandle, mkdir, open, readdir, rename, stat, unlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { type Digest, digestFromHex, digestHex } from '../oci/digest.ts';
import { RegistryError } from '../oci/errors.ts';
import { FsBlobWriter } from './blob-writer.ts';
import type { StoragePaths } from './paths.ts';
import { type BlobInfo, type BlobStorage, type BlobWriter, DigestMismatchError, type HashedFile, writeBlob } from './roles.ts';
import { SharedVerify, type Verification } from './shared-verify.ts';

/**
 * Read buffer for serving cached blobs. Each stream holds about two of these (one being written, one
 * read ahead), so this sets memory per client: 256 KiB keeps 64 streams under 40 MB, and still costs
 * only 4,000 reads a GiB.
 */
export const READ_CHUNK = 256 * 1024;

export interface BlobStoreOptions {
  /**
   * storage.verifyReads: hash whole-blob sends and manifest reads against the digest, and hold the
   * last chunk back until the hash is known, so a blob that rotted on disk is never a clean 200.
   */
  verifyReads?: boolean;
  /** Told after a blob that no longer hashes to its name was moved to quarantine/ (drop its index row, log). */
  onQuarantine?: (d: Digest, movedTo: string) => void;
}

/** A cached blob whose bytes no longer hash to its name: it has been quarantined. */
export class CorruptBlobError extends Error {
  override name = 'CorruptBlobError';
}

/**
 * Content-addressed blob files (the filesystem implementation of src/store/roles.ts). Everything under
 * blobs/ was verified before it got there; this class is the only writer and every write ends in
 * install(), which renames a synced file into place only when its hash is its name. Disks still rot,
 * so reads of a whole blob are checked again (verifyReads) and a mismatch moves the file out of blobs/.
 */
export class BlobStore implements BlobStorage {
  /** Open read streams per digest: the quota never removes a blob while it is being streamed. */
  private readonly reading = new Map<Digest, number>();
  /** verifyReads: one hash per file for the whole-blob sends that overlap (shared-verify.ts). */
  private readonly verifying = new SharedVerify();

  constructor(
    readonly paths: StoragePaths,
    private readonly opts: BlobStoreOptions = {},
  ) {}

  busy(d: Digest): boolean {
    return (this.reading.get(d) ?? 0) > 0;
  }

  async init(): Promise<void> {
    await mkdir(this.paths.blobs, { recursive: true });
    await mkdir(this.paths.ingest, { recursive: true });
    await mkdir(this.paths.tmp, { recursive: true });
    await mkdir(this.paths.uploads, { recursive: true });
  }

  /** The blob's size on disk, or undefined when it is not there. */
  async stat(d: Digest): Promise<BlobInfo | undefined> {
    try {
      return { size: (await stat(this.paths.blob(d))).size };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
  }

  /**
   * Sends [start, end] (inclusive) of a committed blob through `write`, which resolves once the chunk
   * has been handed on (the socket took it). Two buffers alternate — one read while the other is
   * written — so a stream costs 2 × READ_CHUNK however long it runs, and leaves no garbage behind: the
   * hot path of a cache is serving the same layers to many clients.
   *
   * With verifyReads, a send of the whole blob is hashed as it goes (once for all the sends of the file
   * that overlap, shared-verify.ts) and its last chunk is written only once the hash matches; on a mismatch the blob is quarantined and CorruptBlobError thrown, so the
   * caller cuts the client's transfer short of the end (a client never gets a complete wrong body).
   */
  async send(d: Digest, start: number, end: number, write: (chunk: Buffer) => Promise<void>): Promise<void> {
    this.reading.set(d, (this.reading.get(d) ?? 0) + 1);
    let fh: FileHandle | undefined;
    let verify: Verification | undefined;
    try {
      fh = await open(this.paths.blob(d), 'r');
      const st = this.opts.verifyReads && start === 0 ? await fh.stat() : undefined;
      verify = st && end === st.size - 1 ? this.verifying.join(d, st.ino, st.size) : undefined;
      const buffers = [Buffer.allocUnsafe(READ_CHUNK), Buffer.allocUnsafe(READ_CHUNK)];
      let pending: Promise<void> = Promise.resolve();
      let i = 0;
      for (let pos = start; pos <= end; ) {
        const buf = buffers[i]!;
        i ^= 1;
        const { bytesRead } = await fh.read(buf, 0, Math.min(READ_CHUNK, end + 1 - pos), pos);
        if (bytesRead === 0) throw new Error(`blob ${d} is shorter on disk than its index says`);
        const verdict = verify?.feed(pos, buf.subarray(0, bytesRead));
        if (verify && pos + bytesRead > end && verdict !== true) {
          await pending.catch(() => undefined);
          if (verdict === undefined) throw new Error(`blob ${d}: the shared hash is behind this send`);
          await this.quarantine(d);
          throw new CorruptBlobError(`cached blob ${d} does not hash to its digest: quarantined, the next request fetches it again`);
        }
        await pending;
        // The write can fail (the client reset) while the next read is in flight: mark it handled now,
        // or the rejection is "unhandled" and ends the process; the `await pending` above still sees it.
        pending = write(buf.subarray(0, bytesRead));
        pending.catch(() => undefined);
        pos += bytesRead;
      }
      await pending;
    } finally {
      verify?.release();
      await fh?.close();
      const n = (this.reading.get(d) ?? 1) - 1;
      if (n <= 0) this.reading.delete(d);
      else this.reading.set(d, n);
    }
  }

  /** A stream of [start, end] (inclusive) of a committed blob. */
  read(d: Digest, start?: number, end?: number): ReadStream {
    const stream = createReadStream(this.paths.blob(d), { start, end, highWaterMark: READ_CHUNK });
    this.reading.set(d, (this.reading.get(d) ?? 0) + 1);
    stream.once('close', () => {
      const n = (this.reading.get(d) ?? 1) - 1;
      if (n <= 0) this.reading.delete(d);
      else this.reading.set(d, n);
    });
    return stream;
  }

  async begin(d: Digest): Promise<BlobWriter> {
    const file = join(this.paths.tmp, `${digestHex(d).slice(0, 12)}.${randomBytes(8).toString('hex')}.tmp`);
    return new FsBlobWriter(d, await open(file, 'wx'), file, (digest, f, hashed) => this.install(digest, f, hashed));
  }

  async commitFile(d: Digest, file: string, hashed: HashedFile): Promise<void> {
    await this.install(d, file, hashed);
  }

  /** Writes a small blob (a manifest) held in memory, through the same verified write as any other. */
  async putBytes(d: Digest, bytes: Buffer): Promise<void> {
    try {
      await writeBlob(this, d, [bytes]);
    } catch (err) {
      if (err instanceof DigestMismatchError) throw new RegistryError('DIGEST_INVALID', err.message);
      throw err;
    }
  }

  /**
   * The one way into blobs/ (BlobWriter.commit, commitFile and so putBytes all end here): refused unless
   * the bytes hashed to `d` and the file holds exactly the bytes that were hashed; then the file is
   * fsynced, renamed into place and the directory synced, so the rename survives a power cut. A file
   * refused here is left where it was (its writer removes it). Renaming over a blob another writer of
   * the same digest committed meanwhile is harmless: both hold the same bytes, and a reader that has
   * the old file open keeps reading it.
   */
  private async install(d: Digest, file: string, hashed: HashedFile): Promise<void> {
    if (hashed.digest !== d) throw new DigestMismatchError(d, hashed.digest);
    const fh = await open(file, 'r+');
    try {
      const { size } = await fh.stat();
      if (size !== hashed.size) throw new DigestMismatchError(d, hashed.digest, `${file} holds ${size} bytes, not the ${hashed.size} that hashed to ${d}`);
      await fh.sync();
    } finally {
      await fh.close();
    }
    const target = this.paths.blob(d);
    await mkdir(dirname(target), { recursive: true });
    await rename(file, target);
    await syncDir(dirname(target));
  }

  /** A small blob (a manifest) whole; undefined when absent or, with verifyReads, when it rotted (then quarantined). */
  async readBytes(d: Digest): Promise<Buffer | undefined> {
    let bytes: Buffer;
    try {
      const fh = await open(this.paths.blob(d), 'r');
      try {
        bytes = await fh.readFile();
      } finally {
        await fh.close();
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
    if (this.opts.verifyReads && createHash('sha256').update(bytes).digest('hex') !== digestHex(d)) {
      await this.quarantine(d);
      return undefined;
    }
    return bytes;
  }

  /**
   * Moves a blob that does not hash to its name out of blobs/ (kept for a post-mortem, not served).
   * Returns where it went, or undefined when another reader moved it first. Readers that have it open
   * keep their handle; the next open misses and refetches.
   */
  async quarantine(d: Digest): Promise<string | undefined> {
    await mkdir(this.paths.quarantine, { recursive: true });
    const to = join(this.paths.quarantine, `${digestHex(d)}.${Date.now()}`);
    try {
      await rename(this.paths.blob(d), to);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
    this.opts.onQuarantine?.(d, to);
    return to;
  }

  /** Every file under blobs/ named as a digest, in digest order (files named otherwise are not blobs). */
  async *list(): AsyncIterable<{ digest: Digest; size: number }> {
    for (const prefix of (await readdir(this.paths.blobs).catch(() => [] as string[])).sort()) {
      for (const hex of (await readdir(join(this.paths.blobs, prefix)).catch(() => [] as string[])).sort()) {
        let digest: Digest;
        try {
          digest = digestFromHex(hex);
        } catch {
          continue;
        }
        const st = await stat(join(this.paths.blobs, prefix, hex)).catch(() => undefined);
        if (st?.isFile()) yield { digest, size: st.size };
      }
    }
  }

  async remove(d: Digest): Promise<void> {
    await unlink(this.paths.blob(d)).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
  }
}

export async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } catch {
    // some filesystems refuse fsync on a directory; the rename is still atomic
  } finally {
    await fh.close();
  }
}
