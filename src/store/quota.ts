import { statfs } from 'node:fs/promises';
import type { Logger } from 'pino';
import type { BlobStore } from './blob-store.ts';
import type { StoreIndex } from './store-index.ts';

/** Once over the limit, evict down to this fraction of it, so one commit does not trigger the next eviction. */
const LOW_WATER = 0.9;

export type MaxSize = { bytes: number } | { percent: number };

/**
 * storage.maxSize: least-recently-used unpinned blobs go first. A blob being streamed is skipped (its
 * reader keeps going). Manifests whose layers went are harmless: a later pull misses on those layers and
 * refetches them, and offline berth answers 404 rather than a broken body.
 */
export class Quota {
  private running: Promise<{ evicted: number; freed: number }> | undefined;
  private limitBytes: number | undefined;

  constructor(
    private readonly index: StoreIndex,
    private readonly store: BlobStore,
    private readonly maxSize: MaxSize | undefined,
    private readonly log: Logger,
    /** Told after each pass that evicted something (metrics). */
    private readonly onEvicted?: (evicted: number, freed: number) => void,
  ) {}

  async limit(): Promise<number | undefined> {
    if (!this.maxSize) return undefined;
    if ('bytes' in this.maxSize) return this.maxSize.bytes;
    if (this.limitBytes === undefined) {
      const fs = await statfs(this.store.paths.root);
      this.limitBytes = Math.floor((fs.blocks * fs.bsize * this.maxSize.percent) / 100);
    }
    return this.limitBytes;
  }

  /** Evicts if over the limit; concurrent calls share one pass. */
  enforce(): Promise<{ evicted: number; freed: number }> {
    this.running ??= this.pass().finally(() => (this.running = undefined));
    return this.running;
  }

  private async pass(): Promise<{ evicted: number; freed: number }> {
    const max = await this.limit();
    let evicted = 0;
    let freed = 0;
    if (max === undefined) return { evicted, freed };
    let { total } = this.index.totals();
    if (total <= max) return { evicted, freed };
    this.index.flushAccess();
    const target = max * LOW_WATER;
    const skipped = new Set<string>();
    while (total > target) {
      const batch = this.index.evictable(200 + skipped.size).filter((b) => !skipped.has(b.digest));
      if (batch.length === 0) break;
      for (const b of batch) {
        if (total <= target) break;
        if (this.store.busy(b.digest)) {
          skipped.add(b.digest);
          continue;
        }
        this.index.deleteBlob(b.digest);
        await this.store.remove(b.digest);
        total -= b.size;
        freed += b.size;
        evicted++;
      }
    }
    if (evicted > 0) this.onEvicted?.(evicted, freed);
    if (evicted > 0) this.log.info({ evicted, freed, total, limit: max }, 'quota: evicted least-recently-used blobs');
    if (total > max) this.log.warn({ total, limit: max }, 'quota: still over the limit (the rest is pinned or being read)');
    return { evicted, freed };
  }
}
