/**
 * Registries whose token service lives on another host of their own, over HTTPS. A rule such as "any host
 * under the upstream's parent domain" cannot replace this list: on shared domains (`*.azurecr.io`,
 * `*.pkg.dev`, `*.github.io`) a sibling host belongs to someone else.
 */
const KNOWN_REALM_HOSTS: Readonly<Record<string, readonly string[]>> = {
  'registry-1.docker.io': ['auth.docker.io'],
  'index.docker.io': ['auth.docker.io'],
  'registry.gitlab.com': ['gitlab.com'],
};

/**
 * Which token realms may see an upstream's credentials. The realm is chosen by whatever answers the
 * upstream's URL, so an upstream (or anyone who can make it answer 401) could name another registry's
 * token service and collect the credentials berth holds for it. Credentials go only to:
 *  - the upstream's own origin (Harbor, quay.io, ghcr.io, gcr.io, ACR, Artifact Registry serve their token
 *    endpoint there);
 *  - a realm the operator listed in the upstream's `tokenRealms` (origins or URLs);
 *  - over HTTPS, the known token hosts of a few registries (Docker Hub's auth.docker.io, GitLab's).
 * Any other realm gets an anonymous token request at most.
 */
export function realmMayReceiveCredentials(upstream: URL, realm: URL, tokenRealms: readonly string[] = []): boolean {
  if (realm.origin === upstream.origin) return true;
  for (const allowed of tokenRealms) {
    try {
      if (new URL(allowed).origin === realm.origin) return true;
    } catch {
      // validated by the config schema; an unparsable entry admits nothing
    }
  }
  if (realm.protocol !== 'https:' || upstream.protocol !== 'https:' || realm.port !== '') return false;
  return KNOWN_REALM_HOSTS[upstream.hostname.toLowerCase()]?.includes(realm.hostname.toLowerCase()) === true;
}
