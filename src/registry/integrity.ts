import { createHash } from 'node:crypto';
import type { FileHandle } from 'node:fs/promises';

// IntegrityError lives in src/oci/integrity.ts (the upstream client throws it too); re-exported for the fill.
export { IntegrityError } from '../oci/integrity.ts';

/** sha256 (hex) of the first `size` bytes of an open file, read in 256 KiB steps. */
export async function hashFile(fh: FileHandle, size: number): Promise<string> {
  const h = createHash('sha256');
  const buf = Buffer.allocUnsafe(256 * 1024);
  for (let pos = 0; pos < size; ) {
    const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, size - pos), pos);
    if (bytesRead === 0) break;
    h.update(buf.subarray(0, bytesRead));
    pos += bytesRead;
  }
  return h.digest('hex');
}
