import type { IncomingHttpHeaders } from 'node:http';
import { type Dispatcher, request } from 'undici';
import type { UpstreamConfig } from '../config/schema.ts';
import { type ErrorCode, RegistryError } from '../oci/errors.ts';
import { SingleFlight } from '../single-flight.ts';
import { readBounded, readErrorText, type UpstreamBody } from './bodies.ts';
import { parseChallenges } from './challenge.ts';
import { createDispatcher } from './dispatcher.ts';
import { EgressGuard } from './egress-guard.ts';
import { UpstreamHealth } from './health.ts';
import { tierPath } from './tier-path.ts';
import { TokenCache } from './token-cache.ts';
import { realmMayReceiveCredentials } from './token-realm.ts';

export interface UpstreamResponse {
  status: number;
  headers: IncomingHttpHeaders;
  body: UpstreamBody;
}

export interface FetchOptions {
  method: 'GET' | 'HEAD';
  headers?: Record<string, string>;
  /** The repository whose pull scope the request needs (bearer token flow). */
  repository: string;
  signal?: AbortSignal;
}

/**
 * What a client reports to the composition root (log lines, metrics), given at construction. Absent in
 * tools and tests that build a client alone.
 */
export interface UpstreamObserver {
  warn(fields: Record<string, unknown>, message: string): void;
  /** An upstream request got its response headers after `seconds` (operation: manifest, blob, tags, other). */
  responded(operation: string, seconds: number): void;
  /** An upstream request failed: unreachable, timeout, server_error (502/503/504), rate_limited, circuit_open. */
  failed(kind: string): void;
}

function operationOf(path: string): string {
  const m = /\/(manifests|blobs|tags)\//.exec(path);
  return m ? ({ manifests: 'manifest', blobs: 'blob', tags: 'tags' } as Record<string, string>)[m[1]!]! : 'other';
}

/** What one upstream's clients share with the others (tokens, the egress guard) or report to. */
export interface TransportOptions {
  tokens?: TokenCache;
  health?: UpstreamHealth;
  guard?: EgressGuard;
  observer?: UpstreamObserver;
}

const MAX_REDIRECTS = 5;
const USER_AGENT = 'berth/0.1 (pull-through cache)';

export function header(h: IncomingHttpHeaders, name: string): string | undefined {
  const v = h[name];
  return Array.isArray(v) ? v[0] : v;
}

/**
 * HTTP to one upstream registry, for UpstreamClient (client.ts) only: auth (anonymous or credentialed
 * bearer tokens, basic), redirects followed by hand (Authorization never crosses to another origin), the
 * egress guard, identity encoding, the circuit breaker, and errors turned into RegistryErrors that say
 * which upstream failed and how. Nothing outside src/upstream/ sees a header or a status.
 */
export class UpstreamTransport {
  readonly host: string;
  readonly base: URL;
  readonly health: UpstreamHealth;
  private readonly dispatcher: Dispatcher;
  private readonly basicCredentials: string | undefined;
  /** Set once the upstream asked for basic auth: later requests send it up front. */
  private useBasic = false;
  /** The last bearer challenge: later requests look for a cached token for their scope up front. */
  private bearer: { realm: string; service?: string } | undefined;
  private readonly tokens: TokenCache;
  private readonly tokenFetches = new SingleFlight<string>();
  private readonly guard: EgressGuard;
  private readonly observer: UpstreamObserver | undefined;

  constructor(
    readonly config: UpstreamConfig,
    o: TransportOptions = {},
  ) {
    this.tokens = o.tokens ?? new TokenCache();
    this.guard = o.guard ?? new EgressGuard(new Set([new URL(config.url).origin]));
    this.observer = o.observer;
    this.host = config.host;
    this.base = new URL(config.url.endsWith('/') ? config.url : `${config.url}/`);
    this.dispatcher = createDispatcher(config);
    this.health = o.health ?? new UpstreamHealth();
    this.basicCredentials = config.username !== undefined ? `Basic ${Buffer.from(`${config.username}:${config.password ?? ''}`).toString('base64')}` : undefined;
  }

  /** Where the upstream goes out: the configured proxy or the environment's, for error messages. */
  get via(): string {
    const p = this.config.proxy ?? (this.base.protocol === 'https:' ? (process.env.HTTPS_PROXY ?? process.env.https_proxy) : (process.env.HTTP_PROXY ?? process.env.http_proxy));
    return p ? ` via proxy ${redactUrl(p)}` : '';
  }

  /**
   * `res` when it is a success; else its status as a RegistryError naming the upstream: `notFound` for a
   * 404 or a refusal (a private repository looks like a missing one), UNAVAILABLE for 429, and so on.
   */
  async expectOk(res: UpstreamResponse, notFound: ErrorCode, what: string): Promise<UpstreamResponse> {
    if (res.status >= 200 && res.status < 300) return res;
    const text = await readErrorText(res.body);
    const from = `upstream ${this.host} answered ${res.status} for ${what}`;
    if (res.status === 404) throw new RegistryError(notFound, `${what} not found on upstream ${this.host}`);
    if (res.status === 401 || res.status === 403) {
      throw new RegistryError(notFound, `${from}: access denied (the repository does not exist, or berth needs credentials for it)${text}`);
    }
    if (res.status === 416) throw new RegistryError('RANGE_NOT_SATISFIABLE', `${from}${text}`);
    if (res.status === 429) throw new RegistryError('UNAVAILABLE', `${from}: rate limited${text}`);
    // A parent berth's 503 is its own upstream unreachable, its limits or its disk: as passing as our own 503.
    if (res.status === 503 && this.config.kind === 'berth') throw new RegistryError('UNAVAILABLE', `${from}${text}`);
    // To an http:// upstream the request goes through the proxy without CONNECT, so a gateway error may
    // be the proxy's own: the operator should know to look there too.
    const gateway = (res.status === 502 || res.status === 503 || res.status === 504) && this.via !== '' ? ' (through its outbound proxy)' : '';
    throw new RegistryError('UPSTREAM_ERROR', `${from}${gateway}${text}`);
  }

  /** One logical request: auth and redirects resolved, any final status returned. */
  async fetch(path: string, o: FetchOptions): Promise<UpstreamResponse> {
    if (this.health.down) {
      this.observer?.failed('circuit_open');
      throw new RegistryError('UNAVAILABLE', `upstream ${this.host} is marked down after repeated failures; next try in ${Math.ceil(this.health.retryInMs / 1000)} s`, { circuitOpen: true });
    }
    const started = performance.now();
    try {
      const res = await this.authorizedRequest(new URL(this.config.kind === 'berth' ? tierPath(path, this.host) : path, this.base), o);
      this.observer?.responded(operationOf(path), (performance.now() - started) / 1000);
      // Only an upstream that cannot serve counts against it: a 500 is about one request (and a client
      // can provoke those at will), a 502/503/504 says the registry or its gateway is down.
      // A parent berth's 503 (berth in front of berth) says its upstream cannot serve this: the parent itself is up.
      if (res.status === 502 || (res.status === 503 && this.config.kind !== 'berth') || res.status === 504) {
        this.health.failure();
        this.observer?.failed('server_error');
      } else {
        this.health.success();
        if (res.status === 429) this.observer?.failed('rate_limited');
      }
      return res;
    } catch (err) {
      if (err instanceof RegistryError) throw err;
      // Our own cancellation passes through; undici also names a refused proxy tunnel AbortError.
      if (o.signal?.aborted) throw err;
      this.health.failure();
      const code = (err as { code?: string; cause?: { code?: string } }).cause?.code ?? (err as { code?: string }).code ?? '';
      this.observer?.failed(/TIMEOUT|ETIMEDOUT/.test(code) ? 'timeout' : 'unreachable');
      throw this.unreachable(err);
    }
  }

  /**
   * A network failure as the client sees it: the upstream by name and what went wrong in a few words.
   * Its URL and the outbound proxy are the site's internals: they go to the log line only.
   */
  unreachable(err: unknown): RegistryError {
    const e = err as Error & { code?: string; cause?: Error & { code?: string } };
    const parts = [e.cause?.code ?? e.code, e.message, e.cause?.message].filter((p): p is string => !!p && p !== 'fetch failed');
    const why = [...new Set(parts)].join(': ');
    const proxied = this.via !== '';
    this.observer?.warn({ upstream: this.host, url: this.base.origin, ...(proxied ? { proxy: this.via.replace(' via proxy ', '') } : {}), err: why }, 'upstream unreachable');
    return new RegistryError('UNAVAILABLE', `cannot reach upstream ${this.host}${proxied ? ' through its outbound proxy' : ''}: ${clientReason(e.cause?.code ?? e.code, why)}`);
  }

  private scope(repository: string): string {
    return `repository:${repository}:pull`;
  }

  private async authorizedRequest(url: URL, o: FetchOptions): Promise<UpstreamResponse> {
    const headers: Record<string, string> = { 'user-agent': USER_AGENT, 'accept-encoding': 'identity', ...o.headers };
    let sent: string | undefined;
    let early: { realm: string; error: unknown } | undefined;
    if (this.bearer) {
      // Once the upstream's realm is known, a repository's first request fetches its token first, as
      // containerd and docker do: sent without one, it costs a 401 round trip before the token's. If
      // that fetch fails the request goes without (some paths of an upstream may need no token); a 401
      // naming the same realm then fails with that error instead of asking the token service again.
      const { realm, service } = this.bearer;
      try {
        sent = await this.fetchToken(realm, service, this.scope(o.repository));
        headers.authorization = `Bearer ${sent}`;
      } catch (error) {
        early = { realm, error };
      }
    } else if (this.useBasic && this.basicCredentials) {
      headers.authorization = this.basicCredentials;
    }
    let res = await this.follow(url, o.method, headers, o.signal);
    if (res.status !== 401) return res;
    const challenges = parseChallenges(res.headers['www-authenticate']);
    const bearer = challenges.find((c) => c.scheme === 'bearer' && c.params.realm);
    const basic = challenges.find((c) => c.scheme === 'basic');
    if (bearer) {
      await res.body.dump();
      this.bearer = { realm: bearer.params.realm!, ...(bearer.params.service ? { service: bearer.params.service } : {}) };
      const scope = this.scope(o.repository);
      if (early && early.realm === this.bearer.realm) throw early.error;
      // A token the upstream just refused (revoked, or expired early) is not offered again.
      if (sent) this.tokens.delete(TokenCache.key(this.host, this.bearer.realm, this.bearer.service, scope), sent);
      const token = await this.fetchToken(this.bearer.realm, this.bearer.service, scope);
      headers.authorization = `Bearer ${token}`;
      res = await this.follow(url, o.method, headers, o.signal);
    } else if (basic && this.basicCredentials && headers.authorization !== this.basicCredentials) {
      await res.body.dump();
      this.useBasic = true;
      headers.authorization = this.basicCredentials;
      res = await this.follow(url, o.method, headers, o.signal);
    }
    return res;
  }

  /**
   * The token for a scope: cached, or fetched once however many requests want it at the same moment (a
   * pull's first requests arrive together). The fetch is shared, so no one caller's signal cuts it; the
   * dispatcher's timeouts and the bounded body read end a token service that stalls.
   */
  private fetchToken(realm: string, service: string | undefined, scope: string): Promise<string> {
    const key = TokenCache.key(this.host, realm, service, scope);
    const cached = this.tokens.get(key);
    if (cached) return Promise.resolve(cached);
    return this.tokenFetches.run(key, () => this.requestToken(key, realm, service, scope));
  }

  private async requestToken(key: string, realm: string, service: string | undefined, scope: string): Promise<string> {
    let url: URL;
    try {
      url = new URL(realm);
    } catch {
      throw new RegistryError('UPSTREAM_ERROR', `upstream ${this.host} sent an invalid token realm "${realm.slice(0, 100)}"`);
    }
    // A parent berth's realm is its own origin (or one the operator listed): a realm elsewhere would have the
    // edge contact a host that is not a parent, which `offline: except-parents` promises never happens.
    if (this.config.kind === 'berth' && !realmMayReceiveCredentials(this.base, url, this.config.tokenRealms)) {
      throw new RegistryError('UPSTREAM_ERROR', `upstream ${this.host} (a parent berth) named a token realm on another origin (${url.origin}); list it in tokenRealms if it is right`);
    }
    await this.guard.check(url, 'token request');
    if (service) url.searchParams.set('service', service);
    url.searchParams.set('scope', scope);
    const headers: Record<string, string> = { 'user-agent': USER_AGENT };
    if (this.basicCredentials) {
      if (realmMayReceiveCredentials(this.base, url, this.config.tokenRealms)) headers.authorization = this.basicCredentials;
      else this.warnForeignRealm(url);
    }
    const res = await this.follow(url, 'GET', headers);
    if (res.status !== 200) {
      const text = await readErrorText(res.body);
      this.observer?.warn({ upstream: this.host, realm: url.origin, status: res.status }, 'token service refused');
      throw new RegistryError('UPSTREAM_ERROR', `the token service of upstream ${this.host} answered ${res.status}${text}`);
    }
    const raw = await readBounded(res.body, 64 * 1024).catch(() => undefined);
    let body: { token?: string; access_token?: string; expires_in?: number } = {};
    try {
      body = raw ? ((JSON.parse(raw.toString('utf8')) as typeof body) ?? {}) : {};
    } catch {
      // no token in it: answered below
    }
    const token = body.token ?? body.access_token;
    if (!token) throw new RegistryError('UPSTREAM_ERROR', `the token service of upstream ${this.host} sent no token`);
    this.tokens.set(key, token, typeof body.expires_in === 'number' ? body.expires_in : 60);
    return token;
  }

  private readonly warnedRealms = new Set<string>();

  /** Once per realm: the operator should know why a credentialed pull went anonymous. */
  private warnForeignRealm(realm: URL): void {
    if (this.warnedRealms.has(realm.origin) || this.warnedRealms.size > 100) return;
    this.warnedRealms.add(realm.origin);
    this.observer?.warn(
      { upstream: this.host, url: this.base.origin, realm: realm.origin },
      "token realm is not this upstream's own: credentials withheld, token requested anonymously (list it in the upstream's tokenRealms if it is right)",
    );
  }

  /** Follows redirects by hand: blobs live on CDNs, and a bearer token must not travel there. */
  private async follow(url: URL, method: 'GET' | 'HEAD', headers: Record<string, string>, signal?: AbortSignal): Promise<UpstreamResponse> {
    let current = url;
    let h = headers;
    for (let hop = 0; ; hop++) {
      const res = await request(current, { method, headers: h, dispatcher: this.dispatcher, ...(signal ? { signal } : {}) });
      const location = header(res.headers, 'location');
      if (![301, 302, 303, 307, 308].includes(res.statusCode) || !location) {
        return { status: res.statusCode, headers: res.headers, body: res.body };
      }
      await res.body.dump();
      if (hop >= MAX_REDIRECTS) throw new RegistryError('UPSTREAM_ERROR', `upstream ${this.host}: more than ${MAX_REDIRECTS} redirects for ${url.pathname}`);
      const next = new URL(location, current);
      if (next.protocol !== 'http:' && next.protocol !== 'https:') {
        throw new RegistryError('UPSTREAM_ERROR', `upstream ${this.host} redirected to an unsupported URL scheme ${next.protocol}`);
      }
      // A parent berth never redirects: one that does is sending the edge to a host that is not a parent
      // (which `offline: except-parents` must never reach) or to where its credentials do not belong.
      if (this.config.kind === 'berth' && next.origin !== this.base.origin) {
        throw new RegistryError('UPSTREAM_ERROR', `upstream ${this.host} (a parent berth) redirected to another origin, which a berth never does: not followed`);
      }
      await this.guard.check(next, 'redirect');
      // By origin, not host: https://h to http://h (port 80) is the same host, and Authorization would go in clear.
      if (next.origin !== current.origin) {
        const { authorization: _dropped, ...rest } = h;
        h = rest;
      }
      current = next;
    }
  }

  async close(): Promise<void> {
    await this.dispatcher.close();
  }
}

const REASONS: Record<string, string> = {
  ECONNREFUSED: 'connection refused',
  ECONNRESET: 'connection reset',
  ENOTFOUND: 'host name not found',
  EAI_AGAIN: 'host name lookup failed',
  ETIMEDOUT: 'connection timed out',
  EHOSTUNREACH: 'host unreachable',
  ENETUNREACH: 'network unreachable',
  UND_ERR_CONNECT_TIMEOUT: 'connection timed out',
  UND_ERR_HEADERS_TIMEOUT: 'no response in time',
  UND_ERR_BODY_TIMEOUT: 'the response stalled',
  UND_ERR_SOCKET: 'connection closed',
};

/** A few words for the client, from the error code; nothing that names an address. */
function clientReason(code: string | undefined, detail: string): string {
  if (/\b407\b/.test(detail)) return 'the proxy refused the configured credentials (407 Proxy Authentication Required)';
  if (code && REASONS[code]) return `${REASONS[code]} (${code})`;
  if (code && /CERT|TLS|SSL|SELF_SIGNED/i.test(code)) return `TLS handshake failed (${code})`;
  return code && /^[A-Z_]+$/.test(code) ? code : 'network error';
}

/**
 * A transfer that broke after its headers (a reset, a stalled body past timeouts.idle) as the client sees
 * it: UNAVAILABLE naming the upstream and what it was sending, in a few words. Not a RegistryError, such
 * a failure answered 500 "internal error".
 */
export function brokenOff(host: string, what: string, err: unknown): RegistryError {
  const e = err as Error & { code?: string; cause?: Error & { code?: string } };
  const code = e.cause?.code ?? e.code;
  return new RegistryError('UNAVAILABLE', `upstream ${host} broke off ${what}: ${clientReason(code, [code, e.message, e.cause?.message].join(': '))}`);
}

export function redactUrl(u: string): string {
  try {
    const url = new URL(u);
    if (url.password) url.password = '***';
    return url.toString().replace(/\/$/, '');
  } catch {
    return u;
  }
}
