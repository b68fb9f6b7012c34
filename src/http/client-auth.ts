import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import bcrypt from 'bcryptjs';
import type { Context } from 'koa';
import { LRUCache } from 'lru-cache';
import { RegistryError } from '../oci/errors.ts';
import { type AccessRule, AccessRules, type Identity } from './access-rules.ts';
import { AuthThrottle, DEFAULT_THROTTLE, type ThrottleOptions } from './auth-throttle.ts';
import { IssuedTokens } from './issued-tokens.ts';

export interface ClientAuthConfig {
  anonymous: boolean;
  htpasswd?: string;
  tokensFile?: string;
  admins?: readonly string[];
  rules?: readonly AccessRule[];
  /** `auth.push`: who may push to which local repositories. */
  push?: readonly AccessRule[];
  /** Each password check's outcome (metrics). */
  onCheck?: (result: 'ok' | 'failed' | 'throttled') => void;
}

/** How long a successful basic check is remembered: a password removed from htpasswd stops working after it. */
const VERIFIED_TTL_MS = 2 * 60_000;
const CHALLENGE = 'Basic realm="berth"';
/** The longest a refused login from a locked-out address is held before its 401. */
const TARPIT_MS = 1000;
/** A scope on a tokens file line: `push:site/` (a prefix) or `push:site/app` (one repository and below it). */
const PUSH_SCOPE = /^push:([a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*\/?)$/;

interface StaticToken {
  hash: Buffer;
  push: readonly string[];
}

/**
 * Client authentication: HTTP basic against an htpasswd file (bcrypt only, as docker-registry), and
 * static bearer tokens for automation. bcrypt is slow on purpose, so a successful check is remembered for
 * a short while by a hash of the credentials (never the password itself), failed ones are throttled per
 * address (auth-throttle.ts), and an unknown user costs a check against a dummy hash of the same cost
 * as the real ones, so that the answer's timing does not tell which user names exist.
 *
 * Tokens file lines are `TOKEN [push:PREFIX …]` (`#` comments): a token without scopes may pull (as `*` in
 * auth.rules), one with `push:site/` may also push to local repositories under `site/`.
 */
export class ClientAuth {
  private readonly users = new Map<string, string>();
  private readonly tokens: StaticToken[] = [];
  private readonly verified = new LRUCache<string, Identity>({ max: 10_000, ttl: VERIFIED_TTL_MS });
  private readonly dummyHash: string | undefined;
  private readonly throttle: AuthThrottle;
  readonly rules: AccessRules;
  /** Tokens berth issued at its token endpoint (issued-tokens.ts), when it challenges with bearer. */
  readonly issued = new IssuedTokens();
  private readonly admins: ReadonlySet<string>;

  constructor(
    private readonly config: ClientAuthConfig,
    throttle: ThrottleOptions = DEFAULT_THROTTLE,
  ) {
    let cost = 0;
    if (config.htpasswd) {
      for (const line of readFileSync(config.htpasswd, 'utf8').split('\n')) {
        const i = line.indexOf(':');
        if (i <= 0) continue;
        const hash = line.slice(i + 1).trim();
        if (!/^\$2[aby]\$/.test(hash)) throw new Error(`${config.htpasswd}: user ${line.slice(0, i)} has a non-bcrypt hash; use htpasswd -B`);
        this.users.set(line.slice(0, i), hash);
        cost = Math.max(cost, bcrypt.getRounds(hash));
      }
    }
    this.dummyHash = cost > 0 ? bcrypt.hashSync(randomBytes(16).toString('hex'), cost) : undefined;
    if (config.tokensFile) {
      readFileSync(config.tokensFile, 'utf8')
        .split('\n')
        .forEach((line, i) => {
          const [token, ...scopes] = line.replace(/#.*$/, '').trim().split(/\s+/);
          if (!token) return;
          const push = scopes.map((s) => {
            const m = PUSH_SCOPE.exec(s);
            // The line number, never the line: the token is a secret.
            if (!m) throw new Error(`${config.tokensFile} line ${i + 1}: "${s.slice(0, 80)}" is not a scope; write push:PREFIX (e.g. push:site/) after the token`);
            return m[1]!;
          });
          this.tokens.push({ hash: sha(token), push });
        });
    }
    this.throttle = new AuthThrottle(throttle);
    this.rules = new AccessRules(config.rules ?? [], config.push ?? []);
    this.admins = new Set(config.admins ?? []);
  }

  /** Who sent the request; throws 401 (with a challenge) for missing-but-required or wrong credentials. */
  async identify(ctx: Context): Promise<Identity> {
    const header = ctx.get('Authorization') || undefined;
    if (!header) {
      if (this.config.anonymous) return { kind: 'anonymous' };
      throw unauthorized('authentication required');
    }
    const [scheme, value = ''] = header.split(/\s+/, 2);
    if (/^bearer$/i.test(scheme ?? '')) {
      const issued = this.issued.lookup(value);
      // The anonymous token is good only where anonymous requests are (it is no credential).
      if (issued && (issued.kind !== 'anonymous' || this.config.anonymous)) return issued;
      const h = sha(value);
      // Every token compared (no early exit): the time taken does not depend on which one matched.
      let found: StaticToken | undefined;
      for (const t of this.tokens) if (timingSafeEqual(t.hash, h) && !found) found = t;
      if (found) return { kind: 'token', push: found.push };
      throw unauthorized('invalid credentials');
    }
    if (!/^basic$/i.test(scheme ?? '')) throw unauthorized('invalid credentials');
    // An empty user and password is what containers/image (podman, skopeo) send on a basic challenge when
    // they have no credentials: anonymous, not a failed login (no bcrypt check, nothing for the throttle).
    if (value === 'Og==') {
      if (this.config.anonymous) return { kind: 'anonymous' };
      throw unauthorized('authentication required');
    }
    const key = sha(header).toString('hex');
    const known = this.verified.get(key);
    if (known) return known;
    const address = ctx.req.socket.remoteAddress ?? '';
    const wait = this.throttle.retryInMs(address);
    if (wait > 0) {
      this.config.onCheck?.('throttled');
      // Held for up to a second: a client retrying in a loop then costs a timer, not a core's worth of 401s.
      await sleep(Math.min(wait, TARPIT_MS));
      throw unauthorized(`too many failed logins from this address; try again in ${Math.max(1, Math.ceil(this.throttle.retryInMs(address) / 1000))} s`, wait);
    }
    const name = await this.throttle.run(() => this.checkBasic(value, address));
    if (name === undefined || name === null) this.config.onCheck?.('throttled');
    if (name === undefined) throw new RegistryError('UNAVAILABLE', 'too many logins being checked at once; try again', undefined, { 'Retry-After': '1' });
    if (name === null) throw unauthorized('too many failed logins from this address; try again later', this.throttle.retryInMs(address));
    this.config.onCheck?.(name === false ? 'failed' : 'ok');
    if (name === false) {
      this.throttle.failed(address);
      throw unauthorized('invalid credentials');
    }
    this.throttle.succeeded(address);
    const who: Identity = { kind: 'user', name };
    this.verified.set(key, who);
    return who;
  }

  /**
   * The user name when the password is right, false otherwise, after one bcrypt check of the usual cost;
   * null without a check when the address was locked out while this check waited in line.
   */
  private async checkBasic(value: string, address: string): Promise<string | false | null> {
    if (this.throttle.retryInMs(address) > 0) return null;
    const decoded = Buffer.from(value, 'base64').toString('utf8');
    const i = decoded.indexOf(':');
    const user = i > 0 ? decoded.slice(0, i) : '';
    const hash = this.users.get(user);
    const against = hash ?? this.dummyHash;
    if (!against) return false;
    const ok = await bcrypt.compare(i > 0 ? decoded.slice(i + 1) : decoded, against);
    return ok && hash !== undefined ? user : false;
  }

  /** Whether clients can log in at all (htpasswd users or tokens): without, every client is anonymous. */
  get takesCredentials(): boolean {
    return !!(this.config.htpasswd || this.config.tokensFile);
  }

  /** `auth.anonymous`: whether clients without credentials may pull. */
  get allowsAnonymous(): boolean {
    return this.config.anonymous;
  }

  /** Whether anyone may push anywhere: an auth.push rule or a token with a push scope. */
  get anyWriter(): boolean {
    return this.rules.anyPushRule || this.tokens.some((t) => t.push.length > 0);
  }

  isAdmin(who: Identity): boolean {
    return who.kind === 'user' && this.admins.has(who.name);
  }
}

export function unauthorized(message: string, retryAfterMs?: number): RegistryError {
  const headers: Record<string, string> = { 'WWW-Authenticate': CHALLENGE };
  if (retryAfterMs !== undefined) headers['Retry-After'] = String(Math.ceil(retryAfterMs / 1000));
  return new RegistryError('UNAUTHORIZED', message, undefined, headers);
}

function sha(s: string): Buffer {
  return createHash('sha256').update(s).digest();
}
