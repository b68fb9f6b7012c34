import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, type ReadStream } from 'node:fs';
import { mkdir, open, rename, rm, stat, unlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { RegistryError } from '../oci/errors.ts';
import type { Digest } from '../oci/digest.ts';
import type { StoragePaths } from './paths.ts';

/** Read buffers for serving cached blobs: large enough that a 1 GiB blob costs ~1000 reads, small enough to stay flat. */
export const READ_CHUNK = 1024 * 1024;

/**
 * Content-addressed blob files. Everything under blobs/ was verified before it got there; this class
 * is the only writer and it only ever renames a synced, verified file into place.
 */
export class BlobStore {
  /** Open read streams per digest: the quota never removes a blob while it is being streamed. */
  private readonly reading = new Map<Digest, number>();

  constructor(readonly paths: StoragePaths) {}

  busy(d: Digest): boolean {
    return (this.reading.get(d) ?? 0) > 0;
  }

  async init(): Promise<void> {
    await mkdir(this.paths.blobs, { recursive: true });
    await mkdir(this.paths.ingest, { recursive: true });
    await mkdir(this.paths.tmp, { recursive: true });
  }

  /** The blob's size on disk, or undefined when it is not there. */
  async size(d: Digest): Promise<number | undefined> {
    try {
      return (await stat(this.paths.blob(d))).size;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
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

  /**
   * Moves a verified ingest file into blobs/. The caller has checked the digest over every byte; the
   * file is fsynced here, renamed, and the directory synced so the rename survives a power cut.
   */
  async commit(d: Digest, verifiedFile: string): Promise<void> {
    const target = this.paths.blob(d);
    await mkdir(dirname(target), { recursive: true });
    const fh = await open(verifiedFile, 'r+');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(verifiedFile, target);
    await syncDir(dirname(target));
  }

  /** Writes a small blob (a manifest) held in memory, after checking it hashes to its digest. */
  async putBytes(d: Digest, bytes: Buffer): Promise<void> {
    const actual = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
    if (actual !== d) throw new RegistryError('DIGEST_INVALID', `content hashes to ${actual}, not ${d}`);
    const tmp = join(this.paths.tmp, `${randomBytes(8).toString('hex')}.tmp`);
    const fh = await open(tmp, 'w');
    try {
      await fh.writeFile(bytes);
      await fh.sync();
    } finally {
      await fh.close();
    }
    try {
      await this.commit(d, tmp);
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
  }

  async readBytes(d: Digest): Promise<Buffer | undefined> {
    try {
      const fh = await open(this.paths.blob(d), 'r');
      try {
        return await fh.readFile();
      } finally {
        await fh.close();
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
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
