import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { digestFromHex, type Digest } from '../oci/digest.ts';
import type { BlobStore } from './blob-store.ts';

export interface ScrubReport {
  blobs: number;
  bytes: number;
  bad: Array<{ digest: Digest; quarantinedTo?: string }>;
}

/** Scrub progress: called with the bytes hashed so far, out of `total` found when the scan started. */
export type ScrubProgress = (done: number, total: number) => void;

/**
 * `berth verify`: re-hashes every file under blobs/ against its name. With `repair`, a file that does
 * not match is quarantined (BlobStore.quarantine, which also drops its index row), so the next pull
 * fetches it again. Reads stream through a 1 MiB buffer: memory does not grow with blob size.
 */
export async function scrub(store: BlobStore, o: { repair: boolean; onProgress?: ScrubProgress }): Promise<ScrubReport> {
  const files: Array<{ digest: Digest; file: string; size: number }> = [];
  for (const prefix of (await readdir(store.paths.blobs).catch(() => [] as string[])).sort()) {
    for (const hex of (await readdir(join(store.paths.blobs, prefix)).catch(() => [] as string[])).sort()) {
      let digest: Digest;
      try {
        digest = digestFromHex(hex);
      } catch {
        continue; // not a blob name (gc reports such files)
      }
      const file = join(store.paths.blobs, prefix, hex);
      const st = await stat(file).catch(() => undefined);
      if (st?.isFile()) files.push({ digest, file, size: st.size });
    }
  }
  const total = files.reduce((n, f) => n + f.size, 0);
  const report: ScrubReport = { blobs: 0, bytes: 0, bad: [] };
  o.onProgress?.(0, total);
  for (const f of files) {
    const h = createHash('sha256');
    let done = report.bytes;
    try {
      for await (const c of createReadStream(f.file, { highWaterMark: 1024 * 1024 })) {
        h.update(c as Buffer);
        done += (c as Buffer).length;
        o.onProgress?.(done, total);
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue; // evicted or removed meanwhile
      throw err;
    }
    report.blobs++;
    report.bytes += f.size;
    if (`sha256:${h.digest('hex')}` === f.digest) continue;
    const quarantinedTo = o.repair ? await store.quarantine(f.digest) : undefined;
    report.bad.push({ digest: f.digest, ...(quarantinedTo ? { quarantinedTo } : {}) });
  }
  return report;
}
