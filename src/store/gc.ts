import { readdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { digestFromHex, type Digest } from '../oci/digest.ts';
import type { BlobStore } from './blob-store.ts';
import type { Pins } from './pins.ts';
import type { StoreIndex } from './store-index.ts';

export interface GcReport {
  partials: string[];
  blobs: Array<{ digest: Digest; size: number }>;
  orphanFiles: string[];
  freed: number;
}

/**
 * Garbage collection of the storage directory: partial downloads and temp files nobody finished (older
 * than `minAgeMs`, so a running server's fills are left alone), blobs no tag or pin reaches, and files
 * under blobs/ the index does not know. Reachability follows manifest → children edges.
 */
export async function collectGarbage(index: StoreIndex, pins: Pins, store: BlobStore, o: { dryRun: boolean; minAgeMs: number }): Promise<GcReport> {
  const report: GcReport = { partials: [], blobs: [], orphanFiles: [], freed: 0 };
  const now = Date.now();
  for (const dir of [store.paths.ingest, store.paths.tmp]) {
    for (const name of await readdir(dir).catch(() => [] as string[])) {
      const file = join(dir, name);
      const st = await stat(file).catch(() => undefined);
      if (!st || now - st.mtimeMs < o.minAgeMs) continue;
      report.partials.push(file);
      report.freed += st.size;
      if (!o.dryRun) await rm(file, { force: true });
    }
  }
  const reachable = new Set<Digest>(pins.digests());
  const queue: Digest[] = [...index.allTags().map((t) => t.digest), ...reachable];
  for (let d = queue.pop(); d; d = queue.pop()) {
    reachable.add(d);
    for (const c of index.childrenOf(d)) if (!reachable.has(c.digest)) queue.push(c.digest);
  }
  const known = new Set<string>();
  for (const d of index.allDigests()) {
    known.add(d);
    if (reachable.has(d) || store.busy(d)) continue;
    const size = index.getBlob(d)?.size ?? 0;
    report.blobs.push({ digest: d, size });
    report.freed += size;
    if (!o.dryRun) {
      index.deleteBlob(d);
      index.deleteChildren(d);
      await store.remove(d);
    }
  }
  for (const prefix of await readdir(store.paths.blobs).catch(() => [] as string[])) {
    for (const hex of await readdir(join(store.paths.blobs, prefix)).catch(() => [] as string[])) {
      let d: Digest;
      try {
        d = digestFromHex(hex);
      } catch {
        continue;
      }
      if (known.has(d)) continue;
      const file = join(store.paths.blobs, prefix, hex);
      report.orphanFiles.push(file);
      report.freed += (await stat(file).catch(() => ({ size: 0 }))).size;
      if (!o.dryRun) await rm(file, { force: true });
    }
  }
  return report;
}
