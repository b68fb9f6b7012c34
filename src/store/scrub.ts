import { createHash } from 'node:crypto';
import type { Digest } from '../oci/digest.ts';
import type { BlobEnumerator, BlobReader } from './roles.ts';

export interface ScrubReport {
  blobs: number;
  bytes: number;
  bad: Array<{ digest: Digest; quarantinedTo?: string }>;
}

/** Scrub progress: called with the bytes hashed so far, out of `total` found when the scan started. */
export type ScrubProgress = (done: number, total: number) => void;

/**
 * `berth verify`: re-hashes every committed blob against its name. With `repair`, a blob that does not
 * match is quarantined (which also drops its index row, through the store's onQuarantine), so the next
 * pull fetches it again. Reads stream (the store's read buffer): memory does not grow with blob size.
 */
export async function scrub(store: BlobEnumerator & Pick<BlobReader, 'read'>, o: { repair: boolean; onProgress?: ScrubProgress }): Promise<ScrubReport> {
  const blobs: Array<{ digest: Digest; size: number }> = [];
  for await (const b of store.list()) blobs.push(b);
  const total = blobs.reduce((n, b) => n + b.size, 0);
  const report: ScrubReport = { blobs: 0, bytes: 0, bad: [] };
  o.onProgress?.(0, total);
  for (const b of blobs) {
    const h = createHash('sha256');
    let done = report.bytes;
    try {
      for await (const c of store.read(b.digest)) {
        h.update(c as Buffer);
        done += (c as Buffer).length;
        o.onProgress?.(done, total);
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue; // evicted or removed meanwhile
      throw err;
    }
    report.blobs++;
    report.bytes += b.size;
    if (`sha256:${h.digest('hex')}` === b.digest) continue;
    const quarantinedTo = o.repair ? await store.quarantine(b.digest) : undefined;
    report.bad.push({ digest: b.digest, ...(quarantinedTo ? { quarantinedTo } : {}) });
  }
  return report;
}
