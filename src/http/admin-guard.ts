import { isIP } from 'node:net';
import type { Context, Next } from 'koa';
import { RegistryError } from '../oci/errors.ts';
import { type ClientAuth, unauthorized } from './client-auth.ts';

/** Whether a client address is this machine's loopback (127.0.0.0/8, ::1, and IPv4-mapped 127.x). */
export function isLoopbackAddress(address: string | undefined): boolean {
  if (!address) return false;
  const a = address.toLowerCase().replace(/^::ffff:(?=\d+\.)/, '');
  if (isIP(a) === 4) return a.startsWith('127.');
  return a === '::1' || a === '0:0:0:0:0:0:0:1';
}

export interface AdminGuardOptions {
  /** Answer clients that are not on this machine (`admin.allowRemote`). */
  allowRemote: boolean;
  /** With client auth, only `auth.admins` users get in. */
  auth?: ClientAuth;
}

/**
 * The gate in front of /metrics, /readyz, /healthz and /_berth/* on the main listener: anyone who can
 * reach a cache could otherwise make it fetch and pin at will (prewarm) or read what it holds (metrics).
 * Loopback clients only by default, and with client auth on, admins only. A separate `admin.listen`
 * listener needs no gate: its address is the operator's choice.
 */
export function adminGuard(o: AdminGuardOptions) {
  return async (ctx: Context, next: Next): Promise<void> => {
    if (!o.allowRemote && !isLoopbackAddress(ctx.req.socket.remoteAddress)) {
      throw new RegistryError('DENIED', 'admin endpoints answer only clients on this machine here; see admin.listen and admin.allowRemote');
    }
    if (o.auth) {
      const who = await o.auth.identify(ctx);
      if (who.kind === 'anonymous') throw unauthorized('admin credentials required');
      if (!o.auth.isAdmin(who)) throw new RegistryError('DENIED', 'admin endpoints need a user listed in auth.admins');
    }
    return next();
  };
}
