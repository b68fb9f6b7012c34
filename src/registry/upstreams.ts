import type { Config } from '../config/schema.ts';
import { RegistryError } from '../oci/errors.ts';
import { DOCKER_HUB } from '../oci/image-reference.ts';
import { isHost, looksLikeHost, parseRepository, type Repository } from '../oci/reference.ts';
import { UpstreamClient, type UpstreamObserver } from '../upstream/client.ts';
import { EgressGuard } from '../upstream/egress-guard.ts';
import { UpstreamHealth } from '../upstream/health.ts';
import { TokenCache } from '../upstream/token-cache.ts';
import { LOCAL_UPSTREAM, LocalNames } from './local-names.ts';

/** Where a request goes: which upstream, which repository there. The cache key of a tag is (upstream, repository, tag). */
export interface Route {
  upstream: string;
  repository: Repository;
  /** The client named the upstream (`?ns=` or a host prefix) rather than falling to the default. */
  explicit: boolean;
  /** A repository of the local registry (upstream is LOCAL_UPSTREAM): never fetched from anywhere. */
  local?: true;
}

/**
 * The configured upstreams and the routing rules of DESIGN.md: `?ns=`, then a host prefix in the path,
 * then the default upstream; Docker Hub's one-segment names get `library/`. A host that is not
 * configured is never contacted: berth is not an open proxy.
 */
export class Upstreams {
  private readonly byHost = new Map<string, UpstreamClient>();
  readonly clients: UpstreamClient[];
  readonly defaultHost: string;
  /** Which names are the site's own repositories (config `local.prefixes`). */
  readonly local: LocalNames;
  private readonly offlineMode: Config['offline'];

  /**
   * `onHealthChange` hears an upstream's breaker open and close; `observer` gives each client what it
   * reports to (log lines, metrics).
   */
  constructor(config: Readonly<Config>, o: { onHealthChange?: (host: string, down: boolean) => void; observer?: (host: string) => UpstreamObserver } = {}) {
    const tokens = new TokenCache();
    const guard = new EgressGuard(new Set(config.upstreams.map((u) => new URL(u.url).origin)));
    const onHealthChange = o.onHealthChange ?? (() => {});
    this.clients = config.upstreams.map(
      (u) =>
        new UpstreamClient(u, {
          tokens,
          guard,
          health: new UpstreamHealth(5, 30_000, (down) => onHealthChange(u.host, down)),
          ...(o.observer ? { observer: o.observer(u.host) } : {}),
          manifestTimeoutMs: config.manifestTimeout,
        }),
    );
    config.upstreams.forEach((u, i) => {
      for (const h of [u.host, ...u.aliases]) this.byHost.set(h.toLowerCase(), this.clients[i]!);
    });
    this.defaultHost = config.defaultUpstream;
    this.local = new LocalNames(config.local.prefixes);
    this.offlineMode = config.offline;
  }

  /**
   * Whether requests for `upstream` stay in the cache (config `offline`): every upstream with `true`; with
   * `except-parents` every one but a parent berth's (`kind: berth`). A function, so each reader of
   * `offline` asks about the upstream of its own route.
   */
  readonly offline = (upstream: string): boolean => this.offlineMode === true || (this.offlineMode === 'except-parents' && !this.isParent(upstream));

  /** `upstream` is reached through a parent berth (`kind: berth`): it converts `-esgz` tags, lists referrers, fills lazily on its own. */
  readonly isParent = (upstream: string): boolean => this.get(upstream)?.kind === 'berth';

  get(host: string): UpstreamClient | undefined {
    return this.byHost.get(host.toLowerCase());
  }

  client(route: Route): UpstreamClient {
    const c = this.get(route.upstream);
    if (!c) throw new RegistryError('NAME_UNKNOWN', `upstream ${route.upstream} is not configured`);
    return c;
  }

  /** Resolves the name from the URL path and the `ns` query parameter. */
  route(pathName: string, ns: string | undefined): Route {
    let host: string | undefined;
    let name = pathName;
    // A local name is the site's own whatever follows; `?ns=` names an upstream, so it is not local.
    if (ns === undefined && this.local.owns(name)) return { upstream: LOCAL_UPSTREAM, repository: parseRepository(name), explicit: true, local: true };
    if (ns !== undefined) {
      if (!isHost(ns)) throw new RegistryError('QUERY_INVALID', `invalid ns "${ns.slice(0, 80)}": expected a registry host such as docker.io`);
      const c = this.get(ns);
      if (!c) throw new RegistryError('NAME_UNKNOWN', `registry ${ns} (from ns=) is not configured as an upstream of this berth`);
      host = c.host;
      // containerd's override_path form sends both: /v2/quay.io/org/x/...?ns=quay.io
      const prefix = `${ns.toLowerCase()}/`;
      if (name.toLowerCase().startsWith(prefix)) name = name.slice(prefix.length);
    } else {
      const slash = name.indexOf('/');
      const first = slash > 0 ? name.slice(0, slash) : '';
      if (first && looksLikeHost(first)) {
        if (!isHost(first)) throw new RegistryError('NAME_INVALID', `invalid registry host "${first.slice(0, 80)}" in path`);
        const c = this.get(first);
        if (!c) throw new RegistryError('NAME_UNKNOWN', `registry ${first} is not configured as an upstream of this berth`);
        host = c.host;
        name = name.slice(slash + 1);
      }
    }
    const explicit = host !== undefined;
    host ??= this.defaultHost;
    if (host === DOCKER_HUB && name.length > 0 && !name.includes('/')) name = `library/${name}`;
    return { upstream: host, repository: parseRepository(name), explicit };
  }

  async close(): Promise<void> {
    await Promise.all(this.clients.map((c) => c.close()));
  }
}
