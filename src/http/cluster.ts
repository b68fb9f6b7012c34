import type { Context } from 'koa';
import type { Logger } from 'pino';
import { refusePeerRequest } from '../cluster/peer-auth.ts';
import { CLUSTER_BLOB_PATH } from '../cluster/peer-client.ts';
import { isDigest } from '../oci/digest.ts';
import { RegistryError } from '../oci/errors.ts';
import { parseRange } from '../oci/range.ts';
import type { BlobHandle, Blobs } from '../registry/blobs.ts';
import type { Fill } from '../registry/fill/fill.ts';
import type { Fills } from '../registry/fill/fills.ts';
import { sendBlob, setBlobHeaders } from './blob-response.ts';

export interface ClusterEndpointDeps {
  secret: string;
  /** Our cluster.advertise: the origin peers sign their requests for (src/cluster/peer-auth.ts). */
  advertise: string;
  blobs: Pick<Blobs, 'cached'>;
  fills: Pick<Fills, 'get'>;
  log: Logger;
  /** Told of every request refused for a wrong or missing secret (a metric). */
  onUnauthorized?: () => void;
}

/**
 * `GET/HEAD /_berth/cluster/blobs/<digest>?upstream=<host>&repository=<repo>`, for peer replicas only
 * (Authorization: an HMAC of the request with cluster.secret, peer-auth.ts): the committed blob, or this replica's running fill of (upstream,
 * digest), Range included, served as a client's read of a fill is (prefetch, then read as bytes land). It
 * never starts a fill: a 404 sends the asker back to the lease, which says who fetches now.
 */
export function clusterEndpoint(d: ClusterEndpointDeps): (ctx: Context) => Promise<void> {
  const origin = new URL(d.advertise).origin;
  return async (ctx) => {
    ctx.state.route = 'cluster';
    // Our origin and the path as sent, never a URL built from the target alone: one in absolute form
    // (`GET http://other/...`) would name its own origin, and a signature made for that host would pass here.
    const target = ctx.originalUrl;
    const why = target.startsWith('/')
      ? refusePeerRequest(d.secret, ctx.get('Authorization'), ctx.method, new URL(`${origin}${target}`), ctx.get('Range') || undefined)
      : 'the request target is not a path (absolute form)';
    if (why !== undefined) {
      d.onUnauthorized?.();
      d.log.error({ client: ctx.req.socket.remoteAddress, path: ctx.path, why }, 'cluster: refused a peer request with a wrong or missing cluster.secret');
      throw new RegistryError('UNAUTHORIZED', 'this endpoint is for berth replicas of the same cluster (cluster.secret)');
    }
    const digest = ctx.path.slice(CLUSTER_BLOB_PATH.length);
    if (!ctx.path.startsWith(CLUSTER_BLOB_PATH) || !isDigest(digest)) throw new RegistryError('NOT_FOUND', `no such cluster endpoint: ${ctx.path.slice(0, 200)}`);
    if (ctx.method !== 'GET' && ctx.method !== 'HEAD') throw new RegistryError('UNSUPPORTED', `${ctx.method} is not supported here; use GET or HEAD`);
    const upstream = typeof ctx.query.upstream === 'string' ? ctx.query.upstream : '';
    if (!upstream) throw new RegistryError('QUERY_INVALID', 'upstream= is required');
    const hit = await d.blobs.cached(digest);
    // A fill leaves the table only after its commit: no fill and no blob twice over means neither.
    const fill = hit ? undefined : d.fills.get(digest, upstream);
    const blob = hit ?? (fill && fill.state !== 'failed' ? await fillHandle(fill) : await d.blobs.cached(digest));
    if (!blob) throw new RegistryError('BLOB_UNKNOWN', `blob ${digest}: not cached on this replica and no fill of it through ${upstream} running`);
    if (ctx.method === 'HEAD') {
      blob.unused?.();
      setBlobHeaders(ctx, digest);
      ctx.status = 200;
      ctx.type = 'application/octet-stream';
      ctx.length = blob.size;
      return;
    }
    let ranges: ReturnType<typeof parseRange> | undefined;
    try {
      // The Range as signed (peer-auth.ts), not requestedRanges: an If-Range, which peers never send and
      // which is not signed, would turn a replayed ranged request into one for the whole blob.
      const range = ctx.get('Range');
      ranges = range ? parseRange(range, blob.size) : undefined;
    } catch (err) {
      blob.unused?.();
      throw err;
    }
    if (fill && blob.source === 'fill') {
      // A peer's sequential fill asks from its offset to the end: our sequential fill brings that (started
      // here if only Range readers had asked so far). A bounded range is a peer's lazy read: prefetch it.
      const toEnd = !ranges || (ranges.length === 1 && ranges[0]!.end === blob.size - 1);
      try {
        if (toEnd) {
          fill.start('foreground');
          await fill.whenFlowing();
        } else await blob.prefetch!(ranges!);
      } catch (err) {
        blob.unused?.();
        throw err;
      }
    }
    sendBlob(ctx, blob, ranges, () => {});
  };
}

async function fillHandle(fill: Fill): Promise<BlobHandle> {
  const size = await fill.whenSized();
  return {
    digest: fill.digest,
    size,
    source: 'fill',
    // Never held back for the digest check: the peer hashes what it gets and commits only what verifies, and
    // holding the last byte would make it wait for our commit (with S3, our whole upload) before its own.
    read: (s, e) => fill.reader(s, e),
    send: (s, e, w) => fill.send(s, e, w),
    prefetch: (ranges) => fill.prefetch(ranges),
    unused: () => fill.unused(),
  };
}
