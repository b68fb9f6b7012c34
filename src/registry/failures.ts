import { RegistryError } from '../oci/errors.ts';
import { IntegrityError } from '../oci/integrity.ts';

/**
 * What a failure means to the code that caught it. There used to be three copies of one "isTransient"
 * test (manifests, tags, the fill) that meant two different things, so there are two functions here,
 * each named for its question, the second built on the first:
 *  - servesStale: the upstream could not give an answer (unreachable, timed out, 5xx, rate limited, its
 *    circuit open) or gave a wrong one (an invalid manifest, a bad 206): a cached tag or tag list is
 *    served instead. An answer about the thing itself (404, denied, 416) is not covered: it is the answer.
 *  - isRetryable: the same, narrowed to what another request after a pause may cure, plus a transfer
 *    that broke mid-body (a plain socket error): the fill resumes. Wrong bytes, a full disk and an open
 *    breaker (no request was even made) are not retried; to a tag lookup they still serve stale.
 */

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

/** The upstream failed to answer, or answered wrongly: a cached answer (tag, tag list) is served instead (stale-if-error). */
export function servesStale(err: unknown): err is RegistryError {
  return err instanceof RegistryError && (err.code === 'UNAVAILABLE' || err.code === 'UPSTREAM_ERROR');
}

/**
 * Worth another try after a pause: a broken transfer, an unreachable or overloaded upstream. Not: wrong
 * bytes, a full disk, an open breaker, or an answer about the blob itself (404, denied, 416).
 */
export function isRetryable(err: unknown): boolean {
  if (err instanceof IntegrityError || isDiskFull(err) || isCircuitOpen(err)) return false;
  if (err instanceof RegistryError) return servesStale(err);
  return true;
}

/**
 * A lazy fetch that failed like this dooms the whole fill, not just its reader: the blob cannot be
 * completed from this upstream (it has no such blob, sends wrong bytes) or not stored (disk full).
 */
export function failsFill(err: unknown): boolean {
  return !isRetryable(err) && !isCircuitOpen(err);
}
