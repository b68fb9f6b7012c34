import type { Context } from 'koa';
import { parseDigest } from '../oci/digest.ts';
import { RegistryError } from '../oci/errors.ts';
import { MEDIA_TYPE } from '../oci/manifest.ts';
import { MediaType } from '../oci/media-types.ts';
import { referrersIndex } from '../oci/referrers.ts';
import type { Referrers } from '../registry/referrers.ts';
import type { Upstreams } from '../registry/upstreams.ts';

/** A single-valued query parameter; repeated ones are a 400, as on the other routes. */
function queryParam(ctx: Context, name: string): string | undefined {
  const v = ctx.query[name];
  if (Array.isArray(v)) throw new RegistryError('QUERY_INVALID', `query parameter "${name}" given more than once`);
  return v;
}

/**
 * GET /v2/<name>/referrers/<digest>[?artifactType=]: an image index of the manifests whose subject is
 * the digest (src/registry/referrers.ts), with `OCI-Filters-Applied: artifactType` when the filter was
 * applied. An invalid digest is 400; an unknown one an empty index (spec). `name` and `digest` are the
 * path parameters as the client sent them (v2.ts hands in the raw captures).
 */
export function referrersRoute(d: { upstreams: Upstreams; referrers: Referrers }, raw: (ctx: Context, i: number) => string) {
  return async (ctx: Context): Promise<void> => {
    ctx.state.route = 'referrers';
    const ns = queryParam(ctx, 'ns');
    const route = d.upstreams.route(raw(ctx, 0), ns);
    ctx.state.upstream = route.upstream;
    const subject = parseDigest(raw(ctx, 1));
    const artifactType = queryParam(ctx, 'artifactType');
    if (artifactType !== undefined && !MEDIA_TYPE.test(artifactType)) {
      throw new RegistryError('QUERY_INVALID', `artifactType "${artifactType.slice(0, 80)}" is not a media type`);
    }
    if (ns !== undefined) ctx.set('OCI-Namespace', ns);
    const result = await d.referrers.list(route, subject, artifactType);
    if (result.filtered) ctx.set('OCI-Filters-Applied', 'artifactType');
    if (result.stale) ctx.set('Warning', `110 berth "Response is stale: ${result.stale.replace(/["\\]/g, "'").slice(0, 200)}"`);
    ctx.status = 200;
    ctx.type = MediaType.OciIndex;
    ctx.body = Buffer.from(JSON.stringify(referrersIndex(result.manifests)));
  };
}
