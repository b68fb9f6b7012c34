import Router from '@koa/router';
import type { Context, Next } from 'koa';
import type { Metrics } from '../metrics.ts';
import { type Digest, parseDigest } from '../oci/digest.ts';
import { RegistryError } from '../oci/errors.ts';
import type { ByteRange } from '../oci/range.ts';
import { isTag, parseReference } from '../oci/reference.ts';
import type { Blobs } from '../registry/blobs.ts';
import type { LocalRegistry } from '../registry/local/local-registry.ts';
import type { Manifests } from '../registry/manifests.ts';
import type { Referrers } from '../registry/referrers.ts';
import type { Tags } from '../registry/tags.ts';
import type { Uploads } from '../registry/uploads/uploads.ts';
import type { Upstreams } from '../registry/upstreams.ts';
import type { AsyncRegistryIndex } from '../store/async-index-roles.ts';
import { checkRangeSyntax, requestedRanges, sendBlob, setBlobHeaders } from './blob-response.ts';
import { catalogRoute } from './catalog.ts';
import { pushRoutes } from './manifest-push.ts';
import { queryParam, rawParam, routeOf } from './params.ts';
import { referrersRoute } from './referrers.ts';
import { uploadRoutes } from './uploads.ts';
import { writeTarget } from './write-rules.ts';

export interface V2Deps {
  upstreams: Upstreams;
  manifests: Manifests;
  blobs: Blobs;
  tags: Tags;
  referrers: Referrers;
  metrics: Metrics;
  /** Blob upload sessions of local repositories (the push API); without it every push is 405. */
  uploads?: Uploads;
  /** The local registry (issue #10): manifest pushes, deletes; the catalog reads the index. */
  local: LocalRegistry;
  catalog: Pick<AsyncRegistryIndex, 'repositories'>;
  maxManifestSize: number;
  /** Sees every blob GET's ranges (learning eStargz start-up sets, issue #11); must be cheap for other digests. */
  blobReads?: { observe(digest: Digest, ranges: readonly ByteRange[] | undefined, client: string | undefined): void };
  /** With auth.rules: whether the client may see a repository in the catalog (catalog.ts). */
  mayList?: (ctx: Context, name: string) => boolean;
}

/** Methods that write: they reach the table only for local repositories. */
const WRITE_METHODS = new Set(['POST', 'PATCH', 'PUT', 'DELETE']);

const MAX_PAGE = 10_000;

/**
 * The OCI distribution API, pull side: the whole /v2 table is the router below. Names have slashes, so
 * `*name` is a multi-segment wildcard; it is greedy, so `a/manifests/b/manifests/latest` is the name
 * `a/manifests/b` and the reference `latest`, as distribution reads it. The routes' last segments differ
 * (`manifests/R`, `blobs/D`, `tags/list`, `referrers/D`), so at most one route matches any path.
 */
export function v2Handler(d: V2Deps) {
  // sensitive: `/MANIFESTS/` is no route; strict: `/tags/list/` is no route (only /v2/ takes a trailing slash).
  const router = new Router({ sensitive: true, strict: true });
  router.get(['/v2', '/v2/'], (ctx) => {
    ctx.state.route = 'base';
    ctx.status = 200;
    ctx.type = 'application/json';
    ctx.body = '{}';
  });
  router.get('/v2/*name/manifests/:reference', async (ctx) => {
    ctx.state.route = 'manifest';
    const route = routeOf(ctx, d.upstreams);
    const ref = parseReference(rawParam(ctx, 1));
    const result = await d.manifests.get(route, ref, ctx.get('Accept'), ctx.method as 'GET' | 'HEAD');
    ctx.state.cache = result.cached ? 'hit' : 'miss';
    ctx.status = 200;
    ctx.set('Docker-Content-Digest', result.digest);
    ctx.set('ETag', `"${result.digest}"`);
    if (result.stale) ctx.set('Warning', `110 berth "Response is stale: ${result.stale.replace(/["\\]/g, "'").slice(0, 200)}"`);
    if (result.bytes) ctx.body = result.bytes;
    ctx.type = result.mediaType;
    ctx.length = result.size;
  });
  router.get('/v2/*name/blobs/:digest', async (ctx) => {
    ctx.state.route = 'blob';
    const route = routeOf(ctx, d.upstreams);
    const digest = parseDigest(rawParam(ctx, 1));
    if (ctx.method === 'HEAD') {
      const { size, cached } = await d.blobs.stat(route, digest);
      ctx.state.cache = cached ? 'hit' : 'miss';
      setBlobHeaders(ctx, digest);
      ctx.status = 200;
      ctx.type = 'application/octet-stream';
      ctx.length = size;
      return;
    }
    const ranged = checkRangeSyntax(ctx);
    // The client's address counts its new fills against fills.maxPerClient.
    const blob = await d.blobs.open(route, digest, !ranged, ctx.req.socket.remoteAddress);
    ctx.state.cache = blob.source === 'cache' ? 'hit' : 'miss';
    let ranges: ReturnType<typeof requestedRanges>;
    try {
      ranges = ranged ? requestedRanges(ctx, digest, blob.size) : undefined;
      // Before the headers: an upstream that cannot serve these ranges is a 503/404, not a cut 206.
      if (ranges && blob.prefetch) await blob.prefetch(ranges);
    } catch (err) {
      // A 416 (or a failed prefetch) reads nothing: the fill this request acquired must still be let go.
      blob.unused?.();
      throw err;
    }
    d.blobReads?.observe(digest, ranges, ctx.req.socket.remoteAddress);
    const source = blob.source;
    sendBlob(ctx, blob, ranges, (n) => d.metrics.bytesServed.inc({ source }, n));
  });
  router.get('/v2/*name/tags/list', async (ctx) => {
    ctx.state.route = 'tags';
    const ns = queryParam(ctx, 'ns');
    const name = rawParam(ctx, 0);
    const route = d.upstreams.route(name, ns);
    ctx.state.upstream = route.upstream;
    const nText = queryParam(ctx, 'n');
    const last = queryParam(ctx, 'last');
    let n: number | undefined;
    if (nText !== undefined) {
      if (!/^\d{1,6}$/.test(nText) || Number(nText) > MAX_PAGE) {
        throw new RegistryError('PAGINATION_NUMBER_INVALID', `n must be a whole number from 0 to ${MAX_PAGE}`);
      }
      n = Number(nText);
    }
    if (last !== undefined && !isTag(last)) throw new RegistryError('QUERY_INVALID', `last "${last.slice(0, 80)}" is not a tag`);
    const page = await d.tags.list(route, name, n, last);
    if (page.next) ctx.set('Link', `<${ctx.path}?${ns !== undefined ? `ns=${encodeURIComponent(ns)}&` : ''}${page.next}>; rel="next"`);
    ctx.status = 200;
    ctx.body = { name: page.name, tags: page.tags };
  });
  if (d.uploads) uploadRoutes(router, { upstreams: d.upstreams, uploads: d.uploads });
  router.get('/v2/*name/referrers/:digest', referrersRoute(d));
  pushRoutes(router, { upstreams: d.upstreams, local: d.local, maxManifestSize: d.maxManifestSize });
  catalogRoute(router, { index: d.catalog, upstreams: d.upstreams, ...(d.mayList ? { mayList: d.mayList } : {}) });
  const routes = router.routes();

  return async function v2(ctx: Context): Promise<void> {
    ctx.set('Docker-Distribution-API-Version', 'registry/2.0');
    // Bodies come from upstreams: a browser must never guess a type from them (script on berth's origin).
    ctx.set('X-Content-Type-Options', 'nosniff');
    const path = ctx.path;
    // Before the table: a method that writes reaches it only for a push path of a local repository (no
    // `?ns=`: that names an upstream); anything else is a 405 on every path, known or not.
    if (ctx.method !== 'GET' && ctx.method !== 'HEAD') {
      const name = WRITE_METHODS.has(ctx.method) ? writeTarget(ctx) : undefined;
      if (name === undefined || ctx.query.ns !== undefined || !d.upstreams.local.owns(name)) {
        ctx.state.route = path === '/v2' || path === '/v2/' ? 'base' : 'other';
        const what = name === undefined ? '' : ` on ${name.slice(0, 200)}`;
        throw new RegistryError('UNSUPPORTED', `${ctx.method} is not supported${what}: berth caches other repositories pull-only; ${d.upstreams.local.describe()}`);
      }
    }
    if (path.length > 2048) throw new RegistryError('NAME_INVALID', 'request path is too long');
    // A repeated ?ns= is a 400 on any path but /v2/ (the routes read it again, the same way).
    queryParam(ctx, 'ns');
    await routes(
      ctx as Parameters<typeof routes>[0],
      (() => {
        ctx.state.route = 'other';
        if (ctx.method !== 'GET' && ctx.method !== 'HEAD') throw new RegistryError('UNSUPPORTED', `${ctx.method} is not supported on ${path.slice(0, 200)}`);
        throw new RegistryError('NOT_FOUND', `no such endpoint: ${ctx.method} ${path.slice(0, 200)}`);
      }) as Next,
    );
  };
}
