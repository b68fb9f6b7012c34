import type { Context, Next } from 'koa';
import { IntegrityError } from '../registry/integrity.ts';
import { RegistryError } from '../oci/errors.ts';

/**
 * The one place errors become responses: the spec's `{"errors":[{code,message,detail}]}` envelope with
 * the status from the error table. Anything that is not a RegistryError is a bug: logged in full,
 * answered with a 500 that says nothing internal.
 */
export async function errorMiddleware(ctx: Context, next: Next): Promise<void> {
  try {
    await next();
  } catch (err) {
    const e = toRegistryError(err, ctx);
    if (ctx.headerSent || !ctx.writable) {
      // Bytes are on the wire already: the only honest signal left is to cut the connection.
      ctx.req.socket.destroy();
      return;
    }
    ctx.status = e.status;
    for (const [k, v] of Object.entries(e.headers)) ctx.set(k, v);
    ctx.remove('Content-Range');
    if (e.headers['Content-Range']) ctx.set('Content-Range', e.headers['Content-Range']);
    ctx.type = 'application/json';
    ctx.body = e.toJSON();
    ctx.state.errorCode = e.code;
    ctx.state.errorMessage = e.message;
  }
}

function toRegistryError(err: unknown, ctx: Context): RegistryError {
  if (err instanceof RegistryError) return err;
  // Wrong bytes or sizes come from an upstream, never from the client.
  if (err instanceof IntegrityError) return new RegistryError('UPSTREAM_ERROR', err.message);
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'ENOSPC' || code === 'EDQUOT' || code === 'SQLITE_FULL') return new RegistryError('UNAVAILABLE', 'berth storage is full; the content could not be cached');
  if (code?.startsWith('SQLITE_BUSY') || code === 'SQLITE_LOCKED') return new RegistryError('UNAVAILABLE', "berth's index is locked by another process; try again");
  const status = (err as { status?: number }).status;
  if (typeof status === 'number' && status >= 400 && status < 500) {
    return new RegistryError('QUERY_INVALID', (err as Error).message || 'bad request');
  }
  ctx.state.internalError = err;
  return new RegistryError('INTERNAL', 'internal error; see the berth log');
}
