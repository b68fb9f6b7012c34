import { createHash } from 'node:crypto';
import { RegistryError } from '../oci/errors.ts';
import type { Digest } from '../oci/digest.ts';
import { MAX_MANIFEST_BYTES, parseManifest, type ParsedManifest } from '../oci/manifest.ts';
import { header, type UpstreamClient, type UpstreamResponse } from '../upstream/client.ts';
import type { Route } from './upstreams.ts';

export interface FetchedManifest {
  digest: Digest;
  /** The manifest's own media type (src/oci/manifest.ts): never the upstream's Content-Type. */
  mediaType: string;
  bytes: Buffer;
  parsed: ParsedManifest;
}

/**
 * Deadlines of manifest requests (`manifestTimeout`): a manifest is a few KiB, so an upstream that takes
 * longer for the HEAD, or for the GET with its whole body, is as good as down for the clients waiting on it.
 * On expiry the request is cut and the failure is UNAVAILABLE, which serves a cached tag stale.
 */
export async function withDeadline<T>(client: UpstreamClient, ms: number, what: string, work: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const signal = AbortSignal.timeout(ms);
  try {
    return await work(signal);
  } catch (err) {
    if (!signal.aborted) throw err;
    // A stalled upstream cannot serve: it counts against its circuit breaker like a refused connection.
    client.health.failure();
    throw new RegistryError('UNAVAILABLE', `upstream ${client.host} did not send ${what} within ${ms / 1000} s`);
  }
}

/**
 * Reads and checks a manifest GET's body: bounded in size, hashing to what was asked for (by digest) or to
 * what the upstream labelled it (by tag), and a valid manifest of a type berth serves. Anything else is
 * the upstream's fault (502 naming it), and nothing of it is stored.
 */
export async function readManifest(res: UpstreamResponse, route: Route, reference: string, expected: Digest | undefined, signal: AbortSignal): Promise<FetchedManifest> {
  const what = `${route.repository}:${reference}`;
  const declared = Number(header(res.headers, 'content-length'));
  if (declared > MAX_MANIFEST_BYTES) {
    res.body.destroy();
    throw new RegistryError('UPSTREAM_ERROR', `upstream ${route.upstream} sent a manifest of ${declared} bytes for ${what}; the limit is ${MAX_MANIFEST_BYTES}`);
  }
  // undici ends the request on abort, but the body loop below must stop too, whatever state it is in.
  const cut = () => res.body.destroy(signal.reason as Error);
  signal.addEventListener('abort', cut, { once: true });
  const chunks: Buffer[] = [];
  let total = 0;
  try {
    for await (const c of res.body) {
      total += (c as Buffer).length;
      if (total > MAX_MANIFEST_BYTES) {
        res.body.destroy();
        throw new RegistryError('UPSTREAM_ERROR', `upstream ${route.upstream} sent more than ${MAX_MANIFEST_BYTES} bytes of manifest for ${what}`);
      }
      chunks.push(c as Buffer);
    }
  } finally {
    signal.removeEventListener('abort', cut);
  }
  const bytes = Buffer.concat(chunks);
  const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}` as Digest;
  if (expected && digest !== expected) {
    throw new RegistryError('UPSTREAM_ERROR', `upstream ${route.upstream} sent a manifest hashing to ${digest} for ${expected}`);
  }
  const headerDigest = header(res.headers, 'docker-content-digest');
  if (!expected && headerDigest && headerDigest !== digest) {
    throw new RegistryError('UPSTREAM_ERROR', `upstream ${route.upstream} sent a manifest hashing to ${digest} but labelled ${headerDigest}`);
  }
  let parsed: ParsedManifest;
  try {
    parsed = parseManifest(bytes);
  } catch (err) {
    if (!(err instanceof RegistryError)) throw err;
    throw new RegistryError('UPSTREAM_ERROR', `upstream ${route.upstream} sent an invalid manifest for ${what}: ${err.message}`);
  }
  return { digest, mediaType: parsed.mediaType, bytes, parsed };
}
