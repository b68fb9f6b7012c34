import type { Context } from 'koa';
import { RegistryError } from '../oci/errors.ts';
import { parseDigest } from '../oci/digest.ts';
import { parseReference, isTag } from '../oci/reference.ts';
import type { Blobs } from '../registry/blobs.ts';
import type { Manifests } from '../registry/manifests.ts';
import type { Tags } from '../registry/tags.ts';
import type { Upstreams } from '../registry/upstreams.ts';
import type { Metrics } from '../metrics.ts';
import { checkRangeSyntax, requestedRanges, sendBlob, setBlobHeaders } from './blob-response.ts';

export interface V2Deps {
  upstreams: Upstreams;
  manifests: Manifests;
  blobs: Blobs;
  tags: Tags;
  metrics: Metrics;
}

const MANIFEST = /^\/v2\/(.+)\/manifests\/([^/]+)$/;
const BLOB = /^\/v2\/(.+)\/blobs\/([^/]+)$/;
const TAGS = /^\/v2\/(.+)\/tags\/list$/;
const MAX_PAGE = 10_000;

/** A single-valued query parameter; repeated or malformed ones are a 400, not a guess. */
function queryParam(ctx: Context, name: string): string | undefined {
  const v = ctx.query[name];
  if (Array.isArray(v)) throw new RegistryError('QUERY_INVALID', `query parameter "${name}" given more than once`);
  return v;
}

/** The OCI distribution API, pull side. Dispatch by small predicates on the path. */
export function v2Handler(d: V2Deps) {
  return async function v2(ctx: Context): Promise<void> {
    ctx.set('Docker-Distribution-API-Version', 'registry/2.0');
    // Bodies come from upstreams: a browser must never guess a type from them (script on berth's origin).
    ctx.set('X-Content-Type-Options', 'nosniff');
    const path = ctx.path;
    if (ctx.method !== 'GET' && ctx.method !== 'HEAD') {
      ctx.state.route = path === '/v2' || path === '/v2/' ? 'base' : 'other';
      throw new RegistryError('UNSUPPORTED', `${ctx.method} is not supported: berth is a pull-through cache (pull only)`);
    }
    if (path === '/v2' || path === '/v2/') {
      ctx.state.route = 'base';
      ctx.status = 200;
      ctx.type = 'application/json';
      ctx.body = '{}';
      return;
    }
    if (path.length > 2048) throw new RegistryError('NAME_INVALID', 'request path is too long');
    const method = ctx.method;
    const ns = queryParam(ctx, 'ns');
    let m: RegExpExecArray | null;
    if ((m = MANIFEST.exec(path))) {
      ctx.state.route = 'manifest';
      const route = d.upstreams.route(m[1]!, ns);
      const ref = parseReference(m[2]!);
      if (ns !== undefined) ctx.set('OCI-Namespace', ns);
      const result = await d.manifests.get(route, ref, ctx.get('Accept'), method);
      ctx.state.cache = result.cached ? 'hit' : 'miss';
      ctx.status = 200;
      ctx.set('Docker-Content-Digest', result.digest);
      ctx.set('ETag', `"${result.digest}"`);
      if (result.stale) ctx.set('Warning', `110 berth "Response is stale: ${result.stale.replace(/["\\]/g, "'").slice(0, 200)}"`);
      if (result.bytes) ctx.body = result.bytes;
      ctx.type = result.mediaType;
      ctx.length = result.size;
      return;
    }
    if ((m = BLOB.exec(path))) {
      ctx.state.route = 'blob';
      const route = d.upstreams.route(m[1]!, ns);
      const digest = parseDigest(m[2]!);
      if (ns !== undefined) ctx.set('OCI-Namespace', ns);
      if (method === 'HEAD') {
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
      const source = blob.source;
      sendBlob(ctx, blob, ranges, (n) => d.metrics.bytesServed.inc({ source }, n));
      return;
    }
    if ((m = TAGS.exec(path))) {
      ctx.state.route = 'tags';
      const route = d.upstreams.route(m[1]!, ns);
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
      const page = await d.tags.list(route, m[1]!, n, last);
      if (page.next) ctx.set('Link', `<${path}?${ns !== undefined ? `ns=${encodeURIComponent(ns)}&` : ''}${page.next}>; rel="next"`);
      ctx.status = 200;
      ctx.body = { name: page.name, tags: page.tags };
      return;
    }
    ctx.state.route = 'other';
    throw new RegistryError('NOT_FOUND', `no such endpoint: ${ctx.method} ${path.slice(0, 200)}`);
  };
}
