import { createHash } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import { RegistryError } from '../oci/errors.ts';
import type { Digest } from '../oci/digest.ts';
import { MAX_MANIFEST_BYTES, parseManifest } from '../oci/manifest.ts';
import { DEFAULT_MANIFEST_ACCEPT, bareMediaType, isManifestMediaType } from '../oci/media-types.ts';
import { referenceString, type Reference } from '../oci/reference.ts';
import { header } from '../upstream/client.ts';
import type { RegistryContext } from './context.ts';
import type { Route } from './upstreams.ts';

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

/** Upstream failures after which a cached tag is still served (stale-if-error). */
function isTransient(err: unknown): err is RegistryError {
  return err instanceof RegistryError && (err.code === 'UNAVAILABLE' || err.code === 'UPSTREAM_ERROR');
}

/** Whether a client's Accept list admits a media type (no list, or a wildcard, admits everything). */
export function accepts(accept: string, mediaType: string): boolean {
  const types = accept.split(',').map((t) => bareMediaType(t)).filter(Boolean);
  return types.length === 0 || types.includes('*/*') || types.includes(bareMediaType(mediaType));
}

/**
 * The pull-through logic for manifests. A digest reference is answered from disk when cached and never
 * touches the upstream. A tag is answered from cache within tagTtl; after that it is revalidated with a
 * HEAD, and served stale if the upstream cannot answer. Manifests are stored and served byte-exact.
 */
export class Manifests {
  private readonly inflight = new Map<string, Promise<ManifestResult>>();
  /** Manifest bytes by digest: content-addressed, so never stale. Saves a file read per hot tag request. */
  private readonly bytes = new LRUCache<string, Buffer>({ maxSize: 32 * 1024 * 1024, sizeCalculation: (b) => b.length || 1 });

  constructor(private readonly ctx: RegistryContext) {}

  get(route: Route, ref: Reference, accept: string, method: 'GET' | 'HEAD'): Promise<ManifestResult> {
    const key = `${route.upstream}|${route.repository}|${referenceString(ref)}|${method}|${accept}`;
    let p = this.inflight.get(key);
    if (!p) {
      p = this.resolve(route, ref, accept || DEFAULT_MANIFEST_ACCEPT, method).finally(() => this.inflight.delete(key));
      this.inflight.set(key, p);
    }
    return p;
  }

  private async resolve(route: Route, ref: Reference, accept: string, method: 'GET' | 'HEAD'): Promise<ManifestResult> {
    if (ref.kind === 'digest') {
      const hit = await this.fromCache(ref.digest, method);
      if (hit) return hit;
      this.ensureOnline(route, ref.digest);
      this.ctx.metrics.misses.inc({ kind: 'manifest' });
      return this.fetch(route, ref.digest, accept, ref.digest, method);
    }
    const { index, config } = this.ctx;
    const tag = index.getTag(route.upstream, route.repository, ref.tag);
    const usable = tag && accepts(accept, tag.mediaType) ? tag : undefined;
    const fromTag = async (stale?: string) => {
      const hit = usable && (await this.fromCache(usable.digest, method));
      return hit ? { ...hit, ...(stale ? { stale } : {}) } : undefined;
    };
    if (config.offline) {
      const hit = await fromTag();
      if (hit) return hit;
      throw new RegistryError('MANIFEST_UNKNOWN', `manifest ${route.upstream}/${route.repository}:${ref.tag} is not cached and berth is offline`);
    }
    if (usable && Date.now() - usable.checkedAt < config.tagTtl) {
      const hit = await fromTag();
      if (hit) return hit;
    }
    const client = this.ctx.upstreams.client(route);
    if (usable) {
      // Revalidate with a HEAD: Docker Hub does not count HEADs against the pull rate limit.
      try {
        const res = await client.manifest('HEAD', route.repository, ref.tag, accept);
        await res.body.dump();
        const current = header(res.headers, 'docker-content-digest');
        if (current === usable.digest) {
          index.putTag({ ...usable, checkedAt: Date.now() });
          const hit = await fromTag();
          if (hit) return hit;
          return this.fetch(route, usable.digest, accept, ref.tag, method);
        }
        this.ctx.log.info({ upstream: route.upstream, repository: route.repository, tag: ref.tag, from: usable.digest, to: current }, 'tag moved');
      } catch (err) {
        if (!isTransient(err)) throw err;
        const hit = await fromTag(err.message);
        if (!hit) throw err;
        this.ctx.metrics.staleServed.inc({ upstream: route.upstream, reason: err.code });
        this.ctx.log.warn({ upstream: route.upstream, repository: route.repository, tag: ref.tag, error: err.message }, 'serving cached tag: upstream could not revalidate it');
        return hit;
      }
    }
    // A HEAD of an uncached tag fetches the (small) manifest too: the GET by digest that clients send
    // next is then a hit, and the tag is known offline.
    this.ctx.metrics.misses.inc({ kind: 'manifest' });
    return this.fetch(route, undefined, accept, ref.tag, method);
  }

  private ensureOnline(route: Route, d: Digest): void {
    if (this.ctx.config.offline) {
      throw new RegistryError('MANIFEST_UNKNOWN', `manifest ${route.upstream}/${route.repository}@${d} is not cached and berth is offline`);
    }
  }

  private async fromCache(d: Digest, method: 'GET' | 'HEAD'): Promise<ManifestResult | undefined> {
    let row = this.ctx.index.getBlob(d);
    if (!row) return undefined;
    if (!row.mediaType) {
      // Cached as a plain blob (fetched through /blobs/ first, say). If the bytes are a manifest, learn
      // that; if not, the digest names a layer or config, and asking the upstream would only fail.
      const mediaType = row.size <= MAX_MANIFEST_BYTES ? await this.manifestTypeOf(d) : undefined;
      if (!mediaType) throw new RegistryError('MANIFEST_UNKNOWN', `${d} is a blob in this cache, not a manifest`);
      this.ctx.index.putBlob(d, row.size, mediaType);
      row = { ...row, mediaType };
    }
    const mediaType = row.mediaType!;
    if (method === 'HEAD') {
      this.ctx.index.touch(d);
      this.ctx.metrics.hits.inc({ kind: 'manifest' });
      return { digest: d, mediaType, size: row.size, cached: true };
    }
    const bytes = this.bytes.get(d) ?? (await this.ctx.store.readBytes(d));
    if (!bytes) {
      this.ctx.index.deleteBlob(d);
      return undefined;
    }
    this.bytes.set(d, bytes);
    this.ctx.index.touch(d);
    this.ctx.metrics.hits.inc({ kind: 'manifest' });
    return { digest: d, mediaType, size: bytes.length, bytes, cached: true };
  }

  private async manifestTypeOf(d: Digest): Promise<string | undefined> {
    const bytes = await this.ctx.store.readBytes(d);
    if (!bytes || bytes[0] !== 0x7b) return undefined;
    try {
      const json = JSON.parse(bytes.toString('utf8')) as { schemaVersion?: unknown };
      if (json.schemaVersion !== 2) return undefined;
      const m = parseManifest(bytes);
      return m.manifests.length > 0 || m.blobs.length > 0 ? m.mediaType : undefined;
    } catch {
      return undefined;
    }
  }

  /** GETs a manifest from the upstream, checks it, stores it byte-exact and indexes what it references. */
  private async fetch(route: Route, expected: Digest | undefined, accept: string, reference: string, method: 'GET' | 'HEAD'): Promise<ManifestResult> {
    const client = this.ctx.upstreams.client(route);
    const res = await client.manifest('GET', route.repository, reference, accept);
    const declared = Number(header(res.headers, 'content-length'));
    if (declared > MAX_MANIFEST_BYTES) {
      res.body.destroy();
      throw new RegistryError('MANIFEST_INVALID', `manifest from upstream ${route.upstream} is ${declared} bytes; the limit is ${MAX_MANIFEST_BYTES}`);
    }
    const chunks: Buffer[] = [];
    let total = 0;
    for await (const c of res.body) {
      total += (c as Buffer).length;
      if (total > MAX_MANIFEST_BYTES) {
        res.body.destroy();
        throw new RegistryError('MANIFEST_INVALID', `manifest from upstream ${route.upstream} exceeds ${MAX_MANIFEST_BYTES} bytes`);
      }
      chunks.push(c as Buffer);
    }
    const bytes = Buffer.concat(chunks);
    const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}` as Digest;
    if (expected && digest !== expected) {
      throw new RegistryError('UPSTREAM_ERROR', `upstream ${route.upstream} sent a manifest hashing to ${digest} for ${expected}`);
    }
    const headerDigest = header(res.headers, 'docker-content-digest');
    if (!expected && headerDigest && headerDigest !== digest) {
      throw new RegistryError('UPSTREAM_ERROR', `upstream ${route.upstream} sent a manifest hashing to ${digest} but labelled ${headerDigest}`);
    }
    const contentType = header(res.headers, 'content-type');
    const parsed = parseManifest(bytes, contentType);
    const mediaType = isManifestMediaType(bareMediaType(contentType)) ? bareMediaType(contentType) : parsed.mediaType;
    await this.ctx.store.putBytes(digest, bytes);
    const { index } = this.ctx;
    const children = [...parsed.manifests, ...parsed.blobs];
    index.db.transaction(() => {
      index.putBlob(digest, bytes.length, mediaType);
      index.addChildren(digest, children.map((c) => ({ digest: c.digest, size: c.size, mediaType: c.mediaType })));
      index.addRefs(route.upstream, route.repository, [digest, ...children.map((c) => c.digest)]);
    })();
    if (!reference.includes(':')) this.rememberTag(route, reference, digest, mediaType, bytes.length);
    return { digest, mediaType, size: bytes.length, ...(method === 'GET' ? { bytes } : {}), cached: false };
  }

  private rememberTag(route: Route, tag: string, digest: Digest, mediaType: string, size: number): void {
    this.ctx.index.putTag({ upstream: route.upstream, repository: route.repository, tag, digest, mediaType, size, checkedAt: Date.now() });
  }
}
