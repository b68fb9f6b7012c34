import type { Context } from 'koa';
import { RegistryError } from '../oci/errors.ts';
import type { Route, Upstreams } from '../registry/upstreams.ts';

/** A single-valued query parameter; repeated or malformed ones are a 400, not a guess. */
export function queryParam(ctx: Context, name: string): string | undefined {
  const v = ctx.query[name];
  if (Array.isArray(v)) throw new RegistryError('QUERY_INVALID', `query parameter "${name}" given more than once`);
  return v;
}

/**
 * A path parameter as the client sent it, percent-escapes and all (the router's `ctx.params` are decoded):
 * `a%2Fb` is not the name `a/b`, `sha256%3A…` is not a digest and an upload id with escapes is no id of
 * ours; the grammar checks see the raw text.
 */
export function rawParam(ctx: Context, i: number): string {
  return (ctx as Context & { captures: string[] }).captures[i]!;
}

/**
 * The route of a `/v2/<name>/…` request: the name (first capture) and `?ns=`, which is echoed as
 * `OCI-Namespace`; the upstream goes into `ctx.state` for the access log, metrics and error messages.
 */
export function routeOf(ctx: Context, upstreams: Upstreams): Route {
  const ns = queryParam(ctx, 'ns');
  const route = upstreams.route(rawParam(ctx, 0), ns);
  ctx.state.upstream = route.upstream;
  if (ns !== undefined) ctx.set('OCI-Namespace', ns);
  return route;
}
