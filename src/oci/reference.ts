import { type Digest, isDigest, parseDigest } from './digest.ts';
import { RegistryError } from './errors.ts';

/**
 * Repository names and references as the distribution spec defines them
 * ("Pulling manifests": name and reference grammar).
 */
const COMPONENT = '[a-z0-9]+(?:(?:\\.|_|__|-+)[a-z0-9]+)*';
const NAME = new RegExp(`^${COMPONENT}(?:/${COMPONENT})*$`);
const TAG = /^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$/;
/** Registry host with optional port, as it appears in `ns=` and path prefixes. */
const HOST = /^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]{1,5})?$|^\[[0-9a-fA-F:.]+\](?::[0-9]{1,5})?$/;

export const MAX_NAME_LENGTH = 255;

export type Repository = string & { readonly __repository: unique symbol };
export type Tag = string & { readonly __tag: unique symbol };
export type Reference = { kind: 'tag'; tag: Tag } | { kind: 'digest'; digest: Digest };

export function parseRepository(s: string): Repository {
  if (s.length > MAX_NAME_LENGTH) {
    throw new RegistryError('NAME_INVALID', `repository name is ${s.length} characters long; the limit is ${MAX_NAME_LENGTH}`);
  }
  if (!NAME.test(s)) {
    throw new RegistryError('NAME_INVALID', `invalid repository name "${s.slice(0, 80)}": lowercase path components of [a-z0-9] separated by . _ __ or -`);
  }
  return s as Repository;
}

export function isTag(s: string): s is Tag {
  return TAG.test(s);
}

export function parseTag(s: string): Tag {
  if (!TAG.test(s)) {
    throw new RegistryError('MANIFEST_INVALID', `invalid tag "${s.slice(0, 80)}": up to 128 characters of [A-Za-z0-9_.-], not starting with . or -`);
  }
  return s as Tag;
}

/** A manifest reference is a tag or a digest. */
export function parseReference(s: string): Reference {
  if (s.includes(':')) return { kind: 'digest', digest: parseDigest(s) };
  // Not a tag and not a digest: no manifest can have that name, so it is unknown (404), as distribution
  // answers and the distribution-spec conformance suite expects; a malformed digest above stays a 400.
  if (!TAG.test(s)) {
    throw new RegistryError('MANIFEST_UNKNOWN', `no manifest has the reference "${s.slice(0, 80)}": a reference is a tag (up to 128 of [A-Za-z0-9_.-], not starting with . or -) or a sha256 digest`);
  }
  return { kind: 'tag', tag: s as Tag };
}

export function referenceString(r: Reference): string {
  return r.kind === 'tag' ? r.tag : r.digest;
}

export function isHost(s: string): boolean {
  return s.length <= 260 && HOST.test(s);
}

/** A first path component that names a registry rather than a namespace (as docker's reference parser decides). */
export function looksLikeHost(component: string): boolean {
  return component === 'localhost' || component.includes('.') || component.includes(':');
}

export { isDigest };
