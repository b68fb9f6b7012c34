import { LRUCache } from 'lru-cache';
import type { Digest } from '../../oci/digest.ts';
import type { ReferrerDescriptor } from '../../oci/referrers.ts';
import type { AsyncPinIndex, AsyncRegistryIndex } from '../async-index-roles.ts';
import type { BlobRow, ChildDescriptor, EstargzIndex, ManifestRecord, TagInput, TagRow } from '../index-roles.ts';
import { LOCAL_UPSTREAM } from '../index-roles.ts';

type Where = { upstream: string; repository: string };

/** Declared sizes kept per digest: one per repository it was asked through, the most recent ones. */
const SIZES_PER_DIGEST = 64;

/** How long each kind of row is answered from this replica's memory (docs/decisions.md "Index drivers"). */
export interface CachingOptions {
  /** Blob rows: content-addressed; they change by a learned media type or a delete (this replica's drop its entry). */
  blobTtlMs?: number;
  /** Which repositories referenced a digest, and the sizes their manifests declared: additive. */
  refTtlMs?: number;
  /** An upstream tag's answers: a tag another replica revalidated is seen after at most this (one extra upstream HEAD). */
  tagTtlMs?: number;
  /** Children descriptors kept in all (200k): a memory bound, whatever the lists' lengths. */
  childrenMax?: number;
}

/**
 * A per-replica cache in front of an index that answers over the network (PostgreSQL), so the hot path of a
 * hit (`getBlob`, `touch`, routing by `refsOf`, `tagRows`) stays in memory. Bounded LRUs, each with its own
 * time to live; a manifest's children are immutable and kept until evicted from the LRU. `@local` tags are
 * read through: a push on one replica is pullable from the next one at once. This replica's own writes drop
 * the entries they change; another replica's writes are seen when an entry expires. Writes, pins, eviction
 * order, totals and referrers always go to the database; `touch` is the database index's own (in memory,
 * written out in one statement per flushAccess).
 */
export class CachingIndex implements AsyncRegistryIndex {
  readonly pins: AsyncPinIndex;
  readonly estargz: EstargzIndex;
  private readonly blobs: LRUCache<string, BlobRow>;
  /**
   * Bounded by descriptors, not lists: an index manifest may list tens of thousands of children, and 20k such
   * lists (what a count alone allowed) would be gigabytes.
   */
  private readonly children: LRUCache<string, ChildDescriptor[]>;
  private readonly refs: LRUCache<string, Where[]>;
  /**
   * Declared sizes by digest, then by `upstream repository`: dropping a digest's sizes (every child of every
   * manifest recorded) is one delete, where one flat LRU keyed `digest upstream repository` had to be scanned
   * whole per digest (50k entries x 100 children blocked the event loop for seconds).
   */
  private readonly sizes: LRUCache<string, Map<string, number>>;
  private readonly tags: LRUCache<string, TagRow[]>;
  /**
   * Bumped by every write this replica makes: a read that started before a write does not store its
   * (possibly older) answer after the write dropped the entry.
   */
  private epoch = 0;

  constructor(
    private readonly db: AsyncRegistryIndex,
    o: CachingOptions = {},
  ) {
    this.pins = db.pins;
    this.estargz = db.estargz;
    this.children = new LRUCache({ max: 20_000, maxSize: o.childrenMax ?? 200_000, sizeCalculation: (c) => Math.max(1, c.length) });
    this.blobs = new LRUCache({ max: 100_000, ttl: o.blobTtlMs ?? 5 * 60_000 });
    // A base layer is referenced from thousands of repositories: bounded by references, not by digests.
    this.refs = new LRUCache({ max: 50_000, maxSize: 500_000, sizeCalculation: (w) => Math.max(1, w.length), ttl: o.refTtlMs ?? 2000 });
    // Bounded by the entries kept in all maps (sizeCalculation), not by digests: one digest through many repositories stays bounded too.
    this.sizes = new LRUCache({ maxSize: 50_000, sizeCalculation: (m) => Math.max(1, m.size), ttl: o.blobTtlMs ?? 5 * 60_000 });
    this.tags = new LRUCache({ max: 20_000, ttl: o.tagTtlMs ?? 1000 });
  }

  /** The cached answer, else the database's, kept when it is worth keeping and no write came in between. */
  private async through<V extends NonNullable<unknown>>(cache: LRUCache<string, V>, key: string, read: () => Promise<V | undefined>, keep: (v: V) => boolean = () => true): Promise<V | undefined> {
    const hit = cache.get(key);
    if (hit !== undefined) return hit;
    const epoch = this.epoch;
    const v = await read();
    if (v !== undefined && keep(v) && epoch === this.epoch) cache.set(key, v);
    return v;
  }

  /** Runs a write, then drops what it may have changed. */
  private async wrote<T>(write: Promise<T>, drop: () => void): Promise<T> {
    this.epoch++;
    try {
      return await write;
    } finally {
      this.epoch++;
      drop();
    }
  }

  private dropDigest(d: Digest): void {
    this.blobs.delete(d);
    this.refs.delete(d);
    this.children.delete(d);
    this.sizes.delete(d);
  }

  // BlobIndex

  getBlob(d: Digest): Promise<BlobRow | undefined> {
    return this.through(this.blobs, d, () => this.db.getBlob(d));
  }
  putBlob(d: Digest, size: number, mediaType: string | null, now?: number): Promise<void> {
    return this.wrote(this.db.putBlob(d, size, mediaType, now), () => this.blobs.delete(d));
  }
  deleteBlob(d: Digest): Promise<void> {
    return this.wrote(this.db.deleteBlob(d), () => this.blobs.delete(d));
  }
  touch(d: Digest, now?: number): Promise<void> {
    return this.db.touch(d, now);
  }
  flushAccess(): Promise<void> {
    return this.db.flushAccess();
  }
  totals(): Promise<{ total: number; count: number }> {
    return this.db.totals();
  }
  evictable(limit: number): Promise<Array<{ digest: Digest; size: number }>> {
    return this.db.evictable(limit);
  }
  newest(): Promise<{ digest: Digest; size: number } | undefined> {
    return this.db.newest();
  }
  allDigests(): Promise<Digest[]> {
    return this.db.allDigests();
  }

  // ManifestIndex

  recordManifest(m: ManifestRecord): Promise<void> {
    return this.wrote(this.db.recordManifest(m), () => {
      this.dropDigest(m.digest);
      for (const c of m.children) this.dropDigest(c.digest);
    });
  }
  childrenOf(parent: Digest): Promise<ChildDescriptor[]> {
    // Only a recorded manifest's list is kept: an empty one may be a manifest not recorded yet.
    return this.through(
      this.children,
      parent,
      () => this.db.childrenOf(parent),
      (c) => c.length > 0,
    ) as Promise<ChildDescriptor[]>;
  }
  deleteChildren(parent: Digest): Promise<void> {
    return this.wrote(this.db.deleteChildren(parent), () => this.dropDigest(parent));
  }
  addRefs(upstream: string, repository: string, digests: Iterable<Digest>): Promise<void> {
    const list = [...digests];
    return this.wrote(this.db.addRefs(upstream, repository, list), () => {
      for (const d of list) this.dropDigest(d);
    });
  }
  refsOf(d: Digest): Promise<Where[]> {
    return this.through(this.refs, d, () => this.db.refsOf(d)) as Promise<Where[]>;
  }
  async descriptorSize(d: Digest, where: Where): Promise<number | undefined> {
    const key = `${where.upstream} ${where.repository}`;
    const hit = this.sizes.get(d)?.get(key);
    if (hit !== undefined) return hit;
    const epoch = this.epoch;
    const size = await this.db.descriptorSize(d, where);
    if (size !== undefined && epoch === this.epoch) {
      // A new map each time, so the LRU counts its size (it does not see a mutation); at most SIZES_PER_DIGEST
      // repositories per digest (the oldest goes), so copying stays cheap for a base layer used everywhere.
      const m = new Map(this.sizes.get(d));
      if (m.size >= SIZES_PER_DIGEST) m.delete(m.keys().next().value!);
      this.sizes.set(d, m.set(key, size));
    }
    return size;
  }
  isReferenced(d: Digest): Promise<boolean> {
    return this.db.isReferenced(d);
  }
  deleteRef(upstream: string, repository: string, d: Digest): Promise<boolean> {
    return this.wrote(this.db.deleteRef(upstream, repository, d), () => this.dropDigest(d));
  }
  hasRepository(upstream: string, repository: string): Promise<boolean> {
    return this.db.hasRepository(upstream, repository);
  }
  repositories(): Promise<Where[]> {
    return this.db.repositories();
  }
  localManifests(): Promise<Digest[]> {
    return this.db.localManifests();
  }

  // TagIndex: upstream tags for at most tagTtlMs, local ones read through.

  private tagKey(upstream: string, repository: string, tag: string): string {
    return `${upstream} ${repository} ${tag}`;
  }
  async getTag(upstream: string, repository: string, tag: string): Promise<TagRow | undefined> {
    if (upstream === LOCAL_UPSTREAM) return this.db.getTag(upstream, repository, tag);
    const rows = await this.tagRows(upstream, repository, tag);
    // As the database answers it (pg-index.ts getTag): the tag's own content, else the latest checked.
    return rows.find((r) => r.accept === '*') ?? [...rows].sort((a, b) => b.checkedAt - a.checkedAt)[0];
  }
  async tagRows(upstream: string, repository: string, tag: string): Promise<TagRow[]> {
    if (upstream === LOCAL_UPSTREAM) return this.db.tagRows(upstream, repository, tag);
    return (await this.through(this.tags, this.tagKey(upstream, repository, tag), () => this.db.tagRows(upstream, repository, tag)))!;
  }
  putTag(t: TagInput): Promise<void> {
    return this.wrote(this.db.putTag(t), () => this.tags.delete(this.tagKey(t.upstream, t.repository, t.tag)));
  }
  listTags(upstream: string, repository: string): Promise<string[]> {
    return this.db.listTags(upstream, repository);
  }
  allTags(): Promise<TagRow[]> {
    return this.db.allTags();
  }
  deleteTag(upstream: string, repository: string, tag: string): Promise<void> {
    return this.wrote(this.db.deleteTag(upstream, repository, tag), () => this.tags.delete(this.tagKey(upstream, repository, tag)));
  }
  async deleteTagsOf(upstream: string, repository: string, d: Digest): Promise<string[]> {
    const gone = await this.wrote(this.db.deleteTagsOf(upstream, repository, d), () => {});
    for (const tag of gone) this.tags.delete(this.tagKey(upstream, repository, tag));
    return gone;
  }

  // ReferrerIndex: always the database's.

  referrersOf(upstream: string, repository: string, subject: Digest): Promise<ReferrerDescriptor[]> {
    return this.db.referrersOf(upstream, repository, subject);
  }
  referrerDigests(subject: Digest): Promise<Digest[]> {
    return this.db.referrerDigests(subject);
  }
  putUpstreamReferrers(upstream: string, repository: string, subject: Digest, list: readonly ReferrerDescriptor[], checkedAt: number): Promise<void> {
    return this.db.putUpstreamReferrers(upstream, repository, subject, list, checkedAt);
  }
  referrersCheckedAt(upstream: string, repository: string, subject: Digest): Promise<number | undefined> {
    return this.db.referrersCheckedAt(upstream, repository, subject);
  }
  forgetReferrer(d: Digest): Promise<void> {
    return this.db.forgetReferrer(d);
  }

  probe(): Promise<void> {
    return this.db.probe();
  }
  schemaVersion(): Promise<number> {
    return this.db.schemaVersion();
  }
  close(): Promise<void> {
    for (const c of [this.blobs, this.children, this.refs, this.sizes, this.tags]) c.clear();
    return this.db.close();
  }
}
