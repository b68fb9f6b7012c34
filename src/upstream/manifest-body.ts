import { createHash } from 'node:crypto';
import type { Digest } from '../oci/digest.ts';
import { RegistryError } from '../oci/errors.ts';
import { MAX_MANIFEST_BYTES, type ParsedManifest, parseManifest } from '../oci/manifest.ts';
import { discard } from './bodies.ts';
import { brokenOff, header, type UpstreamResponse } from './transport.ts';

/** A manifest GET as the registry layer sees it: checked, byte-exact. */
export interface UpstreamManifest {
  digest: Digest;
  /** The manifest's own media type (src/oci/manifest.ts): never the upstream's Content-Type. */
  mediaType: string;
  bytes: Buffer;
  /** `bytes` parsed (its children), so the caller need not parse them again. */
  parsed: ParsedManifest;
}

/**
 * Reads and checks a manifest GET's body: bounded in size, hashing to what was asked for (by digest) or to
 * what the upstream labelled it (by tag), and a valid manifest of a type berth serves. Anything else is
 * the upstream's fault (502 naming it), and nothing of it is returned. `what` is `repository:reference`.
 */
export async function readManifest(res: UpstreamResponse, host: string, what: string, expected: Digest | undefined, signal: AbortSignal): Promise<UpstreamManifest> {
  const declared = Number(header(res.headers, 'content-length'));
  if (declared > MAX_MANIFEST_BYTES) {
    discard(res.body);
    throw new RegistryError('UPSTREAM_ERROR', `upstream ${host} sent a manifest of ${declared} bytes for ${what}; the limit is ${MAX_MANIFEST_BYTES}`);
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
        discard(res.body);
        throw new RegistryError('UPSTREAM_ERROR', `upstream ${host} sent more than ${MAX_MANIFEST_BYTES} bytes of manifest for ${what}`);
      }
      chunks.push(c as Buffer);
    }
  } catch (err) {
    // A cut at the deadline is withinDeadline's to name; a transfer that broke is UNAVAILABLE naming the upstream.
    if (signal.aborted || err instanceof RegistryError) throw err;
    throw brokenOff(host, `manifest ${what}`, err);
  } finally {
    signal.removeEventListener('abort', cut);
  }
  const bytes = Buffer.concat(chunks);
  const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}` as Digest;
  if (expected && digest !== expected) {
    throw new RegistryError('UPSTREAM_ERROR', `upstream ${host} sent a manifest hashing to ${digest} for ${expected}`);
  }
  const headerDigest = header(res.headers, 'docker-content-digest');
  if (!expected && headerDigest && headerDigest !== digest) {
    throw new RegistryError('UPSTREAM_ERROR', `upstream ${host} sent a manifest hashing to ${digest} but labelled ${headerDigest}`);
  }
  let parsed: ParsedManifest;
  try {
    parsed = parseManifest(bytes);
  } catch (err) {
    if (!(err instanceof RegistryError)) throw err;
    throw new RegistryError('UPSTREAM_ERROR', `upstream ${host} sent an invalid manifest for ${what}: ${err.message}`);
  }
  return { digest, mediaType: parsed.mediaType, bytes, parsed };
}
