import { LRUCache } from 'lru-cache';
import type { Logger } from 'pino';
import type { Metrics } from '../metrics.ts';
import type { Digest } from '../oci/digest.ts';
import { RegistryError } from '../oci/errors.ts';
import { MAX_MANIFEST_BYTES, parseManifest } from '../oci/manifest.ts';
import { DEFAULT_MANIFEST_ACCEPT, isManifestMediaType } from '../oci/media-types.ts';
import { choose, storageKey } from '../oci/negotiation.ts';
import { type Reference, referenceString } from '../oci/reference.ts';
import { referrerFieldsOf } from '../oci/referrers.ts';
import { SingleFlight } from '../single-flight.ts';
import type { AsyncRegistryIndex } from '../store/async-index-roles.ts';
import type { TagRow } from '../store/index-roles.ts';
import type { BlobIngester, BlobReader } from '../store/roles.ts';
import { servesStale } from './failures.ts';
import { isLocalRepository, LOCAL_UPSTREAM } from './local-names.ts';
import type { Route, Upstreams } from './upstreams.ts';

export interface ManifestResult {
  digest: Digest;
  mediaType: string;
  size: number;
  /** The bytes exactly as the upstream sent them (GET only). */
  bytes?: Buffer;
  /** Set when a cached tag was served because the upstream could not be asked. */
  stale?: string;
  cached: boolean;
}

/**
 * Tags that another part of berth answers instead of the upstream (issue #11: `<tag>-esgz` is the eStargz
 * conversion of `<tag>`, src/registry/estargz/). `answer` returns undefined for a tag it does not own.
 */
export interface DerivedTags {
  answer(route: Route, tag: string, accept: string, method: 'GET' | 'HEAD'): Promise<ManifestResult> | undefined;
}

/** What Manifests is built from (server.ts). */
export interface ManifestsOptions {
  index: AsyncRegistryIndex;
  store: BlobReader & BlobIngester;
  upstreams: Upstreams;
  metrics: Metrics;
  log: Logger;
  /** Answer from the cache only for this upstream; never ask it (Upstreams.offline). */
  offline: (upstream: string) => boolean;
  /** How long a tag's cached answer is served without asking the upstream (ms). */
  tagTtl: number;
}

/**
 * The pull-through logic for manifests. A digest reference is answered from disk when cached and never
 * touches the upstream. A tag is answered from the cached answer of the client's negotiation
 * (src/oci/negotiation.ts) within tagTtl; after that it is revalidated with a HEAD, and served stale if
 * the upstream cannot answer, or cannot answer within manifestTimeout. Manifests are stored and served
 * byte-exact, with their own media type.
 */
export class Manifests {
  /** Identical requests in flight share one resolution (and one upstream request). */
  private readonly inflight = new SingleFlight<ManifestResult>();
  /** Manifest bytes by digest: content-addressed, so never stale. Saves a file read per hot tag request. */
  private readonly bytes = new LRUCache<string, Buffer>({ maxSize: 32 * 1024 * 1024, sizeCalculation: (b) => b.length || 1 });
  private readonly index: AsyncRegistryIndex;
  private readonly store: BlobReader & BlobIngester;
  private readonly upstreams: Upstreams;
  private readonly metrics: Metrics;
  private readonly log: Logger;
  private readonly offline: (upstream: string) => boolean;
  private readonly tagTtl: number;

  constructor(o: ManifestsOptions) {
    this.index = o.index;
    this.store = o.store;
    this.upstreams = o.upstreams;
    this.metrics = o.metrics;
    this.log = o.log;
    this.offline = o.offline;
    this.tagTtl = o.tagTtl;
  }

  private derived: DerivedTags | undefined;

  /** Hands the tags `d` owns to it (set once, in server.ts: the conversion needs Manifests itself). */
  derive(d: DerivedTags): void {
    this.derived = d;
  }

  get(route: Route, ref: Reference, accept: string, method: 'GET' | 'HEAD'): Promise<ManifestResult> {
    const derived = ref.kind === 'tag' ? this.derived?.answer(route, ref.tag, accept || DEFAULT_MANIFEST_ACCEPT, method) : undefined;
    return derived ?? this.source(route, ref, accept, method);
  }

  /** What `get` answers without derived tags: the tag or digest as cached, pushed or upstream. */
  source(route: Route, ref: Reference, accept: string, method: 'GET' | 'HEAD'): Promise<ManifestResult> {
    const key = `${route.upstream}|${route.repository}|${referenceString(ref)}|${method}|${accept}`;
    return this.inflight.run(key, () => this.resolve(route, ref, accept || DEFAULT_MANIFEST_ACCEPT, method));
  }

  private async resolve(route: Route, ref: Reference, accept: string, method: 'GET' | 'HEAD'): Promise<ManifestResult> {
    if (isLocalRepository(route)) return this.local(route, ref, method);
    if (ref.kind === 'digest') {
      const hit = await this.fromCache(ref.digest, method);
      if (hit) return hit;
      this.ensureOnline(route, ref.digest);
      this.metrics.misses.inc({ kind: 'manifest' });
      return this.fetch(route, ref.digest, accept, ref.digest, method);
    }
    const row = choose(await this.index.tagRows(route.upstream, route.repository, ref.tag), accept);
    const fromRow = async (stale?: string) => {
      const hit = row && (await this.fromCache(row.digest, method));
      return hit ? { ...hit, ...(stale ? { stale } : {}) } : undefined;
    };
    if (this.offline(route.upstream)) {
      const hit = await fromRow();
      if (hit) return hit;
      throw new RegistryError('MANIFEST_UNKNOWN', `manifest ${route.upstream}/${route.repository}:${ref.tag} is not cached and berth is offline`);
    }
    if (row && Date.now() - row.checkedAt < this.tagTtl) {
      const hit = await fromRow();
      if (hit) return hit;
    }
    if (row) {
      try {
        return await this.revalidate(route, ref.tag, row, accept, method);
      } catch (err) {
        if (!servesStale(err)) throw err;
        const hit = await fromRow(err.message);
        if (!hit) throw err;
        this.metrics.staleServed.inc({ upstream: route.upstream, reason: err.code });
        this.log.warn({ upstream: route.upstream, repository: route.repository, tag: ref.tag, error: err.message }, 'serving cached tag: upstream could not revalidate it');
        return hit;
      }
    }
    // A HEAD of an uncached tag fetches the (small) manifest too: the GET by digest that clients send
    // next is then a hit, and the tag is known offline.
    this.metrics.misses.inc({ kind: 'manifest' });
    return this.fetch(route, undefined, accept, ref.tag, method);
  }

  /**
   * A local repository (issue #10) answers from the index and the store only, never an upstream, online
   * or offline: a tag as pushed (its own content, whatever the Accept: a pushed tag has one answer), a
   * digest only if the repository holds it (any repository can name any digest; another repository's
   * or the cache's copy is not this repository's).
   */
  private async local(route: Route, ref: Reference, method: 'GET' | 'HEAD'): Promise<ManifestResult> {
    const d = ref.kind === 'tag' ? (await this.index.getTag(LOCAL_UPSTREAM, route.repository, ref.tag))?.digest : ref.digest;
    // A local tag is only ever put beside its manifest's reference row, and goes with it: no second read on
    // the hot path. A digest needs the row.
    const held = d !== undefined && (ref.kind === 'tag' || (await this.index.refsOf(d)).some((r) => r.upstream === LOCAL_UPSTREAM && r.repository === route.repository));
    const hit = held ? await this.fromCache(d, method) : undefined;
    if (hit) return hit;
    throw new RegistryError('MANIFEST_UNKNOWN', `manifest ${route.repository}${ref.kind === 'tag' ? `:${ref.tag}` : `@${ref.digest}`} is not in this local repository`);
  }

  /** Asks the upstream whether the tag still names the cached answer (a HEAD: Docker Hub does not count HEADs against the pull rate limit). */
  private async revalidate(route: Route, tag: string, row: TagRow, accept: string, method: 'GET' | 'HEAD'): Promise<ManifestResult> {
    const current = (await this.upstreams.client(route).headManifest(route.repository, tag, accept)).digest;
    if (current !== row.digest) {
      this.log.info({ upstream: route.upstream, repository: route.repository, tag, from: row.digest, to: current }, 'tag moved');
      return this.fetch(route, undefined, accept, tag, method);
    }
    // This negotiation confirmed the answer: it refreshes its own row (never another negotiation's).
    await this.index.putTag({ ...row, accept: storageKey(accept, row.mediaType), checkedAt: Date.now() });
    return (await this.fromCache(row.digest, method)) ?? this.fetch(route, row.digest, accept, tag, method);
  }

  private ensureOnline(route: Route, d: Digest): void {
    if (this.offline(route.upstream)) {
      throw new RegistryError('MANIFEST_UNKNOWN', `manifest ${route.upstream}/${route.repository}@${d} is not cached and berth is offline`);
    }
  }

  private async fromCache(d: Digest, method: 'GET' | 'HEAD'): Promise<ManifestResult | undefined> {
    let row = await this.index.getBlob(d);
    if (!row) return undefined;
    if (!row.mediaType || !isManifestMediaType(row.mediaType)) {
      // Cached as a plain blob (fetched through /blobs/ first, say), or indexed with a type berth does not
      // serve (an index from before types came from the bytes). If the bytes are a manifest, learn its
      // type; if not, the digest names a layer or config, and asking the upstream would only fail.
      const mediaType = row.size <= MAX_MANIFEST_BYTES ? await this.manifestTypeOf(d) : undefined;
      if (!mediaType) throw new RegistryError('MANIFEST_UNKNOWN', `${d} is a blob in this cache, not a manifest`);
      await this.index.putBlob(d, row.size, mediaType);
      row = { ...row, mediaType };
    }
    const mediaType = row.mediaType!;
    if (method === 'HEAD') {
      await this.index.touch(d);
      this.metrics.hits.inc({ kind: 'manifest' });
      return { digest: d, mediaType, size: row.size, cached: true };
    }
    const bytes = this.bytes.get(d) ?? (await this.store.readBytes(d));
    if (!bytes) {
      await this.index.deleteBlob(d);
      return undefined;
    }
    this.bytes.set(d, bytes);
    await this.index.touch(d);
    this.metrics.hits.inc({ kind: 'manifest' });
    return { digest: d, mediaType, size: bytes.length, bytes, cached: true };
  }

  private async manifestTypeOf(d: Digest): Promise<string | undefined> {
    const bytes = await this.store.readBytes(d);
    if (bytes?.[0] !== 0x7b) return undefined;
    try {
      const json = JSON.parse(bytes.toString('utf8')) as { schemaVersion?: unknown };
      if (json.schemaVersion !== 2) return undefined;
      const m = parseManifest(bytes);
      return m.manifests.length > 0 || m.blobs.length > 0 ? m.mediaType : undefined;
    } catch {
      return undefined;
    }
  }

  /** GETs a manifest from the upstream within the deadline, checks it, stores it byte-exact and indexes what it references. */
  private async fetch(route: Route, expected: Digest | undefined, accept: string, reference: string, method: 'GET' | 'HEAD'): Promise<ManifestResult> {
    const m = await this.upstreams.client(route).manifest(route.repository, reference, accept, expected ? { expected } : {});
    const { digest, mediaType, bytes, parsed } = m;
    await this.store.putBytes(digest, bytes);
    const { index } = this;
    await index.recordManifest({
      upstream: route.upstream,
      repository: route.repository,
      digest,
      size: bytes.length,
      mediaType,
      children: [...parsed.manifests, ...parsed.blobs],
      ...referrerFieldsOf(parsed),
    });
    if (!reference.includes(':')) {
      const tag = { upstream: route.upstream, repository: route.repository, tag: reference, digest, mediaType, size: bytes.length };
      await index.putTag({ ...tag, accept: storageKey(accept, mediaType), checkedAt: Date.now() });
    }
    return { digest, mediaType, size: bytes.length, ...(method === 'GET' ? { bytes } : {}), cached: false };
  }
}
