import { LRUCache } from 'lru-cache';
import type { Digest } from '../../oci/digest.ts';
import { BlobStore } from '../blob-store.ts';
import { StoragePaths } from '../paths.ts';
import type { BlobWriter, HashedFile } from '../roles.ts';

export interface LocalFill {
  write(chunk: Buffer): Promise<void>;
  commit(): Promise<void>;
  abort(): Promise<void>;
}

/**
 * storage.s3.localCache: whole blobs read from the bucket kept on local disk too, least recently used
 * evicted past maxSize, so hot layers are served at local-disk speed (and still when the gateway is down).
 * It is a filesystem BlobStore under its own directory, so what is in it got there the same verified way as
 * anything under a filesystem storage's blobs/ (a writer hashed it, install() renamed it into place), and
 * reads of it are checked again with verifyReads. The recency order lives in memory: after a restart the
 * blobs found on disk start in digest order.
 */
export class LocalBlobCache {
  readonly store: BlobStore;
  /** digest → size; eviction removes the file (a reader that has it open keeps reading it). */
  private readonly lru: LRUCache<Digest, number>;
  /** Digests being copied in now: one copy at a time per digest. */
  private readonly filling = new Set<Digest>();
  /** Files of evicted entries being removed: an insert returns once the space it needed is free. */
  private readonly removals = new Set<Promise<void>>();

  constructor(
    root: string,
    readonly maxSize: number,
    verifyReads: boolean,
  ) {
    this.store = new BlobStore(new StoragePaths(root), { verifyReads, onQuarantine: (d) => this.lru.delete(d) });
    this.lru = new LRUCache<Digest, number>({
      maxSize,
      sizeCalculation: (size) => Math.max(1, size),
      dispose: (_size, d, reason) => {
        if (reason !== 'evict' && reason !== 'delete') return;
        const removal = this.store.remove(d).catch(() => undefined);
        this.removals.add(removal);
        void removal.finally(() => this.removals.delete(removal));
      },
    });
  }

  /** Adds an entry (evicting past maxSize) and waits until the evicted files are gone. */
  private async add(d: Digest, size: number): Promise<void> {
    this.lru.set(d, size);
    await Promise.all([...this.removals]);
  }

  async init(): Promise<void> {
    await this.store.init();
    for await (const { digest, size } of this.store.list()) this.lru.set(digest, size);
  }

  /** The blob's size when it is here (and marks it used), else undefined. */
  has(d: Digest): number | undefined {
    return this.lru.get(d);
  }

  /**
   * Whether a whole read of `d` should be copied in: not here yet, nobody copying it, and small enough
   * not to push out half the cache at once.
   */
  wants(d: Digest, size: number): boolean {
    return !this.lru.has(d) && !this.filling.has(d) && size <= this.maxSize / 2;
  }

  /**
   * A verified local copy of `d` as its bytes go by (a whole read from the bucket); undefined when one
   * runs already. commit() puts it in only if the bytes hash to `d`; abort() leaves nothing.
   */
  async begin(d: Digest): Promise<LocalFill | undefined> {
    if (this.filling.has(d)) return undefined;
    this.filling.add(d);
    let writer: BlobWriter;
    try {
      writer = await this.store.begin(d);
    } catch (err) {
      this.filling.delete(d);
      throw err;
    }
    return {
      write: (chunk) => writer.write(chunk),
      commit: async () => {
        try {
          const { size } = await writer.commit();
          await this.add(d, size);
        } finally {
          this.filling.delete(d);
        }
      },
      abort: async () => {
        this.filling.delete(d);
        await writer.abort();
      },
    };
  }

  /** Takes over a file that was just committed to the bucket (a fill's): renamed in when it is on this filesystem. */
  async adopt(d: Digest, file: string, hashed: HashedFile): Promise<boolean> {
    if (hashed.size > this.maxSize / 2 || this.lru.has(d)) return false;
    try {
      await this.store.commitFile(d, file, hashed);
    } catch {
      return false; // another filesystem (EXDEV) or a full disk: the bucket has it, that is enough
    }
    await this.add(d, hashed.size);
    return true;
  }

  /** Small blobs (manifests) read or written whole. */
  async putBytes(d: Digest, bytes: Buffer): Promise<void> {
    if (this.lru.has(d) || bytes.length > this.maxSize / 2) return;
    await this.store.putBytes(d, bytes);
    await this.add(d, bytes.length);
  }

  /** Forgets and removes the local copy (the blob left the bucket, or was quarantined there). */
  async forget(d: Digest): Promise<void> {
    this.lru.delete(d);
    await this.store.remove(d);
  }

  /** Bytes held. */
  get size(): number {
    return this.lru.calculatedSize;
  }
}
