import { RegistryError } from '../oci/errors.ts';
import { IntegrityError } from './integrity.ts';

/** The storage filesystem is full: the fill cannot go on, and what it wrote only holds space. */
export class DiskFullError extends RegistryError {
  constructor(what: string, cause: Error) {
    super('UNAVAILABLE', `disk full: berth's storage has no space left for ${what} (${cause.message})`, { diskFull: true });
  }
}

export function isDiskFull(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return err instanceof DiskFullError || code === 'ENOSPC' || code === 'EDQUOT';
}

/** The upstream's circuit breaker is open: no request was even made, so waiting here is pointless. */
export function isCircuitOpen(err: unknown): boolean {
  return err instanceof RegistryError && (err.detail as { circuitOpen?: boolean } | undefined)?.circuitOpen === true;
}

/**
 * Worth another try after a pause: a broken transfer, an unreachable or overloaded upstream. Not: wrong
 * bytes, a full disk, an open breaker, or an answer about the blob itself (404, denied, 416).
 */
export function isTransient(err: unknown): boolean {
  if (err instanceof IntegrityError || isDiskFull(err) || isCircuitOpen(err)) return false;
  if (err instanceof RegistryError) return err.code === 'UNAVAILABLE' || err.code === 'UPSTREAM_ERROR';
  return true;
}

/**
 * A lazy fetch that failed like this dooms the whole fill, not just its reader: the blob cannot be
 * completed from this upstream (it has no such blob, sends wrong bytes) or not stored (disk full).
 */
export function failsFill(err: unknown): boolean {
  return !isTransient(err) && !isCircuitOpen(err);
}
