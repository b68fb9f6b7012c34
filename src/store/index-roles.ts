import type { Digest } from '../oci/digest.ts';
import type { ReferrerDescriptor } from '../oci/referrers.ts';

/**
 * The index's upstream key of the site's own repositories (issue #10): tags, references and pins of local
 * content are rows under this "upstream". It is no registry host (hosts have no `@`), so no configured
 * upstream can share its rows, and `upstreams.client()` of a local route fails instead of going out.
 */
export const LOCAL_UPSTREAM = '@local';

/**
 * The tag/manifest index in roles: what is known about the blobs (their rows, manifests' children,
 * which repositories referenced them, tags, pins). The SQLite implementation is src/store/store-index.ts
 * and its database handle never leaves src/store/; a PostgreSQL one (issue #12) implements these and
 * passes test/support/conformance/index.ts. Nothing here names a SQL type.
 *
 * Calls are synchronous today (better-sqlite3, with the hot rows cached in memory): the conformance
 * suite awaits every call, so an implementation whose methods return promises runs the same file once
 * the callers await them too.
 */

export interface BlobRow {
  digest: Digest;
  size: number;
  /** Set for manifests: the Content-Type the upstream sent, served back verbatim. */
  mediaType: string | null;
  createdAt: number;
  accessedAt: number;
}

export interface TagRow {
  upstream: string;
  repository: string;
  tag: string;
  /**
   * The negotiation this answer came from (src/oci/negotiation.ts): the sorted manifest media types the
   * client accepted, or `*` for the tag's own content (an index, an imported tag, a row from before keys).
   */
  accept: string;
  digest: Digest;
  mediaType: string;
  size: number;
  checkedAt: number;
}

/** What callers that do not negotiate (import, rebuild) hand in: no key means the tag's own content. */
export type TagInput = Omit<TagRow, 'accept'> & { accept?: string };

/** A descriptor a manifest names (a layer, its config, an index's child manifest). */
export interface ChildDescriptor {
  digest: Digest;
  size: number;
  mediaType: string;
}

/** A manifest as stored: what recordManifest() writes, all of it or nothing. */
export interface ManifestRecord {
  /** The repository it came from (pulled, or imported as): recorded as a reference of it and of each child. */
  upstream: string;
  repository: string;
  digest: Digest;
  size: number;
  mediaType: string;
  /** Only digest, size and mediaType of each are kept (descriptors with more fields are fine). */
  children: readonly ChildDescriptor[];
  /** The manifest's `subject` (it is a referrer of that digest: a signature, an SBOM), for the referrers API. */
  subject?: Digest;
  /** What the referrers API reports as its type (ParsedManifest.artifactType). */
  artifactType?: string;
  /** Its top-level annotations, which the referrers API lists. */
  annotations?: Record<string, string>;
}

export interface BlobIndex {
  getBlob(d: Digest): BlobRow | undefined;
  putBlob(d: Digest, size: number, mediaType: string | null, now?: number): void;
  deleteBlob(d: Digest): void;
  /** Records a read; written out by flushAccess (never per request). */
  touch(d: Digest, now?: number): void;
  flushAccess(): void;
  /** Bytes and count of everything indexed. */
  totals(): { total: number; count: number };
  /** Unpinned blobs that no local repository references, least recently used first. */
  evictable(limit: number): Array<{ digest: Digest; size: number }>;
  /** The most recently created blob (the quota keeps it). */
  newest(): { digest: Digest; size: number } | undefined;
  allDigests(): Digest[];
}

export interface ManifestIndex {
  /** The manifest's row, its children and the references to both, in one transaction. Idempotent. */
  recordManifest(m: ManifestRecord): void;
  childrenOf(parent: Digest): ChildDescriptor[];
  /** Forgets a manifest's outgoing edges (when the manifest itself is removed). */
  deleteChildren(parent: Digest): void;
  /** Remembers that `repository` on `upstream` referenced these digests. */
  addRefs(upstream: string, repository: string, digests: Iterable<Digest>): void;
  /** Every (upstream, repository) whose manifests referenced `d`. */
  refsOf(d: Digest): Array<{ upstream: string; repository: string }>;
  /** The size a manifest of this repository declared for `d`, if one did (only its own manifests count). */
  descriptorSize(d: Digest, where: { upstream: string; repository: string }): number | undefined;
  /** Whether any tag or recorded manifest still points at `d`. */
  isReferenced(d: Digest): boolean;
  // The local registry (issue #10): deletes, the catalog, gc roots.
  /** Forgets one reference row; whether there was one. */
  deleteRef(upstream: string, repository: string, d: Digest): boolean;
  /** Whether anything is known of the repository: a reference or a tag. */
  hasRepository(upstream: string, repository: string): boolean;
  /** Every (upstream, repository) with references or tags, unsorted (the catalog). */
  repositories(): Array<{ upstream: string; repository: string }>;
  /** Manifests a local repository references (tagged or not): the site's own, kept by gc until deleted. */
  localManifests(): Digest[];
}

export interface TagIndex {
  /** One answer for callers that do not negotiate: the tag's own content, else the latest checked. */
  getTag(upstream: string, repository: string, tag: string): TagRow | undefined;
  /** Every cached answer of a tag, one per negotiation. */
  tagRows(upstream: string, repository: string, tag: string): TagRow[];
  putTag(t: TagInput): void;
  listTags(upstream: string, repository: string): string[];
  allTags(): TagRow[];
  /** Forgets a tag, every negotiation of it. */
  deleteTag(upstream: string, repository: string, tag: string): void;
  /** Forgets the repository's tags that name `d` (a DELETE of a local manifest); returns them. */
  deleteTagsOf(upstream: string, repository: string, d: Digest): string[];
}

/** Pinned content is never evicted; a pin is held by a reference and covers the digests it lists. */
export interface PinIndex {
  /** Replaces what `reference` pins. */
  pin(reference: string, digests: Iterable<Digest>): void;
  /** Returns how many digests the reference held. */
  unpin(reference: string): number;
  isPinned(d: Digest): boolean;
  digests(): Set<Digest>;
  references(): string[];
}

/**
 * Referrers (distribution spec v1.1 "Listing Referrers"): which manifests name a subject, per repository.
 * Rows come from recordManifest (a stored manifest with a `subject`) and from an upstream's list of
 * referrers (descriptors only: the manifests may never have been fetched). Listing is the union of both.
 */
export interface ReferrerIndex {
  /** The referrers of `subject` in (upstream, repository), by digest: stored manifests and the upstream's last list. */
  referrersOf(upstream: string, repository: string, subject: Digest): ReferrerDescriptor[];
  /** Every manifest that names `subject`, in any repository (gc: a referrer of what is kept is kept). */
  referrerDigests(subject: Digest): Digest[];
  /**
   * The upstream's list of referrers of `subject`, replacing its previous list (rows of stored manifests
   * stay), and when it was fetched.
   */
  putUpstreamReferrers(upstream: string, repository: string, subject: Digest, list: readonly ReferrerDescriptor[], checkedAt: number): void;
  /** When the upstream's list of referrers of `subject` was last fetched, if ever. */
  referrersCheckedAt(upstream: string, repository: string, subject: Digest): number | undefined;
  /** Forgets `d` as a referrer and as a subject (gc removed the manifest). */
  forgetReferrer(d: Digest): void;
}

/** A converted layer (issue #11): what the eStargz blob is, kept under (source layer, options). */
export interface EstargzLayerRow {
  source: Digest;
  /** The conversion options (chunk size, prioritised files) as one key string. */
  options: string;
  digest: Digest;
  size: number;
  diffId: Digest;
  tocDigest: Digest;
  uncompressedSize: number;
}

/** A converted image: the manifest (or index) made from `source` with `options`, and where it was converted. */
export interface EstargzImageRow {
  source: Digest;
  options: string;
  digest: Digest;
  upstream: string;
  repository: string;
  createdAt: number;
}

/** A file of a start-up set: which source layer holds it, and its tar name. */
export interface StartupFile {
  layer: Digest;
  name: string;
}

/**
 * The start-up set learned for one source image (issue #11 "Learning the startup set"): the files lazy
 * pullers read first, in the order first read, how many bytes they hold, how many pulls were observed,
 * and when the set was taken as learned (the image is then converted with those files first).
 */
export interface EstargzStartupRow {
  source: Digest;
  files: StartupFile[];
  bytes: number;
  pulls: number;
  learnedAt: number | null;
  updatedAt: number;
}

/**
 * Conversions to eStargz (src/registry/estargz/): a second tag sharing layers converts nothing again, and
 * a re-request of a converted image is an index read. Every method returns a promise (a PostgreSQL
 * implementation will be asynchronous); callers await them.
 */
export interface EstargzIndex {
  layer(source: Digest, options: string): Promise<EstargzLayerRow | undefined>;
  putLayer(row: EstargzLayerRow): Promise<void>;
  image(source: Digest, options: string): Promise<EstargzImageRow | undefined>;
  putImage(row: EstargzImageRow): Promise<void>;
  /** Every converted image, newest first (`berth ls`). */
  images(): Promise<EstargzImageRow[]>;
  /** Which conversion made `digest`, if one did. */
  imageOf(digest: Digest): Promise<EstargzImageRow | undefined>;
  /** Which conversion made the layer blob `digest`, if one did. */
  layerOf(digest: Digest): Promise<EstargzLayerRow | undefined>;
  startup(source: Digest): Promise<EstargzStartupRow | undefined>;
  putStartup(row: EstargzStartupRow): Promise<void>;
}

/** Everything the index is. */
export interface RegistryIndex extends BlobIndex, ManifestIndex, TagIndex, ReferrerIndex {
  readonly pins: PinIndex;
  readonly estargz: EstargzIndex;
  /** A tiny real read and write; throws when the index cannot answer or take writes (readiness). */
  probe(): void;
  /** Which schema the index is at (migrations applied). */
  schemaVersion(): number;
  close(): void;
}
