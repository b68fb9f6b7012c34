import { readdir, rm, stat, statfs } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { formatBytes } from '../config/units.ts';
import { type Digest, digestFromHex } from '../oci/digest.ts';
import type { AsyncBlobIndex } from './async-index-roles.ts';
import type { StoragePaths } from './paths.ts';
import type { BlobRemover } from './roles.ts';

/** Once over the limit, evict down to this fraction of it, so one commit does not trigger the next eviction. */
const LOW_WATER = 0.9;

export type MaxSize = { bytes: number } | { percent: number };

export interface QuotaOptions {
  /** Whether a fill of this digest is running in this process: its ingest files are not stale. */
  fillRunning?: (d: Digest) => boolean;
  /** Bytes written but not yet blobs outside ingest/ (push upload sessions): they count against the limit too. */
  stagedBytes?: () => Promise<number>;
  /** Told after each pass that evicted something (metrics). */
  onEvicted?: (evicted: number, freed: number) => void;
  /** Whether this replica may evict now (config `cluster`: only the holder of the quota lease does). */
  mayRun?: () => Promise<boolean>;
  /** Told when a pass that mayRun allowed has ended (a one-pass holder of the quota lease gives it back). */
  ran?: () => Promise<void>;
}

interface Partial {
  digest: Digest;
  files: string[];
  /** Allocated bytes (st_blocks × 512): a sparse lazy fill counts what it really takes. */
  bytes: number;
}

/**
 * storage.maxSize: least-recently-used unpinned blobs go first. Local content (what a local repository
 * references, issue #10) is the site's own and never evicted: the index's evictable() leaves it out. A blob being streamed is skipped (its
 * reader keeps going), and so is content an operator command is putting in place right now (protect():
 * a prewarm's image before it is pinned) and the newest blob (the layer a client just pulled: evicting
 * it at once would only make the next pull fetch it again). Partial downloads under ingest/ count
 * against the limit; those no running fill owns are removed first when over it. Manifests whose layers
 * went are harmless: a later pull misses on those layers and refetches them, and offline berth answers
 * 404 rather than a broken body.
 */
export class Quota {
  private running: Promise<{ evicted: number; freed: number }> | undefined;
  private limitBytes: number | undefined;
  /** Digests an operator command holds against eviction, with how many holders each. */
  private readonly protectedDigests = new Map<Digest, number>();

  constructor(
    private readonly index: AsyncBlobIndex,
    /** Blobs to evict, and the local directory whose ingest/ holds partial downloads (and whose disk a percent limit is of). */
    private readonly store: BlobRemover & { readonly paths: StoragePaths },
    private readonly maxSize: MaxSize | undefined,
    private readonly log: Logger,
    private readonly opts: QuotaOptions = {},
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

  /** Holds digests against eviction until the returned release is called (idempotent). */
  protect(digests: Iterable<Digest>): () => void {
    const held = [...new Set(digests)];
    for (const d of held) this.protectedDigests.set(d, (this.protectedDigests.get(d) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      for (const d of held) {
        const n = (this.protectedDigests.get(d) ?? 1) - 1;
        if (n <= 0) this.protectedDigests.delete(d);
        else this.protectedDigests.set(d, n);
      }
    };
  }

  /** Evicts if over the limit; concurrent calls share one pass. */
  enforce(): Promise<{ evicted: number; freed: number }> {
    this.running ??= this.pass().finally(() => (this.running = undefined));
    return this.running;
  }

  /**
   * The disk filled up (a fill failed with ENOSPC): with or without maxSize, the partial downloads no
   * running fill owns are the first thing to give back, then the usual pass runs.
   */
  async diskFull(): Promise<number> {
    let freed = 0;
    let removed = 0;
    for (const p of await this.partials()) {
      if (this.opts.fillRunning?.(p.digest)) continue;
      for (const f of p.files) await rm(f, { force: true });
      freed += p.bytes;
      removed++;
    }
    this.log.warn({ partials: removed, freed }, 'storage full: removed partial downloads no fill owns');
    await this.enforce();
    return freed;
  }

  /** Bytes under ingest/, by partial download (data and checkpoint files together). */
  private async partials(): Promise<Partial[]> {
    const byDigest = new Map<Digest, Partial>();
    const names = await readdir(this.store.paths.ingest, { recursive: true }).catch(() => [] as string[]);
    for (const name of names) {
      const hex = /[0-9a-f]{64}/.exec(name)?.[0];
      if (!hex) continue;
      const file = join(this.store.paths.ingest, name);
      const st = await stat(file).catch(() => undefined);
      if (!st?.isFile()) continue;
      const digest = digestFromHex(hex);
      const p = byDigest.get(digest) ?? { digest, files: [], bytes: 0 };
      p.files.push(file);
      p.bytes += st.blocks * 512;
      byDigest.set(digest, p);
    }
    return [...byDigest.values()];
  }

  private async pass(): Promise<{ evicted: number; freed: number }> {
    const max = await this.limit();
    let freed = 0;
    if (max === undefined) return { evicted: 0, freed };
    const partials = await this.partials();
    let total = (await this.index.totals()).total + partials.reduce((n, p) => n + p.bytes, 0);
    total += (await this.opts.stagedBytes?.()) ?? 0;
    if (total <= max) return { evicted: 0, freed };
    const target = max * LOW_WATER;
    // Partials nobody is writing are leftovers of failed fills (or of a process that died): they can
    // never be served whole, so they go before any complete blob.
    let stale = 0;
    for (const p of partials) {
      if (total <= target) break;
      if (this.opts.fillRunning?.(p.digest)) continue;
      for (const f of p.files) await rm(f, { force: true });
      total -= p.bytes;
      freed += p.bytes;
      stale++;
    }
    if (stale > 0) this.log.info({ partials: stale, total, limit: max }, 'quota: removed partial downloads no fill owns');
    // This replica's own partials went above; blobs are shared by the replicas, and one evicts at a time.
    if (this.opts.mayRun && !(await this.opts.mayRun())) return { evicted: 0, freed };
    try {
      return await this.evict(total, max, target, freed);
    } finally {
      await this.opts.ran?.();
    }
  }

  /** Least-recently-used first, from `total` down to `target` (`freed`: by the partials already removed). */
  private async evict(total: number, max: number, target: number, freed: number): Promise<{ evicted: number; freed: number }> {
    let evicted = 0;
    await this.index.flushAccess();
    const newest = await this.index.newest();
    const skipped = new Set<string>();
    while (total > target) {
      const batch = (await this.index.evictable(200 + skipped.size)).filter((b) => !skipped.has(b.digest));
      if (batch.length === 0) break;
      for (const b of batch) {
        if (total <= target) break;
        if (this.store.busy(b.digest) || this.protectedDigests.has(b.digest) || b.digest === newest?.digest) {
          skipped.add(b.digest);
          continue;
        }
        await this.index.deleteBlob(b.digest);
        await this.store.remove(b.digest);
        total -= b.size;
        freed += b.size;
        evicted++;
      }
    }
    if (evicted > 0) this.opts.onEvicted?.(evicted, freed);
    if (evicted > 0) this.log.info({ evicted, freed, total, limit: max }, 'quota: evicted least-recently-used blobs');
    if (total > max) {
      if (newest && newest.size > max) {
        this.log.warn(
          { digest: newest.digest, size: newest.size, limit: max },
          `quota: blob ${newest.digest} (${formatBytes(newest.size)}) is bigger than storage.maxSize (${formatBytes(max)}) by itself: kept it so it can be served, raise maxSize`,
        );
      } else {
        this.log.warn({ total, limit: max }, 'quota: still over storage.maxSize (the rest is local, pinned, being read, being prewarmed or being downloaded)');
      }
    }
    return { evicted, freed };
  }

  /**
   * Whether `bytes` more can be kept pinned: what is pinned or held outside `own` plus `bytes` must stay
   * within the limit, since nothing of it can be evicted. A prewarm asks before fetching an image.
   */
  async room(own: Set<Digest>, pinned: Set<Digest>): Promise<{ limit: number; held: number } | undefined> {
    const max = await this.limit();
    if (max === undefined) return undefined;
    let held = 0;
    for (const d of new Set([...pinned, ...this.protectedDigests.keys()])) {
      if (own.has(d)) continue;
      held += (await this.index.getBlob(d))?.size ?? 0;
    }
    return { limit: max, held };
  }
}
