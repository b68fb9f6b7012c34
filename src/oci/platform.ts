import { RegistryError } from './errors.ts';
import type { Platform } from './manifest.ts';

/** `linux/amd64`, `linux/arm64/v8`: the platforms an operator asks for. */
export function parsePlatforms(text: string | undefined): Platform[] | undefined {
  if (text === undefined || text === '' || text === 'all') return undefined;
  return text.split(',').map((p) => {
    const [os, architecture, variant, extra] = p.trim().split('/');
    if (!os || !architecture || extra !== undefined) {
      throw new RegistryError('QUERY_INVALID', `invalid platform "${p}": expected os/arch[/variant], e.g. linux/amd64`);
    }
    return { os, architecture, ...(variant ? { variant } : {}) };
  });
}

/** A wanted platform without a variant matches every variant (`linux/arm64` matches `linux/arm64/v8`). */
export function platformMatches(have: Platform | undefined, wanted: Platform[] | undefined): boolean {
  if (!wanted) return true;
  if (!have) return false;
  return wanted.some((w) => w.os === have.os && w.architecture === have.architecture && (!w.variant || w.variant === have.variant));
}
