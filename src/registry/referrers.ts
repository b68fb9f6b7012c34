import type { Logger } from 'pino';
import type { Digest } from '../oci/digest.ts';
import { RegistryError } from '../oci/errors.ts';
import { MediaType } from '../oci/media-types.ts';
import { parseTag } from '../oci/reference.ts';
import { type ReferrerDescriptor, referrerDescriptors, referrersTag } from '../oci/referrers.ts';
import { SingleFlight } from '../single-flight.ts';
import type { AsyncReferrerIndex } from '../store/async-index-roles.ts';
import { servesStale } from './failures.ts';
import type { Manifests } from './manifests.ts';
import type { Route, Upstreams } from './upstreams.ts';

export interface ReferrersResult {
  manifests: ReferrerDescriptor[];
  /** The artifactType filter was applied (OCI-Filters-Applied: artifactType). */
  filtered: boolean;
  /** Set when the cached list was served because the upstream could not be asked. */
  stale?: string;
}

export interface ReferrersOptions {
  index: AsyncReferrerIndex;
  upstreams: Upstreams;
  manifests: Manifests;
  log: Logger;
  /** Answer from the index only for this upstream; never ask it (Upstreams.offline). */
  offline: (upstream: string) => boolean;
  /** How long an upstream's list is served without asking again (ms): the tag TTL. */
  tagTtl: number;
}

/**
 * The referrers API (distribution spec v1.1 "Listing Referrers"). A local repository answers from the
 * index (every stored manifest whose subject is the digest). A cached repository asks its upstream: the
 * referrers API, or, when the upstream has none, the referrers tag schema (`sha256-<hex>`, fetched
 * through the normal manifest path, so that index is cached like any tag). The upstream's list is kept in
 * the index with the time it was fetched, served within tagTtl, served stale when the upstream cannot
 * answer, and offline; what berth has stored with that subject (pulled by digest, imported) is merged in.
 * The list is descriptors only: the referrer manifests and their blobs are fetched when a client asks.
 * An unknown subject is an empty list, not a 404 (spec).
 */
export class Referrers {
  private readonly inflight = new SingleFlight<void>();

  constructor(private readonly o: ReferrersOptions) {}

  async list(route: Route, subject: Digest, artifactType: string | undefined): Promise<ReferrersResult> {
    let stale: string | undefined;
    if (!route.local && !this.o.offline(route.upstream)) stale = await this.refresh(route, subject);
    const all = await this.o.index.referrersOf(route.upstream, route.repository, subject);
    const manifests = artifactType === undefined ? all : all.filter((r) => r.artifactType === artifactType);
    return { manifests, filtered: artifactType !== undefined, ...(stale ? { stale } : {}) };
  }

  /** Brings the upstream's list up to date unless it is within tagTtl; returns why it could not (served stale). */
  private async refresh(route: Route, subject: Digest): Promise<string | undefined> {
    const { index } = this.o;
    const checked = await index.referrersCheckedAt(route.upstream, route.repository, subject);
    if (checked !== undefined && Date.now() - checked < this.o.tagTtl) return undefined;
    try {
      await this.inflight.run(`${route.upstream}|${route.repository}|${subject}`, async () => {
        const list = await this.fromUpstream(route, subject);
        await index.putUpstreamReferrers(route.upstream, route.repository, subject, list, Date.now());
      });
      return undefined;
    } catch (err) {
      // Stale-if-error, as for tags: a list fetched before, or referrers stored here, are the answer.
      if (!servesStale(err)) throw err;
      if (checked === undefined && (await index.referrersOf(route.upstream, route.repository, subject)).length === 0) throw err;
      this.o.log.warn({ upstream: route.upstream, repository: route.repository, subject, error: err.message }, 'serving cached referrers: upstream could not list them');
      return err.message;
    }
  }

  /** The upstream's referrers API, else its referrers tag; a subject with neither has none. */
  private async fromUpstream(route: Route, subject: Digest): Promise<ReferrerDescriptor[]> {
    const answer = await this.o.upstreams.client(route).referrers(route.repository, subject);
    if (answer) return answer.manifests;
    let tagged: { digest: Digest; bytes?: Buffer };
    try {
      tagged = await this.o.manifests.get(route, { kind: 'tag', tag: parseTag(referrersTag(subject)) }, MediaType.OciIndex, 'GET');
    } catch (err) {
      if (err instanceof RegistryError && err.code === 'MANIFEST_UNKNOWN') return [];
      throw err;
    }
    // Some registries without the API (GitLab's) read `sha256-<hex>` as the digest itself and answer the
    // subject: its own child manifests are not its referrers.
    if (tagged.digest === subject) return [];
    const list = tagged.bytes ? referrerDescriptors(JSON.parse(tagged.bytes.toString('utf8'))) : undefined;
    if (!list) throw new RegistryError('UPSTREAM_ERROR', `upstream ${route.upstream}: the referrers tag ${referrersTag(subject)} of ${route.repository} is not an image index`);
    return list;
  }
}
