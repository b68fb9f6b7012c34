import type { IncomingMessage } from 'node:http';
import type Router from '@koa/router';
import type { Context } from 'koa';
import { parseDigest } from '../oci/digest.ts';
import { RegistryError } from '../oci/errors.ts';
import { parseReference } from '../oci/reference.ts';
import type { LocalRegistry } from '../registry/local/local-registry.ts';
import type { Upstreams } from '../registry/upstreams.ts';
import { rawParam } from './params.ts';

export interface PushRouteDeps {
  upstreams: Upstreams;
  local: LocalRegistry;
  /** `local.maxManifestSize`: bytes of a manifest body; past it, 413. */
  maxManifestSize: number;
}

/** The local registry's manifest pushes and its deletes (distribution spec "Pushing Manifests", "Content Management"). */
export function pushRoutes(router: Router, d: PushRouteDeps): void {
  const localRoute = (ctx: Context) => {
    const route = d.upstreams.route(rawParam(ctx, 0), undefined);
    ctx.state.upstream = route.upstream;
    if (!route.local) throw new RegistryError('UNSUPPORTED', `${ctx.method} of ${route.repository} is not supported: ${d.upstreams.local.describe()}`);
    return route;
  };
  router.put('/v2/*name/manifests/:reference', async (ctx) => {
    ctx.state.route = 'manifest-push';
    const route = localRoute(ctx);
    const body = await readBounded(ctx, d.maxManifestSize);
    const pushed = await d.local.putManifest(route, rawParam(ctx, 1), ctx.get('Content-Type') || undefined, body);
    ctx.set('Location', `/v2/${rawParam(ctx, 0)}/manifests/${pushed.digest}`);
    ctx.set('Docker-Content-Digest', pushed.digest);
    if (pushed.subject) ctx.set('OCI-Subject', pushed.subject);
    noBody(ctx, 201);
  });
  router.delete('/v2/*name/manifests/:reference', async (ctx) => {
    ctx.state.route = 'manifest-delete';
    const route = localRoute(ctx);
    await d.local.deleteManifest(route, parseReference(rawParam(ctx, 1)));
    noBody(ctx, 202);
  });
  router.delete('/v2/*name/blobs/:digest', async (ctx) => {
    ctx.state.route = 'blob-delete';
    const route = localRoute(ctx);
    await d.local.deleteBlob(route, parseDigest(rawParam(ctx, 1)));
    noBody(ctx, 202);
  });
}

/** An answer without a body: koa turns a null body into a 204 unless the status comes after it. */
function noBody(ctx: Context, status: number): void {
  ctx.body = null;
  ctx.status = status;
  ctx.length = 0;
}

/**
 * The request body, at most `limit` bytes: a Content-Length over it is refused before anything is read,
 * and a body that runs past it (chunked, or lying) is refused at the chunk that crosses it, which is not
 * kept. The rest is never read: the connection closes after the answer.
 */
async function readBounded(ctx: Context, limit: number): Promise<Buffer> {
  const tooLarge = () => {
    ctx.set('Connection', 'close');
    return new RegistryError('MANIFEST_TOO_LARGE', `manifest body is over the limit of ${limit} bytes (local.maxManifestSize)`);
  };
  const declared = ctx.get('Content-Length');
  if (declared && /^\d+$/.test(declared) && Number(declared) > limit) throw tooLarge();
  const req: IncomingMessage = ctx.req;
  return new Promise<Buffer>((ok, fail) => {
    const chunks: Buffer[] = [];
    let n = 0;
    const done = (err?: Error) => {
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onError);
      req.off('close', onClose);
      if (err) {
        req.pause();
        fail(err);
      } else ok(Buffer.concat(chunks, n));
    };
    const onData = (c: Buffer) => {
      if (n + c.length > limit) return done(tooLarge());
      chunks.push(c);
      n += c.length;
    };
    const onEnd = () => done();
    const onError = (err: Error) => done(err);
    const onClose = () => done(new RegistryError('MANIFEST_INVALID', 'the request body ended before it was complete'));
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('error', onError);
    req.on('close', onClose);
  });
}
