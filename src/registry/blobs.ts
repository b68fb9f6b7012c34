import type { Readable } from 'node:stream';
import { RegistryError } from '../oci/errors.ts';
import type { Digest } from '../oci/digest.ts';
import type { ByteRange } from '../oci/range.ts';
import type { Priority } from '../upstream/bandwidth.ts';
import { header } from '../upstream/client.ts';
import type { Fill, BlobSource } from './fill/fill.ts';
import type { Route } from './upstreams.ts';
import type { RegistryContext } from './context.ts';
import { IntegrityError } from './integrity.ts';
import { withinClaim } from './claimed-range.ts';

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

/** How long an upstream HEAD's answer serves other HEADs of the same blob. */
const HEAD_MEMO_MS = 5000;

/** How long after a lazy Range read the background completion of the blob starts. */
const LAZY_COMPLETION_DELAY_MS = 1000;

/**
 * The pull-through logic for blobs: local first; else join or start the one fill of that digest.
 * Requests without `ns` or a host prefix go to the upstream that referenced the digest.
 */
export class Blobs {
  /** Upstream HEADs in flight or just answered, by (upstream, repository, digest): concurrent HEADs of one blob share one. */
  private readonly heads = new Map<string, Promise<number>>();

  constructor(private readonly ctx: RegistryContext) {}

  /**
   * The route for a blob request: the one the client named; else (no ns, no host prefix) the upstream
   * whose manifests of the requested repository referenced the blob, the default upstream first. Another
   * repository's manifests never steer a request: any repository can name any digest.
   */
  routeFor(route: Route, d: Digest): Route {
    if (route.explicit) return route;
    const same = this.ctx.index.refsOf(d).filter((r) => r.repository === route.repository && this.ctx.upstreams.get(r.upstream));
    const ref = same.find((r) => r.upstream === route.upstream) ?? same[0];
    return ref ? { upstream: ref.upstream, repository: route.repository, explicit: false } : route;
  }

  /** Committed blob, or undefined. A row whose file vanished is forgotten. */
  async cached(d: Digest): Promise<BlobHandle | undefined> {
    const { index, store } = this.ctx;
    const row = index.getBlob(d);
    const size = await store.size(d);
    if (size === undefined) {
      if (row) index.deleteBlob(d);
      return undefined;
    }
    // A file under blobs/ was verified before its rename; a crash before its index row only lost the row.
    if (!row) index.putBlob(d, size, null);
    index.touch(d);
    return { digest: d, size, source: 'cache', read: (s, e) => store.read(d, s, e), send: (s, e, w) => store.send(d, s, e, w) };
  }

  /** HEAD: the size without downloading the blob. */
  async stat(route: Route, d: Digest): Promise<{ size: number; cached: boolean }> {
    const hit = await this.cached(d);
    if (hit) return { size: hit.size, cached: true };
    this.ensureOnline(d);
    const r = this.routeFor(route, d);
    const fill = this.ctx.fills.get(d, r.upstream);
    if (fill?.size !== undefined) return { size: fill.size, cached: false };
    const key = `${r.upstream} ${r.repository} ${d}`;
    let size = this.heads.get(key);
    if (!size) {
      // A size answered is kept a few seconds (a digest's size never changes; clients arriving just after
      // the answer would otherwise each make another HEAD); a failure is forgotten at once.
      size = this.headUpstream(r, d);
      const forget = () => this.heads.delete(key);
      size.then(() => setTimeout(forget, HEAD_MEMO_MS).unref(), forget);
      this.heads.set(key, size);
    }
    return { size: await size, cached: false };
  }

  private async headUpstream(r: Route, d: Digest): Promise<number> {
    const res = await this.ctx.upstreams.client(r).blob('HEAD', r.repository, d);
    await res.body.dump();
    const size = Number(header(res.headers, 'content-length'));
    if (!Number.isSafeInteger(size) || size < 0) throw new RegistryError('UPSTREAM_ERROR', `upstream ${r.upstream} sent no size for blob ${d}`);
    return size;
  }

  /**
   * Opens a blob for reading. `wantsWhole` says whether the client asked for the whole blob, which
   * starts the sequential fill at foreground priority, or for ranges (parsed by the caller once the size
   * is known), which are fetched lazily and the rest completed per `lazyFill`. `client` (its address) is
   * counted against `fills.maxPerClient` if a new fill starts for it.
   */
  async open(route: Route, d: Digest, wantsWhole: boolean, client?: string): Promise<BlobHandle> {
    const hit = await this.cached(d);
    if (hit) {
      this.ctx.metrics.hits.inc({ kind: 'blob' });
      return hit;
    }
    this.ensureOnline(d);
    this.ctx.metrics.misses.inc({ kind: 'blob' });
    // A Range read needs the size before anything is fetched (a suffix range, a 416): when no cached
    // manifest declared it, a HEAD asks the upstream.
    const sizeHint = wantsWhole || this.ctx.fills.get(d, this.routeFor(route, d).upstream)?.size !== undefined ? undefined : (this.ctx.index.descriptorSize(d, this.routeFor(route, d)) ?? (await this.stat(route, d)).size);
    const fill = await this.fill(route, d, sizeHint, client);
    if (!fill) return (await this.cached(d)) ?? this.open(route, d, wantsWhole, client);
    // Wrong size or bytes found before the headers go out are the upstream's fault: a 502 naming it.
    const blame = (err: unknown): never => {
      if (err instanceof IntegrityError) throw new RegistryError('UPSTREAM_ERROR', `upstream ${this.routeFor(route, d).upstream}: ${err.message}`);
      throw err;
    };
    if (wantsWhole) {
      fill.start('foreground');
      await fill.whenFlowing().catch(blame);
    }
    const size = await fill.whenSized().catch(blame);
    // The background completion starts only for ranges that will be served: a 416 reads nothing and starts nothing.
    const prefetch = (ranges: ByteRange[]) => {
      if (this.ctx.config.lazyFill === 'background') fill.startLater(LAZY_COMPLETION_DELAY_MS);
      return fill.prefetch(ranges).catch(blame);
    };
    return { digest: d, size, source: 'fill', read: (s, e, whole) => fill.reader(s, e, { verified: whole === true }), prefetch, unused: () => fill.unused() };
  }

  /** Prewarm: fetch the whole blob at background priority and wait until it is committed. */
  async warm(route: Route, d: Digest, onBytes: (onDisk: number) => void = () => {}): Promise<{ size: number; fetched: boolean }> {
    const hit = await this.cached(d);
    if (hit) return { size: hit.size, fetched: false };
    this.ensureOnline(d);
    const fill = await this.fill(route, d);
    if (!fill) return { size: (await this.ctx.store.size(d)) ?? 0, fetched: false };
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

  private ensureOnline(d: Digest): void {
    if (this.ctx.config.offline) throw new RegistryError('BLOB_UNKNOWN', `blob ${d} is not cached and berth is offline`);
  }

  /**
   * Joins or starts the fill of `d`; undefined when the blob turned out to be committed meanwhile (a fill
   * that finished while this request was looking: it leaves the fill table only after its rename, so
   * a blob absent from the table and present on disk is complete, and fetching it again would be waste).
   */
  private async fill(route: Route, d: Digest, sizeHint?: number, clientAddress?: string): Promise<Fill | undefined> {
    const { fills, index, store, config, metrics, log } = this.ctx;
    const r = this.routeFor(route, d);
    const client = this.ctx.upstreams.client(r);
    const budget = this.ctx.budget;
    const source: BlobSource = {
      async open(range, priority: () => Priority, signal) {
        const res = await client.blob('GET', r.repository, d, range, signal);
        const partial = res.status === 206;
        let body: AsyncIterable<Buffer> = res.body;
        let start = 0;
        let size = Number(header(res.headers, 'content-length'));
        if (partial) {
          const m = /^bytes (\d+)-(\d+)\/(\d+)$/.exec(header(res.headers, 'content-range') ?? '');
          if (!m) {
            res.body.destroy();
            throw new RegistryError('UPSTREAM_ERROR', `upstream ${r.upstream} sent a 206 without a usable Content-Range`);
          }
          start = Number(m[1]);
          size = Number(m[3]);
          const claimed = Number(m[2]) - start + 1;
          const length = header(res.headers, 'content-length');
          if (claimed <= 0 || Number(m[2]) >= size || (length !== undefined && Number(length) !== claimed)) {
            res.body.destroy();
            throw new IntegrityError(`upstream ${r.upstream} answered 206 for blob ${d} with Content-Range ${m[0].slice(6)} and Content-Length ${length ?? 'none'}`);
          }
          // A body longer than its claim fails before any of the excess is written.
          body = withinClaim(res.body, claimed, `upstream ${r.upstream}, blob ${d}`);
        }
        if (!Number.isSafeInteger(size) || size < 0) {
          res.body.destroy();
          throw new RegistryError('UPSTREAM_ERROR', `upstream ${r.upstream} sent no Content-Length for blob ${d}`);
        }
        return { partial, start, size, body: budget.throttle(r.upstream, body, priority) };
      },
    };
    const known = index.descriptorSize(d, r) ?? sizeHint;
    if (!fills.get(d, r.upstream) && (await store.size(d)) !== undefined) return undefined;
    // No await between that check and acquire's own look at the table.
    const { fill, joined } = await fills.acquire(r.upstream, d, source, {
      dataFile: store.paths.ingestData(d, r.upstream),
      metaFile: store.paths.ingestMeta(d, r.upstream),
      ...(known !== undefined ? { expectedSize: known } : {}),
      retries: config.retries,
      abandonAfterMs: config.fillTimeout,
      abandonGraceMs: config.fills.abandonGrace,
      commit: async (file, size) => {
        await store.commit(d, file);
        fills.failpoints.hit('fill.index-write');
        index.putBlob(d, size, null);
        index.addRefs(r.upstream, r.repository, [d]);
        void this.ctx.quota.enforce().catch((err: Error) => log.error({ err }, 'quota pass failed'));
      },
      readCommitted: (s, e) => store.read(d, s, e),
      log: (msg, extra) => log.info({ upstream: r.upstream, ...extra }, msg),
      onUpstreamBytes: (n, priority) => metrics.upstreamBytes.inc({ upstream: r.upstream, priority }, n),
    }, clientAddress);
    if (joined) metrics.fillJoins.inc();
    return fill;
  }
}
