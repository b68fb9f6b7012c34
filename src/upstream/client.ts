import type { UpstreamConfig } from '../config/schema.ts';
import { type Digest, isDigest } from '../oci/digest.ts';
import { RegistryError } from '../oci/errors.ts';
import { bareMediaType, isManifestMediaType, MediaType } from '../oci/media-types.ts';
import type { ReferrerDescriptor } from '../oci/referrers.ts';
import { blobFromResponse, type UpstreamBlob } from './blob-response.ts';
import { readBounded } from './bodies.ts';
import type { UpstreamHealth } from './health.ts';
import { readManifest, type UpstreamManifest } from './manifest-body.ts';
import { isReferrersAnswer, readReferrers } from './referrers-body.ts';
import { withoutNs } from './tier-path.ts';
import { header, type TransportOptions, UpstreamTransport } from './transport.ts';

export type { UpstreamBlob } from './blob-response.ts';
export type { UpstreamManifest } from './manifest-body.ts';
export type { UpstreamObserver } from './transport.ts';

/** What a manifest HEAD says about the manifest a reference names now. */
export interface ManifestDescriptor {
  /** Docker-Content-Digest; undefined when the upstream did not say (or said something that is not a sha256 digest). */
  digest: Digest | undefined;
  /** The upstream's Content-Type, when it is a manifest type (a label only: berth never serves it). */
  mediaType?: string;
  size?: number;
}

/** One page of an upstream's tag list. */
export interface UpstreamTags {
  tags: string[];
  /** Query string of the next page (`n=…&last=…`) from the upstream's Link header, when it sent one. */
  next?: string;
}

export interface UpstreamClientOptions extends TransportOptions {
  /**
   * Deadline of a manifest HEAD, and of a manifest GET with its whole body (`manifestTimeout`): a manifest
   * is a few KiB, so an upstream slower than this is as good as down for the clients waiting on it.
   */
  manifestTimeoutMs?: number;
}

/** What an upstream's referrers API answered (all pages). */
export interface UpstreamReferrers {
  manifests: ReferrerDescriptor[];
  /** The upstream applied the artifactType filter asked for (OCI-Filters-Applied: artifactType on every page). */
  filtered: boolean;
}

/** Pages of a referrers answer followed (Link rel="next"): a subject with thousands of referrers is the upstream's to page, not to stream forever. */
const MAX_REFERRER_PAGES = 8;

/** Bound on a tag list body: its size is the upstream's choice (a real list of 100,000 tags is about 2 MB). */
const MAX_TAG_LIST_BYTES = 16 * 1024 * 1024;

/**
 * One upstream registry in registry terms: blobs, manifests and tag lists, checked (sizes, ranges,
 * digests, bounds) before anything is returned. Failures are RegistryErrors naming the upstream (the
 * table in src/oci/errors.ts), or an IntegrityError for bytes that are wrong. HTTP (auth, redirects,
 * the egress guard, the circuit breaker) stays inside, in transport.ts.
 */
export class UpstreamClient {
  private readonly http: UpstreamTransport;
  private readonly manifestTimeoutMs: number;

  constructor(config: UpstreamConfig, o: UpstreamClientOptions = {}) {
    this.http = new UpstreamTransport(config, o);
    this.manifestTimeoutMs = o.manifestTimeoutMs ?? 10_000;
  }

  get host(): string {
    return this.http.host;
  }

  /** `berth`: a parent berth that serves this host (tiers); `registry`: the registry itself. */
  get kind(): 'registry' | 'berth' {
    return this.http.config.kind;
  }

  /** The configured URL (for log lines). */
  get base(): URL {
    return this.http.base;
  }

  /** The circuit breaker's state (for readiness reports); only the client's own requests move it. */
  get health(): Pick<UpstreamHealth, 'down' | 'retryInMs' | 'breaker' | 'consecutiveFailures' | 'trips'> {
    return this.http.health;
  }

  /** GET a blob, or the inclusive [start, end] of it (`end` absent: to the end). */
  async blob(repository: string, digest: Digest, o: { range?: { start: number; end?: number }; signal?: AbortSignal } = {}): Promise<UpstreamBlob> {
    const headers: Record<string, string> = {};
    if (o.range) headers.range = `bytes=${o.range.start}-${o.range.end ?? ''}`;
    const res = await this.http.fetch(`v2/${repository}/blobs/${digest}`, { method: 'GET', repository, headers, ...(o.signal ? { signal: o.signal } : {}) });
    await this.http.expectOk(res, 'BLOB_UNKNOWN', `blob ${digest} in ${repository}`);
    return blobFromResponse(res, this.host, digest, o.signal);
  }

  /** HEAD a blob: its size without its bytes. */
  async headBlob(repository: string, digest: Digest, signal?: AbortSignal): Promise<{ size: number }> {
    const res = await this.http.fetch(`v2/${repository}/blobs/${digest}`, { method: 'HEAD', repository, ...(signal ? { signal } : {}) });
    await this.http.expectOk(res, 'BLOB_UNKNOWN', `blob ${digest} in ${repository}`);
    await res.body.dump();
    const size = Number(header(res.headers, 'content-length'));
    if (!Number.isSafeInteger(size) || size < 0) throw new RegistryError('UPSTREAM_ERROR', `upstream ${this.host} sent no size for blob ${digest}`);
    return { size };
  }

  /** HEAD a manifest (a tag revalidation: Docker Hub does not count HEADs against the pull rate limit), within manifestTimeout. */
  headManifest(repository: string, reference: string, accept: string, signal?: AbortSignal): Promise<ManifestDescriptor> {
    return this.withinDeadline(`manifest ${repository}:${reference}`, signal, async (s) => {
      const res = await this.http.fetch(`v2/${repository}/manifests/${reference}`, { method: 'HEAD', repository, headers: { accept }, signal: s });
      await this.http.expectOk(res, 'MANIFEST_UNKNOWN', `manifest ${repository}:${reference}`);
      await res.body.dump();
      const digest = header(res.headers, 'docker-content-digest');
      const mediaType = bareMediaType(header(res.headers, 'content-type'));
      const size = Number(header(res.headers, 'content-length'));
      return {
        digest: digest !== undefined && isDigest(digest) ? digest : undefined,
        ...(isManifestMediaType(mediaType) ? { mediaType } : {}),
        ...(Number.isSafeInteger(size) && size >= 0 && header(res.headers, 'content-length') !== undefined ? { size } : {}),
      };
    });
  }

  /**
   * GET a manifest within manifestTimeout, checked (readManifest): by digest it must hash to `expected`,
   * by tag to the upstream's own Docker-Content-Digest when it sent one.
   */
  manifest(repository: string, reference: string, accept: string, o: { expected?: Digest; signal?: AbortSignal } = {}): Promise<UpstreamManifest> {
    return this.withinDeadline(`manifest ${repository}:${reference}`, o.signal, async (s) => {
      const res = await this.http.fetch(`v2/${repository}/manifests/${reference}`, { method: 'GET', repository, headers: { accept }, signal: s });
      await this.http.expectOk(res, 'MANIFEST_UNKNOWN', `manifest ${repository}:${reference}`);
      return readManifest(res, this.host, `${repository}:${reference}`, o.expected, s);
    });
  }

  /** One page of the tag list (`n`, `last` as in the spec's "Listing Tags"); an unreadable body is UPSTREAM_ERROR. */
  async tags(repository: string, page: { n?: number; last?: string } = {}, signal?: AbortSignal): Promise<UpstreamTags> {
    const q = new URLSearchParams();
    if (page.n !== undefined) q.set('n', String(page.n));
    if (page.last !== undefined) q.set('last', page.last);
    const qs = q.size > 0 ? `?${q}` : '';
    const res = await this.http.fetch(`v2/${repository}/tags/list${qs}`, { method: 'GET', repository, ...(signal ? { signal } : {}) });
    await this.http.expectOk(res, 'NAME_UNKNOWN', `tags of ${repository}`);
    const raw = await readBounded(res.body, MAX_TAG_LIST_BYTES).catch(() => undefined);
    let body: { tags?: unknown } | undefined;
    try {
      body = raw ? (JSON.parse(raw.toString('utf8')) as { tags?: unknown } | undefined) : undefined;
    } catch {
      body = undefined;
    }
    if (!body || (body.tags !== null && body.tags !== undefined && !Array.isArray(body.tags))) {
      throw new RegistryError('UPSTREAM_ERROR', `upstream ${this.host} sent an unreadable tag list`);
    }
    const tags = ((body.tags as unknown[] | null) ?? []).filter((t): t is string => typeof t === 'string');
    const link = header(res.headers, 'link');
    const linked = link ? /<[^>?]*\?([^>]*)>\s*;\s*rel="?next"?/.exec(link)?.[1] : undefined;
    const next = linked !== undefined && this.kind === 'berth' ? withoutNs(linked) : linked;
    return { tags, ...(next ? { next } : {}) };
  }

  /**
   * The referrers of `digest` (distribution spec v1.1 "Listing Referrers"), all pages, within
   * manifestTimeout; `undefined` when the upstream has no referrers API: a 404 (a registry with the API
   * never answers 404 for it, spec), a 405, a 401 without a challenge, or a 2xx that is not an image index
   * (a catch-all route). Then
   * the caller falls back to the referrers tag schema. A body that claims to be the answer but is not
   * readable, or is too big, is UPSTREAM_ERROR naming the upstream.
   */
  referrers(repository: string, digest: Digest, o: { artifactType?: string; signal?: AbortSignal } = {}): Promise<UpstreamReferrers | undefined> {
    const what = `referrers of ${repository}@${digest}`;
    return this.withinDeadline(what, o.signal, async (s) => {
      let path = `v2/${repository}/referrers/${digest}${o.artifactType ? `?artifactType=${encodeURIComponent(o.artifactType)}` : ''}`;
      const manifests: ReferrerDescriptor[] = [];
      let filtered = o.artifactType !== undefined;
      for (let page = 0; ; page++) {
        const res = await this.http.fetch(path, { method: 'GET', repository, headers: { accept: MediaType.OciIndex }, signal: s });
        // Harbor before 2.8 answered the path 401 without a challenge: nothing a client can authenticate
        // against, so no API either (with a challenge the transport has already fetched a token).
        const unchallenged = res.status === 401 && header(res.headers, 'www-authenticate') === undefined;
        if (page === 0 && (res.status === 404 || res.status === 405 || unchallenged)) {
          await res.body.dump();
          return undefined;
        }
        await this.http.expectOk(res, 'NAME_UNKNOWN', what);
        if (!isReferrersAnswer(res)) {
          await res.body.dump();
          if (page === 0) return undefined;
          throw new RegistryError('UPSTREAM_ERROR', `upstream ${this.host} sent a page of ${what} that is not an image index`);
        }
        const p = await readReferrers(res, this.host, what);
        manifests.push(...p.manifests);
        filtered &&= p.filtered;
        // Only a path on this upstream's own /v2/ is followed: a Link is the upstream's text.
        if (!p.next || page + 1 >= MAX_REFERRER_PAGES || !p.next.startsWith('/v2/') || p.next.startsWith('//')) break;
        path = p.next.slice(1);
      }
      return { manifests, filtered };
    });
  }

  /**
   * Runs `work` with a signal that ends at manifestTimeout (or when the caller's `signal` does). On the
   * deadline the request is cut and the failure is UNAVAILABLE, which serves a cached tag stale; a stalled
   * upstream cannot serve, so it counts against its circuit breaker like a refused connection.
   */
  private async withinDeadline<T>(what: string, signal: AbortSignal | undefined, work: (signal: AbortSignal) => Promise<T>): Promise<T> {
    const deadline = AbortSignal.timeout(this.manifestTimeoutMs);
    try {
      return await work(signal ? AbortSignal.any([signal, deadline]) : deadline);
    } catch (err) {
      if (!deadline.aborted || signal?.aborted) throw err;
      this.http.health.failure();
      throw new RegistryError('UNAVAILABLE', `upstream ${this.host} did not send ${what} within ${this.manifestTimeoutMs / 1000} s`);
    }
  }

  async close(): Promise<void> {
    await this.http.close();
  }
}
