import type { Context } from 'koa';
import { RegistryError } from '../../oci/errors.ts';
import { statusPage } from './page.ts';
import type { StatusBuilder } from './status.ts';

export const STATUS_PAGE_PATHS = new Set(['/_berth', '/_berth/']);
export const STATUS_API_PATH = '/_berth/api/status';

/** Headers for both: nothing cached, sniffed, framed or referred. */
function common(ctx: Context): void {
  ctx.set('Cache-Control', 'no-store');
  ctx.set('X-Content-Type-Options', 'nosniff');
  ctx.set('Referrer-Policy', 'no-referrer');
  ctx.set('X-Frame-Options', 'DENY');
}

function onlyGet(ctx: Context): void {
  if (ctx.method !== 'GET' && ctx.method !== 'HEAD') throw new RegistryError('UNSUPPORTED', `${ctx.method} is not supported on ${ctx.path}; use GET`);
}

/** `GET /_berth/` (the page) and `GET /_berth/api/status` (its JSON, status.ts); both behind the admin guard (app.ts). */
export function statusHandlers(builder: StatusBuilder): { page: (ctx: Context) => void; api: (ctx: Context) => Promise<void> } {
  const { html, csp } = statusPage();
  return {
    page(ctx) {
      ctx.state.route = 'admin';
      onlyGet(ctx);
      common(ctx);
      ctx.set('Content-Security-Policy', csp);
      ctx.type = 'text/html; charset=utf-8';
      ctx.body = html;
    },
    async api(ctx) {
      ctx.state.route = 'admin';
      onlyGet(ctx);
      common(ctx);
      ctx.body = await builder.build();
    },
  };
}
