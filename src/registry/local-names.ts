import { LOCAL_UPSTREAM } from '../store/index-roles.ts';

export { LOCAL_UPSTREAM };

/**
 * Which repository names belong to the local registry: `local.prefixes` from the config. A local name is
 * matched on the whole path name before any host prefix or the default upstream is considered, and is never
 * rewritten (no `library/`).
 */
export class LocalNames {
  private readonly prefixes: readonly string[];

  constructor(prefixes: readonly string[]) {
    this.prefixes = [...prefixes];
  }

  /** Whether any repository is local (pushes are possible at all). */
  get enabled(): boolean {
    return this.prefixes.length > 0;
  }

  owns(name: string): boolean {
    return this.prefixes.some((p) => name.startsWith(p) && name.length > p.length);
  }

  /** For error messages: which names take pushes. */
  describe(): string {
    return this.prefixes.length === 0 ? 'this berth has no local repositories (local.prefixes is empty)' : `local repositories are under ${this.prefixes.map((p) => `"${p}"`).join(', ')}`;
  }
}

/** A route to a local repository (see Route.local). */
export function isLocalRepository(route: { upstream: string }): boolean {
  return route.upstream === LOCAL_UPSTREAM;
}
