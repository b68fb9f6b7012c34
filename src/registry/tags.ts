import { RegistryError } from '../oci/errors.ts';
import type { AsyncRegistryIndex } from '../store/async-index-roles.ts';
import { servesStale } from './failures.ts';
import { isLocalRepository } from './local-names.ts';
import type { Route, Upstreams } from './upstreams.ts';

export interface TagPage {
  name: string;
  tags: string[];
  /** Query string of the next page (`n=…&last=…`), when there is one. */
  next?: string;
  /** Set when the list came from the cache because the upstream could not be asked. */
  fromCache: boolean;
}

/**
 * Tag listing: the upstream's list when it can be asked (tags berth has never seen exist there),
 * else the tags berth has cached, paginated the same way (`n`, `last`, spec "Listing Tags").
 */
export class Tags {
  private readonly index: AsyncRegistryIndex;
  private readonly upstreams: Upstreams;
  private readonly offline: (upstream: string) => boolean;

  /** `offline`: list the cached tags only, never asking an upstream. */
  constructor(o: { index: AsyncRegistryIndex; upstreams: Upstreams; offline: (upstream: string) => boolean }) {
    this.index = o.index;
    this.upstreams = o.upstreams;
    this.offline = o.offline;
  }

  async list(route: Route, displayName: string, n: number | undefined, last: string | undefined): Promise<TagPage> {
    if (isLocalRepository(route)) return this.local(route, displayName, n, last);
    if (!this.offline(route.upstream)) {
      try {
        return await this.fromUpstream(route, displayName, n, last);
      } catch (err) {
        if (!servesStale(err) || (await this.index.listTags(route.upstream, route.repository)).length === 0) throw err;
      }
    }
    return this.fromCache(route, displayName, n, last);
  }

  private async fromUpstream(route: Route, displayName: string, n: number | undefined, last: string | undefined): Promise<TagPage> {
    const page = await this.upstreams.client(route).tags(route.repository, { ...(n !== undefined ? { n } : {}), ...(last !== undefined ? { last } : {}) });
    let { tags, next } = page;
    if (!next) {
      // Upstreams that ignore n and last (distribution 2.8 does) answer with everything: page it here.
      ({ tags, next } = paginate(tags, n, last));
    }
    return { name: displayName, tags, ...(next ? { next } : {}), fromCache: false };
  }

  /** A local repository's tags are the index's (never an upstream's); one that exists with no tags lists none. */
  private async local(route: Route, displayName: string, n: number | undefined, last: string | undefined): Promise<TagPage> {
    if (!(await this.index.hasRepository(route.upstream, route.repository))) {
      throw new RegistryError('NAME_UNKNOWN', `local repository ${route.repository} does not exist (nothing was pushed to it)`);
    }
    const { tags, next } = paginate(await this.index.listTags(route.upstream, route.repository), n, last);
    return { name: displayName, tags, ...(next ? { next } : {}), fromCache: true };
  }

  private async fromCache(route: Route, displayName: string, n: number | undefined, last: string | undefined): Promise<TagPage> {
    const all = await this.index.listTags(route.upstream, route.repository);
    if (all.length === 0) {
      throw new RegistryError('NAME_UNKNOWN', `repository ${route.upstream}/${route.repository} has no cached tags${this.offline(route.upstream) ? ' and berth is offline' : ''}`);
    }
    const { tags, next } = paginate(all, n, last);
    return { name: displayName, tags, ...(next ? { next } : {}), fromCache: true };
  }
}

/** Lexical order, tags after `last`, at most `n`, and the query of the next page when there is one. */
function paginate(all: string[], n: number | undefined, last: string | undefined): { tags: string[]; next: string | undefined } {
  let tags = [...all].sort();
  if (last !== undefined) tags = tags.filter((t) => t > last);
  let next: string | undefined;
  if (n !== undefined && tags.length > n) {
    tags = tags.slice(0, n);
    if (n > 0) next = `n=${n}&last=${encodeURIComponent(tags[tags.length - 1]!)}`;
  }
  return { tags, next };
}
