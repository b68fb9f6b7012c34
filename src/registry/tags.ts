import { RegistryError } from '../oci/errors.ts';
import { header, readBounded } from '../upstream/client.ts';
import type { RegistryContext } from './context.ts';
import type { Route } from './upstreams.ts';

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
  constructor(private readonly ctx: RegistryContext) {}

  async list(route: Route, displayName: string, n: number | undefined, last: string | undefined): Promise<TagPage> {
    if (!this.ctx.config.offline) {
      try {
        return await this.fromUpstream(route, displayName, n, last);
      } catch (err) {
        const transient = err instanceof RegistryError && (err.code === 'UNAVAILABLE' || err.code === 'UPSTREAM_ERROR');
        if (!transient || this.ctx.index.listTags(route.upstream, route.repository).length === 0) throw err;
      }
    }
    return this.fromCache(route, displayName, n, last);
  }

  private async fromUpstream(route: Route, displayName: string, n: number | undefined, last: string | undefined): Promise<TagPage> {
    const q = new URLSearchParams();
    if (n !== undefined) q.set('n', String(n));
    if (last !== undefined) q.set('last', last);
    const qs = q.size > 0 ? `?${q}` : '';
    const res = await this.ctx.upstreams.client(route).tags(route.repository, qs);
    // Bounded: the body is the upstream's choice (a real list of 100,000 tags is about 2 MB).
    const raw = await readBounded(res.body, 16 * 1024 * 1024).catch(() => undefined);
    let body: { tags?: unknown } | undefined;
    try {
      body = raw ? (JSON.parse(raw.toString('utf8')) as { tags?: unknown } | undefined) : undefined;
    } catch {
      body = undefined;
    }
    if (!body || (body.tags !== null && body.tags !== undefined && !Array.isArray(body.tags))) {
      throw new RegistryError('UPSTREAM_ERROR', `upstream ${route.upstream} sent an unreadable tag list`);
    }
    let tags = ((body.tags as unknown[] | null) ?? []).filter((t): t is string => typeof t === 'string');
    const link = header(res.headers, 'link');
    let next = link ? /<[^>?]*\?([^>]*)>\s*;\s*rel="?next"?/.exec(link)?.[1] : undefined;
    if (!next) {
      // Upstreams that ignore n and last (distribution 2.8 does) answer with everything: page it here.
      ({ tags, next } = paginate(tags, n, last));
    }
    return { name: displayName, tags, ...(next ? { next } : {}), fromCache: false };
  }

  private fromCache(route: Route, displayName: string, n: number | undefined, last: string | undefined): TagPage {
    const all = this.ctx.index.listTags(route.upstream, route.repository);
    if (all.length === 0) {
      throw new RegistryError('NAME_UNKNOWN', `repository ${route.upstream}/${route.repository} has no cached tags${this.ctx.config.offline ? ' and berth is offline' : ''}`);
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
