import { LRUCache } from 'lru-cache';

/**
 * Bearer tokens by (configured upstream, realm, service, scope), kept until shortly before they expire.
 * Registries hand out tokens for 60–300 s; asking again for every request would double the round trips
 * of a pull. The configured upstream is part of the key because realm and service are whatever the
 * upstream announces: keyed by those alone, an upstream naming another's realm got that one's token.
 */
export class TokenCache {
  private readonly cache = new LRUCache<string, string>({ max: 1000, ttlAutopurge: false });

  static key(upstream: string, realm: string, service: string | undefined, scope: string): string {
    return `${upstream}\n${realm}\n${service ?? ''}\n${scope}`;
  }

  get(key: string): string | undefined {
    return this.cache.get(key);
  }

  /** Forgets `token` under `key` (the upstream refused it); a newer token stored meanwhile stays. */
  delete(key: string, token: string): void {
    if (this.cache.get(key) === token) this.cache.delete(key);
  }

  /** Keeps the token for its lifetime less a margin for clock skew and the request in flight. */
  set(key: string, token: string, expiresInSeconds: number): void {
    const ttl = Math.max(1, expiresInSeconds - 10) * 1000;
    this.cache.set(key, token, { ttl });
  }
}
