import type { Context, Next } from 'koa';
import { RegistryError } from '../oci/errors.ts';
import type { Upstreams } from '../registry/upstreams.ts';
import { type AccessRules, type Identity, ruleName } from './access-rules.ts';
import { type ClientAuth, unauthorized } from './client-auth.ts';

/** Upload sessions: every method is part of a push (a session's GET tells its pusher the offset). */
const UPLOADS = /^\/v2\/(.+)\/blobs\/uploads\/([^/]*)$/;
/** Manifests and blobs: PUT, DELETE (and any other method but GET and HEAD) write. */
const NAMED = /^\/v2\/(.+)\/(manifests|blobs)\/([^/]+)$/;

export interface WriteRulesOptions {
  auth?: ClientAuth;
  /** `local.allowAnonymousPush`: without client auth, pushes are refused unless this is true. */
  allowAnonymousPush: boolean;
}

/** The repository name a request writes to, or undefined for a read (or a path that names none). */
export function writeTarget(ctx: Context): string | undefined {
  const upload = UPLOADS.exec(ctx.path);
  if (upload) return upload[1];
  if (ctx.method === 'GET' || ctx.method === 'HEAD') return undefined;
  return NAMED.exec(ctx.path)?.[1];
}

/**
 * Who may write (push, delete) local repositories, in front of the handlers. Writes to names that are not
 * local pass on: the handler answers them 405 UNSUPPORTED naming the writable prefixes, whoever asks.
 *  - Without client auth (no htpasswd, no tokens) every write is 403 DENIED, saying how to allow them, unless
 *    `local.allowAnonymousPush`.
 *  - With it, an anonymous write is 401 with the challenge (the client then sends its credentials), and an
 *    authenticated client that may not write the name is 403 DENIED, never 401: a client answered 401 for
 *    good credentials retries them forever.
 * Credentials were checked by ClientAuth.identify before this (the same throttle and dummy-hash timing as
 * pulls). A cross-repository mount from a repository the client may not read is turned into a plain upload
 * (202 and a session, as distribution does): the blob's presence there is not the client's to learn.
 */
export function writeRules(upstreams: Upstreams, o: WriteRulesOptions) {
  const credentials = !!o.auth?.takesCredentials;
  return async (ctx: Context, next: Next): Promise<void> => {
    const name = writeTarget(ctx);
    if (name === undefined) return next();
    let local: boolean;
    try {
      const ns = ctx.query.ns;
      local = upstreams.route(name, typeof ns === 'string' ? ns : undefined).local === true;
    } catch {
      return next(); // a bad name or ns: the handler answers it as it always does
    }
    if (!local) return next();
    if (!credentials) {
      if (o.allowAnonymousPush) return next();
      throw new RegistryError(
        'DENIED',
        `pushes are refused: berth has no client auth; configure users (auth.htpasswd with auth.push, or auth.tokensFile with push: scopes), or set local.allowAnonymousPush: true`,
      );
    }
    const who = (ctx.state.identity as Identity | undefined) ?? { kind: 'anonymous' };
    const rules = o.auth!.rules;
    if (who.kind === 'anonymous') throw unauthorized(`authentication required to push to ${name}`);
    if (!rules.mayWrite(who, name)) {
      throw new RegistryError('DENIED', `${who.kind === 'user' ? `user ${who.name}` : 'this token'} may not push to ${name} (auth.push, or a token's push: scopes)`);
    }
    if (ctx.method === 'POST' && typeof ctx.query.from === 'string' && !mayReadFrom(upstreams, rules, who, ctx.query.from)) {
      const { mount: _m, from: _f, ...rest } = ctx.query;
      ctx.query = rest;
    }
    return next();
  };
}

/**
 * Whether a mount may look at `from`. A name without a registry (`team/app`, not `quay.io/team/app`) mounts
 * from that repository under any upstream (src/registry/uploads/uploads.ts), so under read rules it is
 * refused: the rules could allow the default upstream's repository and not another one's of the same name.
 */
function mayReadFrom(upstreams: Upstreams, rules: AccessRules, who: Identity, from: string): boolean {
  if (!rules.active) return true;
  try {
    const route = upstreams.route(from, undefined);
    if (!route.local && !route.explicit) return false;
    return rules.mayRead(who, ruleName(route.upstream, route.repository));
  } catch {
    return true; // not a name: the handler refuses the mount itself
  }
}

/** Start-up warnings about who may push, for the operator (logged by `berth serve`). */
export function pushWarnings(o: { localEnabled: boolean; allowAnonymousPush: boolean; auth?: ClientAuth }): string[] {
  if (!o.localEnabled) return [];
  if (o.allowAnonymousPush) return ['local.allowAnonymousPush is true: anyone who can reach berth may push to and delete in its local repositories'];
  if (!o.auth?.takesCredentials) return ['local repositories take no pushes: berth has no client auth (set auth.htpasswd with auth.push, or local.allowAnonymousPush: true)'];
  if (!o.auth.anyWriter) return ['local repositories take no pushes: no auth.push rule and no token with a push: scope'];
  return [];
}
