import type { Readable } from 'node:stream';
import type { Logger } from 'pino';
import type { Metrics } from '../metrics.ts';
import type { Digest } from '../oci/digest.ts';
import { RegistryError } from '../oci/errors.ts';
import { IntegrityError } from '../oci/integrity.ts';
import type { ByteRange } from '../oci/range.ts';
import { SingleFlight } from '../single-flight.ts';
import type { AsyncRegistryIndex } from '../store/async-index-roles.ts';
import type { StoragePaths } from '../store/paths.ts';
import type { Quota } from '../store/quota.ts';
import { type BlobStorage, DigestMismatchError } from '../store/roles.ts';
import type { BandwidthBudget, Priority } from '../upstream/bandwidth.ts';
import { refetchIfEvicted } from './evicted.ts';
import type { BlobSource, Fill } from './fill/fill.ts';
import type { Fills } from './fill/fills.ts';
import { LOCAL_UPSTREAM } from './local-names.ts';
import type { Route, Upstreams } from './upstreams.ts';

/** A blob ready to be served: its size and a way to read any part of it. */
export interface BlobHandle {
  digest: Digest;
  size: number;
  /** 'cache' when committed, 'fill' while it is still arriving. */
  source: 'cache' | 'fill';
  /** `whole`: the client's request covers the entire blob, so this read's last byte waits for the digest check. */
  read(start: number, end: number, whole?: boolean): Readable;
  /** For committed blobs: send [start, end] through `write` with reused buffers (BlobStore.send). */
  send?(start: number, end: number, write: (chunk: Buffer) => Promise<void>): Promise<void>;
  /**
   * For blobs still arriving: fetch what `ranges` need (in a few upstream requests) and resolve once the
   * first bytes are on disk, so a failure is an error status instead of a cut 206. Call before the headers.
   */
  prefetch?(ranges: ByteRange[]): Promise<void>;
  /** For blobs still arriving: the request ends without calling `read` (lets an unread fill be abandoned). */
  unused?(): void;
}

/** What Blobs is built from (server.ts). */
export interface BlobsOptions {
  index: AsyncRegistryIndex;
  /** Any blob store; `paths` is the local working directory, where fills keep their partial files. */
  store: BlobStorage & { readonly paths: StoragePaths };
  upstreams: Upstreams;
  fills: Fills;
  budget: BandwidthBudget;
  quota: Quota;
  metrics: Metrics;
  log: Logger;
  /** Serve committed blobs only for this upstream; never ask it (Upstreams.offline). */
  offline: (upstream: string) => boolean;
  /** After a lazy Range read: complete the blob in the background, or fetch only what is read. */
  lazyFill: 'background' | 'on-demand';
  /** A fill's resumes after a broken transfer, with exponential backoff from `backoff` ms. */
  retries: { attempts: number; backoff: number };
  /** How long a fill may go on after its last reader left, when background work wants it (ms). */
  fillTimeout: number;
  /** …and when nobody else wants it (ms). */
  abandonGrace: number;
  /** Several replicas (config `cluster`): wraps each fill's source so one replica reads the upstream (src/cluster/). */
  cluster?: {
    wrap(r: Route, d: Digest, source: BlobSource): BlobSource;
    /** Before a fill commits: on shared storage, the owner's commit of the same blob (so that one copy is uploaded, not one per replica). */
    ownerCommitted(r: Route, d: Digest): Promise<void>;
  };
}

/** How long an upstream HEAD's answer serves other HEADs of the same blob. */
const HEAD_MEMO_MS = 5000;

/** How long after a lazy Range read the background completion of the blob starts. */
const LAZY_COMPLETION_DELAY_MS = 1000;

/**
 * The pull-through logic for blobs: local first; else join or start the one fill of that digest.
 * Requests without `ns` or a host prefix go to the upstream that referenced the digest.
 */
export class Blobs {
  /**
   * Upstream HEADs in flight or just answered, by (upstream, repository, digest): concurrent HEADs of one
   * blob share one. A size answered is kept a few seconds (a digest's size never changes; clients arriving
   * just after the answer would otherwise each make another HEAD); a failure is forgotten at once.
   */
  private readonly heads = new SingleFlight<number>(HEAD_MEMO_MS);
  private readonly o: BlobsOptions;

  constructor(o: BlobsOptions) {
    this.o = o;
  }

  /**
   * The route for a blob request: the one the client named; else (no ns, no host prefix) the upstream
   * whose manifests of the requested repository referenced the blob, the default upstream first. Another
   * repository's manifests never steer a request: any repository can name any digest.
   */
  async routeFor(route: Route, d: Digest): Promise<Route> {
    if (route.explicit) return route;
    const same = (await this.o.index.refsOf(d)).filter((r) => r.repository === route.repository && this.o.upstreams.get(r.upstream));
    const ref = same.find((r) => r.upstream === route.upstream) ?? same[0];
    return ref ? { upstream: ref.upstream, repository: route.repository, explicit: false } : route;
  }

  /** Committed blob, or undefined. A row whose file vanished is forgotten. */
  async cached(d: Digest): Promise<BlobHandle | undefined> {
    const { index, store } = this.o;
    const row = await index.getBlob(d);
    const size = (await store.stat(d))?.size;
    if (size === undefined) {
      if (row) await index.deleteBlob(d);
      return undefined;
    }
    // A file under blobs/ was verified before its rename; a crash before its index row only lost the row.
    if (!row) await index.putBlob(d, size, null);
    await index.touch(d);
    return { digest: d, size, source: 'cache', read: (s, e) => store.read(d, s, e), send: (s, e, w) => store.send(d, s, e, w) };
  }

  /**
   * A local repository's blob: committed and referenced by that repository ('@local' reference row), else
   * 404. Never an upstream, online or offline: a local name has none.
   */
  private async local(route: Route, d: Digest): Promise<BlobHandle> {
    const mine = (await this.o.index.refsOf(d)).some((r) => r.upstream === LOCAL_UPSTREAM && r.repository === route.repository);
    const hit = mine ? await this.cached(d) : undefined;
    if (!hit) throw new RegistryError('BLOB_UNKNOWN', `blob ${d} is not in ${route.repository}`);
    return hit;
  }

  /** HEAD: the size without downloading the blob. */
  async stat(route: Route, d: Digest): Promise<{ size: number; cached: boolean }> {
    if (route.local) return { size: (await this.local(route, d)).size, cached: true };
    const hit = await this.cached(d);
    if (hit) return { size: hit.size, cached: true };
    const r = await this.routeFor(route, d);
    this.ensureOnline(r, d);
    const fill = this.o.fills.get(d, r.upstream);
    if (fill?.size !== undefined) return { size: fill.size, cached: false };
    const size = await this.heads.run(`${r.upstream} ${r.repository} ${d}`, async () => (await this.o.upstreams.client(r).headBlob(r.repository, d)).size);
    return { size, cached: false };
  }

  /**
   * Opens a blob for reading. `wantsWhole` says whether the client asked for the whole blob, which
   * starts the sequential fill at foreground priority, or for ranges (parsed by the caller once the size
   * is known), which are fetched lazily and the rest completed per `lazyFill`. `client` (its address) is
   * counted against `fills.maxPerClient` if a new fill starts for it.
   */
  async open(route: Route, d: Digest, wantsWhole: boolean, client?: string): Promise<BlobHandle> {
    // A local blob deleted in that gap (a DELETE, gc) is a 404 after all.
    if (route.local) return refetchIfEvicted(await this.local(route, d), wantsWhole, () => this.local(route, d));
    const hit = await this.cached(d);
    if (hit) {
      this.o.metrics.hits.inc({ kind: 'blob' });
      // Evicted between this look and the read (the quota, gc, another replica): a miss after all (offline: a 404).
      return refetchIfEvicted(hit, wantsWhole, () => this.open(route, d, wantsWhole, client));
    }
    // The route is looked up once (an index query): the fill below looks again only after awaits.
    const r = await this.routeFor(route, d);
    this.ensureOnline(r, d);
    this.o.metrics.misses.inc({ kind: 'blob' });
    // A Range read needs the size before anything is fetched (a suffix range, a 416): when no cached
    // manifest declared it, a HEAD asks the upstream.
    const sizeHint = wantsWhole || this.o.fills.get(d, r.upstream)?.size !== undefined ? undefined : ((await this.o.index.descriptorSize(d, r)) ?? (await this.stat(route, d)).size);
    const fill = await this.fill(route, d, sizeHint, client);
    if (!fill) return (await this.cached(d)) ?? this.open(route, d, wantsWhole, client);
    // Wrong size or bytes found before the headers go out are the upstream's fault: a 502 naming it.
    const blame = (err: unknown): never => {
      if (err instanceof IntegrityError) throw new RegistryError('UPSTREAM_ERROR', `upstream ${r.upstream}: ${err.message}`);
      throw err;
    };
    if (wantsWhole) {
      fill.start('foreground');
      await fill.whenFlowing().catch(blame);
    }
    const size = await fill.whenSized().catch(blame);
    // The background completion starts only for ranges that will be served: a 416 reads nothing and starts nothing.
    const prefetch = (ranges: ByteRange[]) => {
      if (this.o.lazyFill === 'background') fill.startLater(LAZY_COMPLETION_DELAY_MS);
      return fill.prefetch(ranges).catch(blame);
    };
    return {
      digest: d,
      size,
      source: 'fill',
      read: (s, e, whole) => fill.reader(s, e, { verified: whole === true }),
      // A request for the whole blob (a GET, or `bytes=0-`) holds its last byte back for the digest check.
      send: (s, e, w) => fill.send(s, e, w, { verified: s === 0 && e === size - 1 }),
      prefetch,
      unused: () => fill.unused(),
    };
  }

  /** Prewarm: fetch the whole blob at background priority and wait until it is committed. */
  async warm(route: Route, d: Digest, onBytes: (onDisk: number) => void = () => {}): Promise<{ size: number; fetched: boolean }> {
    const hit = await this.cached(d);
    if (hit) return { size: hit.size, fetched: false };
    this.ensureOnline(await this.routeFor(route, d), d);
    const fill = await this.fill(route, d);
    if (!fill) return { size: (await this.o.store.stat(d))?.size ?? 0, fetched: false };
    const progress = () => onBytes(fill.extents.bytes);
    fill.on('progress', progress);
    try {
      fill.start('background');
      const size = await fill.whenSized();
      await fill.whenDone();
      return { size, fetched: true };
    } finally {
      fill.off('progress', progress);
    }
  }

  /** `r` is the resolved route (routeFor): offline is asked of the upstream the blob would come from. */
  private ensureOnline(r: Route, d: Digest): void {
    if (this.o.offline(r.upstream)) throw new RegistryError('BLOB_UNKNOWN', `blob ${d} is not cached and berth is offline`);
  }

  /**
   * Joins or starts the fill of `d`; undefined when the blob turned out to be committed meanwhile (a fill
   * that finished while this request was looking: it leaves the fill table only after its rename, so
   * a blob absent from the table and present on disk is complete, and fetching it again would be waste).
   */
  private async fill(route: Route, d: Digest, sizeHint?: number, clientAddress?: string): Promise<Fill | undefined> {
    const { fills, index, store, metrics, log, quota, budget } = this.o;
    const r = await this.routeFor(route, d);
    const client = this.o.upstreams.client(r);
    const upstreamSource: BlobSource = {
      async open(range, priority: () => Priority, signal) {
        const { partial, start, size, body, cancel } = await client.blob(r.repository, d, { ...(range ? { range } : {}), signal });
        // The fill destroys a body it will not read (a lazy fetch the upstream answered with the whole
        // blob): the throttling generator has no destroy of its own, so it gets the upstream body's.
        return { partial, start, size, body: Object.assign(budget.throttle(r.upstream, body, priority), { destroy: cancel }) };
      },
    };
    const source = this.o.cluster ? this.o.cluster.wrap(r, d, upstreamSource) : upstreamSource;
    // Index lookups before the check below, never between it and acquire.
    const known = (await index.descriptorSize(d, r)) ?? sizeHint;
    if (!fills.get(d, r.upstream) && (await store.stat(d)) !== undefined) return undefined;
    // No await between that check and acquire's own look at the table.
    const { fill, joined } = await fills.acquire(
      r.upstream,
      d,
      source,
      {
        dataFile: store.paths.ingestData(d, r.upstream),
        metaFile: store.paths.ingestMeta(d, r.upstream),
        ...(known !== undefined ? { expectedSize: known } : {}),
        repository: r.repository,
        retries: this.o.retries,
        abandonAfterMs: this.o.fillTimeout,
        abandonGraceMs: this.o.abandonGrace,
        // The fill hashed the bytes and hands over what they hashed to; the store refuses the file unless
        // that is `d` and the file is `size` bytes. A refusal is wrong bytes: an IntegrityError, the file discarded.
        commit: async (file, size, hashed) => {
          await this.o.cluster?.ownerCommitted(r, d);
          await store.commitFile(d, file, { digest: hashed, size }).catch((err: unknown) => {
            throw err instanceof DigestMismatchError ? new IntegrityError(err.message) : err;
          });
          fills.failpoints.hit('fill.index-write');
          // The file is verified and in place: the blob is committed. An index that cannot take its row now
          // (PostgreSQL away) must not fail the fill and cut every reader at its last byte; cached() writes
          // a missing row back at the next hit.
          await index
            .putBlob(d, size, null)
            .then(() => index.addRefs(r.upstream, r.repository, [d]))
            .catch((err: Error) => log.warn({ digest: d, err: err.message }, 'fill committed, but its index rows could not be written (written again at the next hit)'));
          void quota.enforce().catch((err: Error) => log.error({ err }, 'quota pass failed'));
        },
        readCommitted: (s, e) => store.read(d, s, e),
        log: (msg, extra) => log.info({ upstream: r.upstream, ...extra }, msg),
        onUpstreamBytes: (n, priority) => metrics.upstreamBytes.inc({ upstream: r.upstream, priority }, n),
      },
      clientAddress,
    );
    if (joined) metrics.fillJoins.inc();
    return fill;
  }
}
