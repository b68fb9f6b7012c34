import { type Digest, parseDigest } from './digest.ts';
import { RegistryError } from './errors.ts';
import { looksLikeHost, parseRepository, parseTag, type Repository, type Tag } from './reference.ts';

/** A full image reference as operators write it: `registry.k8s.io/pause:3.9`, `nginx`, `quay.io/a/b@sha256:…`. */
export interface ImageReference {
  host: string;
  repository: Repository;
  tag?: Tag;
  digest?: Digest;
}

export const DOCKER_HUB = 'docker.io';

/** Parses the way docker does: a first component with a dot, colon or `localhost` is a registry host. */
export function parseImageReference(s: string, defaultHost = DOCKER_HUB): ImageReference {
  const text = s.trim();
  if (!text) throw new RegistryError('NAME_INVALID', 'empty image reference');
  let rest = text;
  let digest: Digest | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = parseDigest(rest.slice(at + 1));
    rest = rest.slice(0, at);
  }
  let tag: Tag | undefined;
  const lastSlash = rest.lastIndexOf('/');
  const colon = rest.lastIndexOf(':');
  if (colon > lastSlash) {
    tag = parseTag(rest.slice(colon + 1));
    rest = rest.slice(0, colon);
  }
  let host = defaultHost;
  const slash = rest.indexOf('/');
  if (slash > 0 && looksLikeHost(rest.slice(0, slash))) {
    host = rest.slice(0, slash);
    rest = rest.slice(slash + 1);
  }
  if (host === 'index.docker.io' || host === 'registry-1.docker.io') host = DOCKER_HUB;
  if (host === DOCKER_HUB && !rest.includes('/')) rest = `library/${rest}`;
  const repository = parseRepository(rest);
  if (!tag && !digest) tag = parseTag('latest');
  return { host, repository, ...(tag ? { tag } : {}), ...(digest ? { digest } : {}) };
}

export function formatImageReference(r: ImageReference): string {
  return `${r.host}/${r.repository}${r.tag ? `:${r.tag}` : ''}${r.digest ? `@${r.digest}` : ''}`;
}
