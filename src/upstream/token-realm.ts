import { isIP } from 'node:net';

/**
 * Which token realms may see an upstream's credentials. The realm is chosen by whatever answers the
 * upstream's URL, so an upstream (or anyone who can make it answer 401) could name another registry's
 * token service and collect the credentials berth holds for it. Credentials go only to:
 *  - the upstream's own origin (Harbor, quay.io, ghcr.io, gcr.io serve their token endpoint there);
 *  - a realm the operator listed in the upstream's `tokenRealms` (origins or URLs);
 *  - over HTTPS, a host under the upstream host's parent domain: registry-1.docker.io → auth.docker.io,
 *    registry.gitlab.com → gitlab.com. The parent must keep two labels, so `registry.example.co.uk`
 *    admits `auth.example.co.uk` but never `evil.co.uk`; IP addresses and single-label hosts only match
 *    exactly (their own origin).
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
  if (realm.protocol !== 'https:') return false;
  const host = upstream.hostname.toLowerCase();
  const realmHost = realm.hostname.toLowerCase();
  if (isIP(host.replace(/^\[|\]$/g, '')) || isIP(realmHost.replace(/^\[|\]$/g, ''))) return false;
  const labels = host.split('.');
  const parent = labels.length > 2 ? labels.slice(1).join('.') : host;
  if (!parent.includes('.')) return false;
  return realmHost === parent || realmHost.endsWith(`.${parent}`);
}
