import type Router from '@koa/router';
import type { Context } from 'koa';
import { RegistryError } from '../oci/errors.ts';
import { LOCAL_UPSTREAM } from '../registry/local-names.ts';
import type { Upstreams } from '../registry/upstreams.ts';
import type { AsyncRegistryIndex } from '../store/async-index-roles.ts';
import { ruleName } from './access-rules.ts';

export interface CatalogDeps {
  index: Pick<AsyncRegistryIndex, 'repositories'>;
  upstreams: Upstreams;
  /**
   * With auth.rules on: whether this request's client may read the repository by its rule name (ruleName:
   * `<upstream>/<repository>`, a local one plainly), the name read-rules.ts checks. A repository it may not pull is not listed either: its name is not its business.
   */
  mayList?: (ctx: Context, name: string) => boolean;
}

const MAX_PAGE = 10_000;

/**
 * The repository names of this berth as a client pulls them (docs/decisions.md "Catalog names"): local
 * repositories by their own name, cached ones as `<upstream host>/<repository>` (a host prefix routes to
 * that upstream, so every name listed is pullable as listed). Repositories of an upstream that is no
 * longer configured are left out: they cannot be pulled.
 */
export async function catalogNames(d: CatalogDeps, visible: (upstream: string, repository: string) => boolean = () => true): Promise<string[]> {
  const names = new Set<string>();
  for (const r of await d.index.repositories()) {
    if (!visible(r.upstream, r.repository)) continue;
    if (r.upstream === LOCAL_UPSTREAM) {
      if (d.upstreams.local.owns(r.repository)) names.add(r.repository);
    } else if (d.upstreams.get(r.upstream)) names.add(`${r.upstream}/${r.repository}`);
  }
  return [...names].sort();
}

/** `GET /v2/_catalog?n=&last=`: sorted, after `last`, at most `n` (else up to 10000), a `Link` to the next page. */
export function catalogRoute(router: Router, d: CatalogDeps): void {
  router.get('/v2/_catalog', async (ctx: Context) => {
    ctx.state.route = 'catalog';
    const one = (k: string) => {
      const v = ctx.query[k];
      if (Array.isArray(v)) throw new RegistryError('QUERY_INVALID', `query parameter "${k}" given more than once`);
      return v;
    };
    const nText = one('n');
    const last = one('last');
    if (nText !== undefined && (!/^\d{1,6}$/.test(nText) || Number(nText) > MAX_PAGE)) {
      throw new RegistryError('PAGINATION_NUMBER_INVALID', `n must be a whole number from 0 to ${MAX_PAGE}`);
    }
    if (last !== undefined && last.length > 512) throw new RegistryError('QUERY_INVALID', 'last is longer than any repository name');
    const n = nText === undefined ? MAX_PAGE : Number(nText);
    const mayList = d.mayList;
    let names = await catalogNames(d, mayList ? (u, r) => mayList(ctx, ruleName(u, r)) : undefined);
    if (last !== undefined) names = names.filter((r) => r > last);
    const more = names.length > n;
    names = names.slice(0, n);
    if (more && n > 0) ctx.set('Link', `</v2/_catalog?n=${n}&last=${encodeURIComponent(names[names.length - 1]!)}>; rel="next"`);
    ctx.status = 200;
    ctx.body = { repositories: names };
  });
}
