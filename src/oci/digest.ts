import { RegistryError } from './errors.ts';

/**
 * A digest that has been parsed and checked at the edge: `sha256:` followed by 64 lowercase hex
 * characters. Inside berth a Digest is trusted; strings from the outside go through parseDigest.
 * sha512 is a valid OCI algorithm but berth stores sha256 only, so it is rejected with a clear message.
 */
export type Digest = string & { readonly __digest: unique symbol };

const SHA256 = /^sha256:[a-f0-9]{64}$/;
const ANY_DIGEST = /^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;

export function isDigest(s: string): s is Digest {
  return SHA256.test(s);
}

export function parseDigest(s: string): Digest {
  if (SHA256.test(s)) return s as Digest;
  if (s.length <= 200 && ANY_DIGEST.test(s) && !s.startsWith('sha256:')) {
    throw new RegistryError('DIGEST_INVALID', `unsupported digest algorithm in "${s.slice(0, 80)}": berth stores sha256 only`);
  }
  throw new RegistryError('DIGEST_INVALID', `invalid digest "${s.slice(0, 80)}": expected sha256:<64 lowercase hex>`);
}

/** The 64 hex characters of a sha256 digest. */
export function digestHex(d: Digest): string {
  return d.slice('sha256:'.length);
}

export function digestFromHex(hex: string): Digest {
  return parseDigest(`sha256:${hex}`);
}
