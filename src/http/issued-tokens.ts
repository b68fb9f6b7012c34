import { createHash, randomBytes } from 'node:crypto';
import type { Context } from 'koa';
import { LRUCache } from 'lru-cache';
import type { Identity } from './access-rules.ts';

/** How long a token berth issued is good for; clients fetch a new one when it expires (`expires_in`). */
export const ISSUED_TOKEN_TTL_S = 300;
/** Where clients fetch tokens (the `realm` of the bearer challenge); outside /v2, open to every client. */
export const TOKEN_PATH = '/_berth/token';

/**
 * Bearer tokens berth issues itself, as a distribution token server would, for one case: anonymous pulls
 * allowed beside pushes that need a login. docker sends credentials only after a challenge on `GET /v2/`,
 * and a basic challenge makes a docker without credentials fail ("no basic auth credentials") instead of
 * pulling anonymously; a bearer challenge makes every client fetch a token from the realm, with its
 * credentials when it has some (docker, podman, skopeo, containerd all speak this flow), without otherwise.
 *
 * A token is an opaque random string standing for the identity that asked for it (an htpasswd user, a
 * static token, or anonymous); permissions are the rules', checked on every request as for any identity,
 * so a token never grants more than its owner has now. Tokens live in memory (a restart makes clients fetch
 * new ones after a 401), keyed by a hash, bounded in number, and expire after ISSUED_TOKEN_TTL_S.
 */
/**
 * The token of every anonymous client: it stands for no more than a request without credentials, so it
 * is one constant and takes no room. Were anonymous tokens remembered, anyone could ask for 50,000 of them
 * and push the pushers' tokens out of the cache (their pushes would fail with a 401 half-way).
 */
const ANONYMOUS_TOKEN = 'berth.anonymous';

export class IssuedTokens {
  private readonly tokens = new LRUCache<string, Identity>({ max: 50_000, ttl: ISSUED_TOKEN_TTL_S * 1000 });

  issue(who: Identity): string {
    if (who.kind === 'anonymous') return ANONYMOUS_TOKEN;
    const token = `berth.${randomBytes(32).toString('base64url')}`;
    this.tokens.set(key(token), who);
    return token;
  }

  /** The identity a token was issued to, or undefined (unknown, expired, or from before a restart). */
  lookup(token: string): Identity | undefined {
    if (token === ANONYMOUS_TOKEN) return { kind: 'anonymous' };
    return token.startsWith('berth.') ? this.tokens.get(key(token)) : undefined;
  }
}

function key(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}

/**
 * The bearer challenge pointing at this berth's token endpoint, as the client reached it: the realm must be
 * an absolute URL, and the client's own Host header is the name it knows berth by (a Host that is not a
 * plain host[:port] gets the loopback name instead of being echoed into a header).
 */
export function bearerChallenge(ctx: Context): string {
  const host = /^[A-Za-z0-9.-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$/.test(ctx.host) ? ctx.host : `127.0.0.1:${ctx.req.socket.localPort ?? ''}`;
  return `Bearer realm="${ctx.protocol}://${host}${TOKEN_PATH}",service="berth"`;
}
