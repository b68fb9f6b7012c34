import type { Context, Next } from 'koa';
import { type Digest, parseDigest } from '../oci/digest.ts';
import { RegistryError } from '../oci/errors.ts';
import type { Route, Upstreams } from '../registry/upstreams.ts';
import { type AccessRules, type Identity, ruleName } from './access-rules.ts';
import { unauthorized } from './client-auth.ts';

const NAMED = /^\/v2\/(.+)\/(manifests|blobs|referrers)\/([^/]+)$/;
const TAGS = /^\/v2\/(.+)\/tags\/list$/;
/** The referrers API (issue #10): a name check like tags/list; the subject digest itself reveals nothing stored. */
const REFERRERS = /^\/v2\/(.+)\/referrers\/[^/]+$/;

/** What of the index read-rules needs: which repositories a digest is known from. */
export interface DigestOrigins {
  refsOf(d: Digest): Promise<Array<{ upstream: string; repository: string }>>;
}

/**
 * `auth.rules` in front of the registry API. A name is checked as `<registry>/<repository>` after routing
 * (so `?ns=`, host prefixes and Docker Hub's `library/` all land on the same name); a local repository by
 * its own name (`site/app`). Content addressed by
 * digest is shared across repositories in the cache, so a digest is served under a readable name only if
 * berth knows it from that name, from another name the client may read, or from nowhere yet (then it is
 * fetched from the upstream under the name asked). A digest known only from repositories the client may not
 * read is answered 404 as if unknown: its bytes came with credentials the client does not have.
 */
export function readRules(rules: AccessRules, upstreams: Upstreams, index: DigestOrigins) {
  return async (ctx: Context, next: Next): Promise<void> => {
    if (!rules.active) return next();
    // Writes are write-rules.ts's (it ran first); the upload and manifest handlers check what is in the repository.
    if (ctx.method !== 'GET' && ctx.method !== 'HEAD') return next();
    const who = (ctx.state.identity as Identity | undefined) ?? { kind: 'anonymous' };
    const named = NAMED.exec(ctx.path);
    const tags = named ? undefined : (TAGS.exec(ctx.path) ?? REFERRERS.exec(ctx.path));
    const name = named?.[1] ?? tags?.[1];
    if (name === undefined) return next();
    let route: Route;
    try {
      const ns = ctx.query.ns;
      route = upstreams.route(name, typeof ns === 'string' ? ns : undefined);
    } catch {
      return next(); // the handler answers the bad name or ns as it always does
    }
    const full = ruleName(route.upstream, route.repository);
    if (!rules.mayRead(who, full)) {
      if (who.kind === 'anonymous') throw unauthorized(`authentication required to pull ${full}`);
      throw new RegistryError('DENIED', `${describe(who)} may not pull ${full}`);
    }
    // A referrers list is of this repository only (the index keys it so): the name check above is all it needs.
    if (named && named[2] !== 'referrers' && named[3]!.includes(':')) {
      let digest: Digest;
      try {
        digest = parseDigest(named[3]!);
      } catch {
        return next();
      }
      const known = await index.refsOf(digest);
      const here = known.some((r) => r.upstream === route.upstream && r.repository === route.repository);
      if (known.length > 0 && !here && !known.some((r) => rules.mayRead(who, ruleName(r.upstream, r.repository)))) {
        const what = named[2] === 'blobs' ? 'BLOB_UNKNOWN' : 'MANIFEST_UNKNOWN';
        throw new RegistryError(what, `${named[2] === 'blobs' ? 'blob' : 'manifest'} ${digest} is not known in ${full}`);
      }
    }
    return next();
  };
}

function describe(who: Identity): string {
  return who.kind === 'user' ? `user ${who.name}` : 'this token';
}
