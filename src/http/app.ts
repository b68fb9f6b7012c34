import Koa from 'koa';
import type { Context, Next } from 'koa';
import type { Logger } from 'pino';
import type { Metrics } from '../metrics.ts';
import { errorMiddleware } from './errors.ts';
import { v2Handler, type V2Deps } from './v2.ts';
import { prewarmHandler } from './admin.ts';
import type { Prewarmer } from '../registry/prewarm.ts';
import type { ClientAuth } from './client-auth.ts';

/** Bytes sent in the response body, counted at the socket so aborted streams count what really left. */
function requestLog(log: Logger, metrics: Metrics) {
  return async function logged(ctx: Context, next: Next): Promise<void> {
    const started = performance.now();
    const bytesBefore = ctx.req.socket.bytesWritten;
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
          bytes: ctx.req.socket.bytesWritten - bytesBefore,
        };
        if (ctx.querystring) fields.query = ctx.querystring.slice(0, 200);
        if (ctx.state.cache) fields.cache = ctx.state.cache;
        if (ctx.state.errorCode) fields.error = `${ctx.state.errorCode as string}: ${ctx.state.errorMessage as string}`;
        if (ctx.state.internalError) log.error({ err: ctx.state.internalError, path: ctx.path }, 'internal error');
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
}

export interface AppParts {
  /** Serve the OCI distribution API (/v2/…). */
  registry: boolean;
  /** Serve /metrics, /healthz and /_berth/* (on the main listener unless `admin.listen` is set). */
  admin: boolean;
  auth?: ClientAuth;
}

export function createApp(deps: AppDeps, parts: AppParts): Koa {
  const app = new Koa({ proxy: false });
  // Errors are answered by errorMiddleware; koa's own handler would only log them again.
  app.silent = true;
  app.on('error', () => {});
  app.use(requestLog(deps.log, deps.metrics));
  app.use(errorMiddleware);
  const v2 = v2Handler(deps);
  const prewarm = prewarmHandler(deps.prewarmer);
  const auth = parts.auth?.middleware();
  app.use(async (ctx) => {
    if (parts.registry && (ctx.path === '/v2' || ctx.path.startsWith('/v2/'))) {
      if (auth) return auth(ctx, () => v2(ctx));
      return v2(ctx);
    }
    if (parts.admin && ctx.path === '/metrics' && ctx.method === 'GET') {
      ctx.state.route = 'metrics';
      ctx.type = deps.metrics.registry.contentType;
      ctx.body = await deps.metrics.registry.metrics();
      return;
    }
    if (parts.admin && ctx.path === '/_berth/prewarm') {
      if (auth) return auth(ctx, () => prewarm(ctx));
      return prewarm(ctx);
    }
    if (parts.admin && ctx.path === '/healthz') {
      ctx.state.route = 'health';
      ctx.body = { ok: true };
      return;
    }
    ctx.state.route = 'other';
    ctx.status = 404;
    ctx.body = { errors: [{ code: 'NOT_FOUND', message: `no such endpoint: ${ctx.path.slice(0, 200)}` }] };
  });
  return app;
}
