import { createHash, type Hash } from 'node:crypto';
import { type FileHandle, open, rm } from 'node:fs/promises';
import { hashFile } from '../integrity.ts';
import { readCheckpoint, writeCheckpoint } from './checkpoint.ts';
import { Extents } from './extents.ts';
import { writeFully } from './ingest-write.ts';

/** Persist what is on disk at most this often (in bytes written), so a restart resumes near where it stopped. */
const CHECKPOINT_BYTES = 32 * 1024 * 1024;

/**
 * The ingest file of one fill (`ingest/<hex>.<upstream>.data`, sparse) with its checkpoint (`.json`):
 * which bytes are on disk (extents), and the digest computed while the bytes arrive in order from zero.
 * The extents only ever name bytes that are in the file; the checkpoint only bytes that were synced.
 */
export class IngestFile {
  private hash: Hash = createHash('sha256');
  private hashedTo = 0;
  private sinceCheckpoint = 0;

  private constructor(
    private readonly fh: FileHandle,
    readonly extents: Extents,
    /** The blob's size an earlier fill recorded, if any. */
    readonly size: number | undefined,
    private readonly dataFile: string,
    private readonly metaFile: string,
  ) {}

  /** Opens the data file, picking up what an earlier fill (before a restart) left on disk. */
  static async open(dataFile: string, metaFile: string, expectedSize: number | undefined): Promise<IngestFile> {
    const checkpoint = await readCheckpoint(metaFile, expectedSize);
    let extents = checkpoint?.extents ?? new Extents();
    let size = checkpoint?.size;
    let fh: FileHandle;
    try {
      fh = await open(dataFile, extents.bytes > 0 ? 'r+' : 'w+');
    } catch {
      // The checkpoint outlived its data file (a crash after the rename into blobs/): start afresh.
      extents = new Extents();
      size = undefined;
      fh = await open(dataFile, 'w+');
    }
    return new IngestFile(fh, extents, size, dataFile, metaFile);
  }

  get path(): string {
    return this.dataFile;
  }

  /**
   * Writes `chunk` at `pos` (short writes looped over, ENOSPC a DiskFullError) and publishes each piece
   * once it is in the file. Resolves true when a checkpoint is due.
   */
  async write(chunk: Buffer, pos: number, what: string): Promise<boolean> {
    await writeFully(
      this.fh,
      chunk,
      pos,
      (at, piece) => {
        if (at === this.hashedTo) {
          this.hash.update(piece);
          this.hashedTo += piece.length;
        }
        this.extents.add(at, at + piece.length);
      },
      what,
    );
    this.sinceCheckpoint += chunk.length;
    return this.sinceCheckpoint >= CHECKPOINT_BYTES;
  }

  /** Forget everything (the upstream ignored Range and is sending the blob again from zero). */
  reset(): void {
    this.extents.clear();
    this.hash = createHash('sha256');
    this.hashedTo = 0;
  }

  async read(buf: Buffer, pos: number): Promise<number> {
    return (await this.fh.read(buf, 0, buf.length, pos)).bytesRead;
  }

  /** sha256 (hex) of the first `size` bytes: from the streaming hash when the bytes came in order. */
  async digestHex(size: number): Promise<string> {
    return this.hashedTo === size ? this.hash.digest('hex') : hashFile(this.fh, size);
  }

  /** Records what is on disk; `sync` first makes the data durable (a crash may then resume from here). */
  async checkpoint(size: number, sync = true): Promise<void> {
    this.sinceCheckpoint = 0;
    if (sync) await this.fh.datasync();
    await writeCheckpoint(this.metaFile, size, this.extents);
  }

  async removeCheckpoint(): Promise<void> {
    await rm(this.metaFile, { force: true });
  }

  /** Removes data and checkpoint: wrong bytes, or a partial that only holds space. */
  async discard(): Promise<void> {
    await rm(this.metaFile, { force: true });
    await rm(this.dataFile, { force: true });
  }

  async close(): Promise<void> {
    await this.fh.close().catch(() => {});
  }
}
