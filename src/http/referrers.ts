import type { Context } from 'koa';
import { parseDigest } from '../oci/digest.ts';
import { RegistryError } from '../oci/errors.ts';
import { MEDIA_TYPE } from '../oci/manifest.ts';
import { MediaType } from '../oci/media-types.ts';
import { referrersIndex } from '../oci/referrers.ts';
import type { Referrers } from '../registry/referrers.ts';
import type { Upstreams } from '../registry/upstreams.ts';
import { queryParam, rawParam, routeOf } from './params.ts';

/**
 * GET /v2/<name>/referrers/<digest>[?artifactType=]: an image index of the manifests whose subject is
 * the digest (src/registry/referrers.ts), with `OCI-Filters-Applied: artifactType` when the filter was
 * applied. An invalid digest is 400; an unknown one an empty index (spec). `name` and `digest` are read
 * as the client sent them (params.ts).
 */
export function referrersRoute(d: { upstreams: Upstreams; referrers: Referrers }) {
  return async (ctx: Context): Promise<void> => {
    ctx.state.route = 'referrers';
    const route = routeOf(ctx, d.upstreams);
    const subject = parseDigest(rawParam(ctx, 1));
    const artifactType = queryParam(ctx, 'artifactType');
    if (artifactType !== undefined && !MEDIA_TYPE.test(artifactType)) {
      throw new RegistryError('QUERY_INVALID', `artifactType "${artifactType.slice(0, 80)}" is not a media type`);
    }
    const result = await d.referrers.list(route, subject, artifactType);
    if (result.filtered) ctx.set('OCI-Filters-Applied', 'artifactType');
    if (result.stale) ctx.set('Warning', `110 berth "Response is stale: ${result.stale.replace(/["\\]/g, "'").slice(0, 200)}"`);
    ctx.status = 200;
    ctx.type = MediaType.OciIndex;
    ctx.body = Buffer.from(JSON.stringify(referrersIndex(result.manifests)));
  };
}
