import { createHash } from 'node:crypto';
import { type FileHandle, rm } from 'node:fs/promises';
import type { Digest } from '../oci/digest.ts';
import type { BlobInfo, BlobWriter, HashedFile } from './roles.ts';

/**
 * A verified write to the filesystem store: bytes go to a temp file of its own under tmp/ (so two
 * writers of one digest never share a file) and through a sha256 as they are written. commit() hands
 * the temp file and the hash to the store's one commit path, which refuses a mismatch; whatever fails,
 * the temp file is removed, so a failed or abandoned write leaves nothing.
 */
export class FsBlobWriter implements BlobWriter {
  private readonly hash = createHash('sha256');
  private bytes = 0;
  private ended = false;

  constructor(
    readonly digest: Digest,
    private readonly fh: FileHandle,
    private readonly file: string,
    private readonly install: (d: Digest, file: string, hashed: HashedFile) => Promise<void>,
  ) {}

  get written(): number {
    return this.bytes;
  }

  async write(chunk: Buffer): Promise<void> {
    if (this.ended) throw new Error(`write of ${this.digest} after it ended`);
    // FileHandle.write may write less than asked: loop until the chunk is all in the file.
    for (let off = 0; off < chunk.length; ) {
      const { bytesWritten } = await this.fh.write(chunk, off, chunk.length - off, this.bytes + off);
      off += bytesWritten;
    }
    this.hash.update(chunk);
    this.bytes += chunk.length;
  }

  async commit(): Promise<BlobInfo> {
    if (this.ended) throw new Error(`commit of ${this.digest} after it ended`);
    this.ended = true;
    const hashed = { digest: `sha256:${this.hash.digest('hex')}` as Digest, size: this.bytes };
    try {
      await this.fh.close();
      await this.install(this.digest, this.file, hashed);
      return { size: this.bytes };
    } catch (err) {
      await rm(this.file, { force: true });
      throw err;
    }
  }

  async abort(): Promise<void> {
    if (this.ended) {
      // After a failed commit the file is gone already; after a good one it is the blob.
      return;
    }
    this.ended = true;
    await this.fh.close().catch(() => undefined);
    await rm(this.file, { force: true });
  }
}
