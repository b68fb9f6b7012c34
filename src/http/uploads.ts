import type Router from '@koa/router';
import type { Context } from 'koa';
import { type Digest, parseDigest } from '../oci/digest.ts';
import { isRegistryError, RegistryError } from '../oci/errors.ts';
import { type ChunkRange, rangeHeader, type UploadState, type Uploads } from '../registry/uploads/uploads.ts';
import type { Route, Upstreams } from '../registry/upstreams.ts';
import { queryParam, rawParam } from './params.ts';

export interface UploadRouteDeps {
  upstreams: Upstreams;
  uploads: Uploads;
}

/** The local repository a push names; the method gate in v2.ts lets only these through, this says so again. */
function localRoute(d: UploadRouteDeps, ctx: Context, name: string): Route {
  ctx.state.route = 'upload';
  const route = d.upstreams.route(name, queryParam(ctx, 'ns'));
  ctx.state.upstream = route.upstream;
  if (!route.local) throw new RegistryError('UNSUPPORTED', `${name.slice(0, 200)} is not a local repository: ${d.upstreams.local.describe()}`);
  return route;
}

function contentLength(ctx: Context): number | undefined {
  const h = ctx.get('Content-Length');
  if (!h) return undefined;
  if (!/^\d{1,16}$/.test(h)) throw new RegistryError('SIZE_INVALID', `Content-Length "${h.slice(0, 40)}" is not a byte count`);
  return Number(h);
}

function hasBody(ctx: Context): boolean {
  return ctx.req.headers['transfer-encoding'] !== undefined || (contentLength(ctx) ?? 0) > 0;
}

/** `Content-Range: <start>-<end>` (inclusive), as the spec writes it; `bytes ` and a `/<size>` are tolerated. */
function chunkRange(ctx: Context): ChunkRange | undefined {
  const h = ctx.get('Content-Range');
  if (!h) return undefined;
  const m = /^(?:bytes[ =])?(\d{1,16})-(\d{1,16})(?:\/(?:\d{1,16}|\*))?$/.exec(h.trim());
  const range = m ? { start: Number(m[1]), end: Number(m[2]) } : undefined;
  if (!range || range.end < range.start) throw new RegistryError('BLOB_UPLOAD_INVALID', `Content-Range "${h.slice(0, 60)}" is not <start>-<end>`);
  return range;
}

function uploadLocation(name: string, id: string): string {
  return `/v2/${name}/blobs/uploads/${id}`;
}

/** 202 (or 204 for GET): the session's Location, Range and Docker-Upload-UUID. */
function answerSession(ctx: Context, name: string, s: UploadState, status: 202 | 204): void {
  ctx.status = status;
  ctx.set('Location', uploadLocation(name, s.id));
  ctx.set('Range', rangeHeader(s.offset));
  ctx.set('Docker-Upload-UUID', s.id);
  if (status === 202) ctx.body = '';
}

function answerCreated(ctx: Context, name: string, d: Digest): void {
  ctx.status = 201;
  ctx.set('Location', `/v2/${name}/blobs/${d}`);
  ctx.set('Docker-Content-Digest', d);
  ctx.body = '';
}

/**
 * A body that stopped because the client went away is no server failure: the session stands at what
 * arrived. A 416 carries the session's Location with its Range, so a client can resume from there.
 */
function explain(ctx: Context, err: unknown, name: string, id: string): never {
  // A refusal before the body was read (a 416, a 400): end the connection after the answer rather than
  // have node read and discard the rest of a multi-GB body.
  if (!ctx.req.complete) ctx.set('Connection', 'close');
  if (ctx.req.destroyed && !ctx.req.complete && !isRegistryError(err)) {
    throw new RegistryError('BLOB_UPLOAD_INVALID', 'the client closed the connection mid-body: the session holds what arrived');
  }
  if (isRegistryError(err) && err.status === 416) Object.assign(err.headers, { Location: uploadLocation(name, id), 'Docker-Upload-UUID': id });
  throw err;
}

/**
 * The blob half of the push API (OCI distribution spec v1.1, "Pushing blobs"), for local repositories:
 * POST starts an upload (monolithic with `?digest=`, a session without, a mount with `?mount=&from=`),
 * PATCH appends a chunk, PUT `?digest=` finishes, GET reports, DELETE cancels.
 */
export function uploadRoutes(router: Router, d: UploadRouteDeps): void {
  const { uploads } = d;
  // The spec's path ends in `/`; the form without it is taken too (distribution routes both).
  router.post(['/v2/*name/blobs/uploads/', '/v2/*name/blobs/uploads'], async (ctx) => {
    const name = rawParam(ctx, 0);
    const route = localRoute(d, ctx, name);
    const mount = queryParam(ctx, 'mount');
    const from = queryParam(ctx, 'from');
    const digest = queryParam(ctx, 'digest');
    if (mount !== undefined) {
      const md = parseDigest(mount);
      // A `from` that names no repository berth could hold is "cannot mount": a session, as the spec says.
      const source = from === undefined ? undefined : routeOrUndefined(d, from);
      if (source && (await uploads.mount(route.repository, md, source))) return answerCreated(ctx, name, md);
      return answerSession(ctx, name, await uploads.start(route.repository), 202);
    }
    if (digest === undefined) {
      if (hasBody(ctx)) throw new RegistryError('BLOB_UPLOAD_INVALID', 'a POST without ?digest= opens a session and takes no body: PATCH the bytes to its Location');
      return answerSession(ctx, name, await uploads.start(route.repository), 202);
    }
    const dg = parseDigest(digest);
    const length = contentLength(ctx);
    const s = await uploads.start(route.repository);
    try {
      await uploads.finish(route.repository, s.id, dg, ctx.req, undefined, length);
    } catch (err) {
      // Monolithic: the client never learnt the session, so nothing of it may stay.
      await uploads.cancel(route.repository, s.id).catch(() => undefined);
      explain(ctx, err, name, s.id);
    }
    answerCreated(ctx, name, dg);
  });
  router.get('/v2/*name/blobs/uploads/:id', async (ctx) => {
    const name = rawParam(ctx, 0);
    const route = localRoute(d, ctx, name);
    answerSession(ctx, name, await uploads.status(route.repository, rawParam(ctx, 1)), 204);
  });
  router.patch('/v2/*name/blobs/uploads/:id', async (ctx) => {
    const name = rawParam(ctx, 0);
    const route = localRoute(d, ctx, name);
    const id = rawParam(ctx, 1);
    try {
      answerSession(ctx, name, await uploads.append(route.repository, id, ctx.req, chunkRange(ctx), contentLength(ctx)), 202);
    } catch (err) {
      explain(ctx, err, name, id);
    }
  });
  router.put('/v2/*name/blobs/uploads/:id', async (ctx) => {
    const name = rawParam(ctx, 0);
    const route = localRoute(d, ctx, name);
    const id = rawParam(ctx, 1);
    const digest = queryParam(ctx, 'digest');
    if (digest === undefined) throw new RegistryError('DIGEST_INVALID', 'PUT of an upload session needs ?digest=<the blob digest>');
    const dg = parseDigest(digest);
    try {
      await uploads.finish(route.repository, id, dg, hasBody(ctx) ? ctx.req : undefined, chunkRange(ctx), contentLength(ctx));
    } catch (err) {
      explain(ctx, err, name, id);
    }
    answerCreated(ctx, name, dg);
  });
  router.delete('/v2/*name/blobs/uploads/:id', async (ctx) => {
    const name = rawParam(ctx, 0);
    const route = localRoute(d, ctx, name);
    await uploads.cancel(route.repository, rawParam(ctx, 1));
    ctx.status = 204;
    ctx.body = '';
  });
}

function routeOrUndefined(d: UploadRouteDeps, name: string): Route | undefined {
  try {
    return d.upstreams.route(name, undefined);
  } catch {
    return undefined;
  }
}
