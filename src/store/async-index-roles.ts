import type { BlobIndex, EstargzIndex, ManifestIndex, PinIndex, ReferrerIndex, RegistryIndex, TagIndex } from './index-roles.ts';

/**
 * The index roles of src/store/index-roles.ts with promised results, for an index that answers over the
 * network (PostgreSQL, issue #12: src/store/pg/). Derived, not written out, so the two can never drift: a
 * method added to a role is a method here too, with the same parameters and contract.
 *
 * berth's callers still use the synchronous roles (SQLite); `asyncIndex()` wraps a synchronous index so
 * that both run the same awaited conformance suite (test/support/conformance/index.ts) and so that callers
 * can move to these types one at a time (docs/decisions.md "Index drivers").
 */
export type Promised<T> = {
  [K in keyof T]: T[K] extends (...args: infer A) => infer R ? (...args: A) => Promise<Awaited<R>> : T[K];
};

export type AsyncBlobIndex = Promised<BlobIndex>;
export type AsyncManifestIndex = Promised<ManifestIndex>;
export type AsyncTagIndex = Promised<TagIndex>;
export type AsyncPinIndex = Promised<PinIndex>;
export type AsyncReferrerIndex = Promised<ReferrerIndex>;

/** Everything the index is, asynchronously. */
export interface AsyncRegistryIndex extends Promised<Omit<RegistryIndex, 'pins' | 'estargz'>> {
  readonly pins: AsyncPinIndex;
  /** Already asynchronous in index-roles.ts. */
  readonly estargz: EstargzIndex;
}

/**
 * A synchronous index behind the asynchronous roles. Every call runs the synchronous method inside an async
 * function, so a throw becomes a rejection (what a caller of the PostgreSQL index sees) and nothing else
 * changes: the SQLite index keeps its caches and its transactions.
 */
export function asyncIndex(sqlite: RegistryIndex): AsyncRegistryIndex {
  const s = sqlite;
  const p = s.pins;
  return {
    estargz: s.estargz,
    pins: {
      pin: async (reference, digests) => p.pin(reference, digests),
      unpin: async (reference) => p.unpin(reference),
      isPinned: async (d) => p.isPinned(d),
      digests: async () => p.digests(),
      references: async () => p.references(),
    },
    getBlob: async (d) => s.getBlob(d),
    putBlob: async (d, size, mediaType, now) => s.putBlob(d, size, mediaType, now),
    deleteBlob: async (d) => s.deleteBlob(d),
    touch: async (d, now) => s.touch(d, now),
    flushAccess: async () => s.flushAccess(),
    totals: async () => s.totals(),
    evictable: async (limit) => s.evictable(limit),
    newest: async () => s.newest(),
    allDigests: async () => s.allDigests(),
    recordManifest: async (m) => s.recordManifest(m),
    childrenOf: async (parent) => s.childrenOf(parent),
    deleteChildren: async (parent) => s.deleteChildren(parent),
    addRefs: async (upstream, repository, digests) => s.addRefs(upstream, repository, digests),
    refsOf: async (d) => s.refsOf(d),
    descriptorSize: async (d, where) => s.descriptorSize(d, where),
    isReferenced: async (d) => s.isReferenced(d),
    deleteRef: async (upstream, repository, d) => s.deleteRef(upstream, repository, d),
    hasRepository: async (upstream, repository) => s.hasRepository(upstream, repository),
    repositories: async () => s.repositories(),
    localManifests: async () => s.localManifests(),
    getTag: async (upstream, repository, tag) => s.getTag(upstream, repository, tag),
    tagRows: async (upstream, repository, tag) => s.tagRows(upstream, repository, tag),
    putTag: async (t) => s.putTag(t),
    listTags: async (upstream, repository) => s.listTags(upstream, repository),
    allTags: async () => s.allTags(),
    deleteTag: async (upstream, repository, tag) => s.deleteTag(upstream, repository, tag),
    deleteTagsOf: async (upstream, repository, d) => s.deleteTagsOf(upstream, repository, d),
    referrersOf: async (upstream, repository, subject) => s.referrersOf(upstream, repository, subject),
    referrerDigests: async (subject) => s.referrerDigests(subject),
    putUpstreamReferrers: async (upstream, repository, subject, list, checkedAt) => s.putUpstreamReferrers(upstream, repository, subject, list, checkedAt),
    referrersCheckedAt: async (upstream, repository, subject) => s.referrersCheckedAt(upstream, repository, subject),
    forgetReferrer: async (d) => s.forgetReferrer(d),
    probe: async () => s.probe(),
    schemaVersion: async () => s.schemaVersion(),
    close: async () => s.close(),
  };
}
