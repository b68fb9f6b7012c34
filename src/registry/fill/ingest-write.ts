import type { FileHandle } from 'node:fs/promises';
import { DiskFullError, isDiskFull } from '../fill-errors.ts';

/**
 * Writes all of `chunk` at `pos`, looping over short writes (a filesystem running out of space writes
 * what fits and says so in `bytesWritten`). `landed(pos, n)` is told of every piece that really is in the
 * file, before the next write is tried, so the extent list never claims a byte that is not on disk.
 * ENOSPC/EDQUOT become DiskFullError (UNAVAILABLE "disk full").
 */
export async function writeFully(fh: FileHandle, chunk: Buffer, pos: number, landed: (pos: number, piece: Buffer) => void, what: string): Promise<void> {
  let off = 0;
  while (off < chunk.length) {
    let written: number;
    try {
      ({ bytesWritten: written } = await fh.write(chunk, off, chunk.length - off, pos + off));
    } catch (err) {
      if (isDiskFull(err)) throw new DiskFullError(what, err as Error);
      throw err;
    }
    if (written <= 0) throw new DiskFullError(what, new Error('a write made no progress'));
    landed(pos + off, chunk.subarray(off, off + written));
    off += written;
  }
}
