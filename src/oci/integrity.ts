/**
 * The bytes are wrong (digest, size, a 206 that is not what it claims): nothing of them may be kept or
 * served. Not a RegistryError: whoever knows the upstream turns it into a 502 naming it (blobs.ts before
 * the headers, http/errors.ts after).
 */
export class IntegrityError extends Error {
  override name = 'IntegrityError';
}
