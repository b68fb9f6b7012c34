import type { Context, Next } from 'koa';
import { RegistryError } from '../oci/errors.ts';
import { IntegrityError } from '../registry/integrity.ts';

/**
 * The one place errors become responses: the spec's `{"errors":[{code,message,detail}]}` envelope with
 * the status from the error table. Anything that is not a RegistryError and not one of the known failure
 * kinds below is a bug: logged in full, answered with a 500 that says nothing internal.
 */
export async function errorMiddleware(ctx: Context, next: Next): Promise<void> {
  try {
    await next();
  } catch (err) {
    answerError(ctx, err);
  }
}

/** Headers of a body that will not be sent: an error envelope must not carry them. */
const BODY_HEADERS = ['Content-Length', 'Content-Range', 'Content-Type', 'Docker-Content-Digest', 'ETag', 'Cache-Control', 'Accept-Ranges'];

/**
 * Answers `err` as the error envelope, or, when bytes are on the wire already, cuts the connection (the only
 * honest signal left). Also for a body that fails after the handlers returned but before its first byte
 * (blob-response.ts, and koa's own stream piping through `ctx.onerror`, see app.ts): such a response has set
 * blob headers and possibly `ctx.respond = false`, so the envelope is written here, not left to koa.
 */
export function answerError(ctx: Context, err: unknown): void {
  const e = toRegistryError(err, ctx);
  ctx.state.errorCode = e.code;
  ctx.state.errorMessage = e.message;
  if (ctx.headerSent || !ctx.writable) {
    // Null once the connection has closed (see app.ts requestLog): this runs from stream 'error' events too,
    // where a TypeError would be an uncaught exception.
    (ctx.req.socket as typeof ctx.req.socket | null)?.destroy();
    return;
  }
  for (const h of BODY_HEADERS) ctx.remove(h);
  ctx.status = e.status;
  for (const [k, v] of Object.entries(e.headers)) ctx.set(k, v);
  ctx.type = 'application/json';
  if (ctx.respond === false) {
    const body = JSON.stringify(e.toJSON());
    ctx.length = Buffer.byteLength(body);
    ctx.res.end(ctx.method === 'HEAD' ? undefined : body);
    return;
  }
  ctx.body = e.toJSON();
}

/**
 * Failures of a connection to an upstream that reach here unwrapped (the upstream client wraps those of
 * connecting and of waiting for headers; a body that breaks later is read elsewhere): the upstream is
 * unavailable, as a refused connection is. undici names them by code, on the error or on its cause
 * (`TypeError: terminated` has the SocketError as its cause).
 */
const LINK_FAILURES = new Set([
  'UND_ERR_SOCKET',
  'UND_ERR_CLOSED',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT',
  'ECONNRESET',
  'ECONNREFUSED',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
]);
/** An upstream body that is not what its headers said: the upstream's fault. */
const UPSTREAM_LIES = new Set(['UND_ERR_RES_CONTENT_LENGTH_MISMATCH', 'UND_ERR_RES_EXCEEDED_MAX_SIZE']);
/** berth's own disk or index failing (not full: that is below): the operator must look, the client may retry elsewhere. */
const STORAGE_FAILURES = /^(EIO|EROFS|EACCES|EPERM|EMFILE|ENFILE|SQLITE_IOERR.*|SQLITE_READONLY.*|SQLITE_CORRUPT.*|SQLITE_CANTOPEN.*|SQLITE_NOTADB)$/;

function errorCodes(err: unknown): string[] {
  const e = err as { code?: unknown; cause?: { code?: unknown } } | undefined;
  return [e?.code, e?.cause?.code].filter((c): c is string => typeof c === 'string');
}

function toRegistryError(err: unknown, ctx: Context): RegistryError {
  if (err instanceof RegistryError) return err;
  // Wrong bytes or sizes come from an upstream, never from the client.
  if (err instanceof IntegrityError) return new RegistryError('UPSTREAM_ERROR', err.message);
  const codes = errorCodes(err);
  const has = (test: (c: string) => boolean) => codes.find(test);
  const upstream = typeof ctx.state.upstream === 'string' ? `upstream ${ctx.state.upstream}` : 'the upstream';
  if (has((c) => c === 'ENOSPC' || c === 'EDQUOT' || c === 'SQLITE_FULL')) return new RegistryError('UNAVAILABLE', 'berth storage is full; the content could not be cached');
  if (has((c) => c.startsWith('SQLITE_BUSY') || c === 'SQLITE_LOCKED')) return new RegistryError('UNAVAILABLE', "berth's index is locked by another process; try again");
  // The index's server (PostgreSQL, PgUnavailableError) is down or unreachable: before the link failures, whose
  // codes (ECONNREFUSED) its cause may carry, since it is not the upstream that failed.
  if ((err as { unavailable?: unknown } | null)?.unavailable === true) return new RegistryError('UNAVAILABLE', "berth's index is unavailable; try again");
  const link = has((c) => LINK_FAILURES.has(c));
  if (link) return new RegistryError('UNAVAILABLE', `the connection to ${upstream} failed (${link}); try again`);
  const lie = has((c) => UPSTREAM_LIES.has(c));
  if (lie) return new RegistryError('UPSTREAM_ERROR', `${upstream} sent a body that does not match its headers (${lie})`);
  const storage = has((c) => STORAGE_FAILURES.test(c));
  if (storage) {
    // Not a bug in berth, but the operator must know: logged in full, like one.
    ctx.state.storageError = err;
    return new RegistryError('UNAVAILABLE', `berth's storage failed (${storage}); see the berth log`);
  }
  const status = (err as { status?: number }).status;
  if (typeof status === 'number' && status >= 400 && status < 500) {
    return new RegistryError('QUERY_INVALID', (err as Error).message || 'bad request');
  }
  ctx.state.internalError = err;
  return new RegistryError('INTERNAL', 'internal error; see the berth log');
}
