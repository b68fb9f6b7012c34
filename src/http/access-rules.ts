import { LOCAL_UPSTREAM } from '../registry/local-names.ts';

/**
 * `auth.rules`: who may pull which repositories, by prefix, first match wins; a name no rule matches may be
 * pulled by anyone who may pull at all. `users` are htpasswd names, `*` any authenticated client (static
 * bearer tokens included), `anonymous` clients without credentials.
 *
 * `auth.push`: who may push to (and delete in) which local repositories, same shape, first match wins; a
 * local name no rule matches takes no pushes. `*` there is every htpasswd user, never a token and never an
 * anonymous client: a token pushes only where its own line in the tokens file says, so a pull-only token
 * stays pull-only whatever the rules say.
 *
 * Names are as rules name them (ruleName): `<registry>/<repository>` for cached repositories
 * (`docker.io/library/alpine`), the plain name for local ones (`site/app`; a local prefix can never start
 * with a registry host, so the two never collide).
 */
export interface AccessRule {
  prefix: string;
  users: string[];
}

/**
 * Who a request comes from: an htpasswd user, a static token (no name; `push` lists the prefixes its line in
 * the tokens file grants writes to), or nobody (anonymous).
 */
export type Identity = { kind: 'user'; name: string } | { kind: 'token'; push: readonly string[] } | { kind: 'anonymous' };

/** The name rules match a repository by. */
export function ruleName(upstream: string, repository: string): string {
  return upstream === LOCAL_UPSTREAM ? repository : `${upstream}/${repository}`;
}

/** `site/` covers `site/app`; `site/app` covers itself and `site/app/…`, never `site/apple`. */
export function underPrefix(name: string, prefix: string): boolean {
  return name === prefix.replace(/\/$/, '') || name.startsWith(prefix.endsWith('/') ? prefix : `${prefix}/`);
}

export class AccessRules {
  constructor(
    private readonly rules: readonly AccessRule[],
    private readonly push: readonly AccessRule[] = [],
  ) {}

  /** Whether any read rule restricts pulls. */
  get active(): boolean {
    return this.rules.length > 0;
  }

  /** Whether `who` may read the repository `name` (a rule name, see ruleName). Who may push a name may pull it. */
  mayRead(who: Identity, name: string): boolean {
    const rule = this.rules.find((r) => underPrefix(name, r.prefix));
    if (!rule) return true;
    const listed = rule.users.some((u) => (u === 'anonymous' ? who.kind === 'anonymous' : u === '*' ? who.kind !== 'anonymous' : who.kind === 'user' && who.name === u));
    return listed || this.mayWrite(who, name);
  }

  /** Whether `who` may push to (or delete in) the local repository `name`. */
  mayWrite(who: Identity, name: string): boolean {
    if (who.kind === 'anonymous') return false;
    if (who.kind === 'token') return who.push.some((p) => underPrefix(name, p));
    const rule = this.push.find((r) => underPrefix(name, r.prefix));
    return !!rule && rule.users.some((u) => u === '*' || u === who.name);
  }

  /** Whether any htpasswd user may push anywhere (tokens are counted by ClientAuth). */
  get anyPushRule(): boolean {
    return this.push.some((r) => r.users.length > 0);
  }
}
