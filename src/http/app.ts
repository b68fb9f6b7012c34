import type { Context, Middleware, Next } from 'koa';
import Koa from 'koa';
import type { Logger } from 'pino';
import type { Metrics } from '../metrics.ts';
import { isRegistryError, RegistryError } from '../oci/errors.ts';
import type { Readiness } from '../readiness.ts';
import type { Prewarmer } from '../registry/prewarm.ts';
import type { Identity } from './access-rules.ts';
import { prewarmHandler } from './admin.ts';
import { type AdminGuardOptions, adminGuard } from './admin-guard.ts';
import { type ClientAuth, unauthorized } from './client-auth.ts';
import { answerError, errorMiddleware } from './errors.ts';
import { bearerChallenge, ISSUED_TOKEN_TTL_S, TOKEN_PATH } from './issued-tokens.ts';
import { type DigestOrigins, readRules } from './read-rules.ts';
import { STATUS_API_PATH, STATUS_PAGE_PATHS, statusHandlers } from './status/handler.ts';
import type { RecentErrors } from './status/recent-errors.ts';
import type { StatusBuilder } from './status/status.ts';
import { type V2Deps, v2Handler } from './v2.ts';
import { writeRules } from './write-rules.ts';

/** Bytes sent in the response body, counted at the socket so aborted streams count what really left. */
function requestLog(log: Logger, metrics: Metrics, errors?: RecentErrors) {
  return async function logged(ctx: Context, next: Next): Promise<void> {
    const started = performance.now();
    // Held here: node sets req.socket to null once the connection closes, and the log line below is written
    // at the response's 'close' (a TypeError there is an uncaught exception: the process would die).
    const socket = ctx.req.socket;
    const bytesBefore = socket.bytesWritten;
    try {
      await next();
    } finally {
      const route = (ctx.state.route as string | undefined) ?? 'other';
      metrics.latency.observe({ route }, (performance.now() - started) / 1000);
      const done = () => {
        const status = ctx.res.writableFinished ? ctx.status : 499;
        metrics.requests.inc({ route, method: ctx.method, status: String(ctx.status) });
        const fields: Record<string, unknown> = {
          method: ctx.method,
          path: ctx.path,
          status,
          ms: Math.round(performance.now() - started),
          bytes: socket.bytesWritten - bytesBefore,
          client: socket.remoteAddress,
        };
        const ua = ctx.get('User-Agent');
        if (ua) fields.userAgent = ua.slice(0, 200);
        const who = ctx.state.identity as { kind: string; name?: string } | undefined;
        if (who?.name) fields.user = who.name;
        if (ctx.querystring) fields.query = ctx.querystring.slice(0, 200);
        if (ctx.state.cache) fields.cache = ctx.state.cache;
        if (ctx.state.errorCode) fields.error = `${ctx.state.errorCode as string}: ${ctx.state.errorMessage as string}`;
        // For the status page. Not the 401 that asks a client to log in (every docker pull starts with one).
        if (errors && ctx.state.errorCode && !(ctx.status === 401 && (ctx.path === '/v2/' || ctx.path === '/v2' || ctx.path === TOKEN_PATH))) {
          errors.record({ kind: 'response', status: ctx.status, code: ctx.state.errorCode as string, method: ctx.method, path: ctx.path, message: String(ctx.state.errorMessage) });
        }
        if (ctx.state.internalError) log.error({ err: ctx.state.internalError, path: ctx.path }, 'internal error');
        if (ctx.state.storageError) log.error({ err: ctx.state.storageError, path: ctx.path }, 'storage failure');
        log.info(fields, 'request');
      };
      if (ctx.res.writableFinished || ctx.res.destroyed) done();
      else ctx.res.once('close', done);
    }
  };
}

export interface AppDeps extends V2Deps {
  log: Logger;
  prewarmer: Prewarmer;
  readiness: Readiness;
  /** Where auth.rules looks up which repositories a digest is known from. */
  index: DigestOrigins;
  maxPrewarmReferences: number;
  /** The status page and its JSON (src/http/status); absent: 404. */
  status?: StatusBuilder;
  /** Where error responses are recorded for the status page. */
  recentErrors?: RecentErrors;
  /** config `cluster`: the internal endpoint peers read fills from (src/http/cluster.ts), on the main listener. */
  cluster?: (ctx: Context) => Promise<void>;
}

export interface AppParts {
  /** Serve the OCI distribution API (/v2/…). */
  registry: boolean;
  /** Serve /metrics, /readyz, /healthz and /_berth/* (on the main listener unless `admin.listen` is set). */
  admin: boolean;
  auth?: ClientAuth;
  /** On the main listener: who may use the admin endpoints (admin-guard.ts). Absent on the admin listener. */
  guard?: AdminGuardOptions;
  /** `local.allowAnonymousPush`: without client auth, pushes are refused unless this is true. */
  allowAnonymousPush?: boolean;
}

export function createApp(deps: AppDeps, parts: AppParts): Koa {
  const app = new Koa({ proxy: false });
  // Errors are answered by errorMiddleware; koa's own handler would only log them again.
  app.silent = true;
  app.on('error', () => {});
  // A body stream koa pipes (a cached blob, a fill read) that fails before its first byte: koa's own
  // ctx.onerror would answer a text/plain 500 (or the bare status text) outside the error table; this
  // answers the envelope instead.
  app.context.onerror = function onerror(this: Context, err: unknown): void {
    // Once bytes are out, as koa does: nothing to answer (the stream's own teardown ends the response).
    if (err == null || this.headerSent || !this.writable) return;
    answerError(this, err);
  };
  app.use(requestLog(deps.log, deps.metrics, deps.recentErrors));
  app.use(errorMiddleware);
  // The catalog lists only what the client may pull (auth.rules), as read-rules.ts guards each repository.
  const ruled = parts.auth?.rules.active ? parts.auth.rules : undefined;
  const v2 = v2Handler(ruled ? { ...deps, mayList: (ctx, name) => ruled.mayRead((ctx.state.identity as Identity | undefined) ?? { kind: 'anonymous' }, name) } : deps);
  const rules = parts.auth ? readRules(parts.auth.rules, deps.upstreams, deps.index) : undefined;
  const writes = writeRules(deps.upstreams, { ...(parts.auth ? { auth: parts.auth } : {}), allowAnonymousPush: parts.allowAnonymousPush ?? false });
  // docker, podman and skopeo send credentials only to a registry whose `GET /v2/` challenged them: where
  // pushes need a login, an anonymous ping gets the challenge even when anonymous pulls are allowed (clients
  // without credentials then go on anonymously: docker sends nothing, containers/image an empty basic login).
  const pingChallenges = !!parts.auth?.takesCredentials && deps.upstreams.local.enabled;
  // …but a basic challenge makes a docker without credentials fail rather than pull anonymously. So where
  // anonymous pulls are allowed too, the challenge is bearer, and berth issues the tokens (issued-tokens.ts).
  const bearer = pingChallenges && !!parts.auth?.allowsAnonymous;
  const registry: Middleware = async (ctx) => {
    try {
      // Who is asking, for the rules and the log line; a 401 when credentials are wrong or required.
      // Order: identity, then who may write (pushes, deletes), then who may read, then the handlers.
      if (parts.auth) ctx.state.identity = await parts.auth.identify(ctx);
      if (pingChallenges && (ctx.path === '/v2' || ctx.path === '/v2/') && (ctx.state.identity as { kind: string }).kind === 'anonymous') {
        throw unauthorized('log in to push; pulls need no credentials here (auth.anonymous)');
      }
      await writes(ctx, async () => {
        if (rules) await rules(ctx, () => v2(ctx));
        else await v2(ctx);
      });
    } catch (err) {
      if (bearer && isRegistryError(err) && err.code === 'UNAUTHORIZED') err.headers['WWW-Authenticate'] = bearerChallenge(ctx);
      throw err;
    }
  };
  // The realm of the bearer challenge: a token for whoever asks (basic credentials, a static token, or none).
  const token: Middleware = async (ctx) => {
    ctx.state.route = 'token';
    if (ctx.method !== 'GET') throw new RegistryError('UNSUPPORTED', `${ctx.method} is not supported on ${TOKEN_PATH}; use GET`);
    const who = await parts.auth!.identify(ctx);
    ctx.state.identity = who;
    const issued = parts.auth!.issued.issue(who);
    ctx.set('Cache-Control', 'no-store');
    ctx.body = { token: issued, access_token: issued, expires_in: ISSUED_TOKEN_TTL_S, issued_at: new Date().toISOString() };
  };
  const guard = parts.guard ? adminGuard(parts.guard) : undefined;
  type Handler = (ctx: Context) => Promise<void> | void;
  const open =
    (h: Handler): Middleware =>
    async (ctx) => {
      await h(ctx);
    };
  const guarded = (h: Handler): Middleware => (guard ? (ctx) => guard(ctx, async () => void (await h(ctx))) : open(h));
  // Health checks are open to a prober (kubelet) unless client auth is on; then they are admin endpoints.
  const healthGuarded = parts.guard?.auth ? guarded : open;
  const metrics = guarded(async (ctx) => {
    ctx.state.route = 'metrics';
    ctx.type = deps.metrics.registry.contentType;
    ctx.body = await deps.metrics.registry.metrics();
  });
  const prewarm = guarded(prewarmHandler(deps.prewarmer, deps.maxPrewarmReferences));
  const status = deps.status ? statusHandlers(deps.status) : undefined;
  const statusPage = status && guarded(status.page);
  const statusApi = status && guarded(status.api);
  const ready = healthGuarded(async (ctx) => {
    ctx.state.route = 'health';
    const report = await deps.readiness.report();
    ctx.status = report.ready ? 200 : 503;
    ctx.body = report;
  });
  app.use(async (ctx, next) => {
    if (parts.registry && (ctx.path === '/v2' || ctx.path.startsWith('/v2/'))) return registry(ctx, next);
    if (parts.registry && bearer && ctx.path === TOKEN_PATH) return token(ctx, next);
    // Authenticated by cluster.secret itself, not by the admin guard or client auth: peers are remote.
    if (parts.registry && deps.cluster && ctx.path.startsWith('/_berth/cluster/')) return deps.cluster(ctx);
    if (ctx.path === '/livez') {
      // The process answers: all a liveness probe may ask (restarting berth fixes nothing /readyz reports).
      ctx.state.route = 'health';
      ctx.body = { ok: true };
      return;
    }
    if (parts.admin && ctx.path === '/metrics' && ctx.method === 'GET') {
      ctx.state.route = 'metrics';
      return metrics(ctx, next);
    }
    if (parts.admin && ctx.path === '/_berth/prewarm') {
      ctx.state.route = 'admin';
      return prewarm(ctx, next);
    }
    if (parts.admin && statusApi && ctx.path === STATUS_API_PATH) return statusApi(ctx, next);
    if (parts.admin && statusPage && STATUS_PAGE_PATHS.has(ctx.path)) return statusPage(ctx, next);
    // /healthz is the old name of /readyz.
    if (parts.admin && (ctx.path === '/readyz' || ctx.path === '/healthz')) {
      ctx.state.route = 'health';
      return ready(ctx, next);
    }
    ctx.state.route = 'other';
    ctx.status = 404;
    ctx.body = { errors: [{ code: 'NOT_FOUND', message: `no such endpoint: ${ctx.path.slice(0, 200)}` }] };
  });
  return app;
}
