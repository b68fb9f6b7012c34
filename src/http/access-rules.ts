/**
 * `auth.rules`: who may pull which repositories, by `<registry>/<repository>` prefix, first match wins;
 * a name no rule matches may be pulled by anyone who may pull at all. `users` are htpasswd names, `*` any
 * authenticated client (static bearer tokens included), `anonymous` clients without credentials.
 */
export interface AccessRule {
  prefix: string;
  users: string[];
}

/** Who a request comes from: an htpasswd user, a static token (no name), or nobody (anonymous). */
export type Identity = { kind: 'user'; name: string } | { kind: 'token' } | { kind: 'anonymous' };

export class AccessRules {
  constructor(private readonly rules: readonly AccessRule[]) {}

  get active(): boolean {
    return this.rules.length > 0;
  }

  /** Whether `who` may read the repository `name` (`docker.io/library/alpine`). */
  mayRead(who: Identity, name: string): boolean {
    const rule = this.rules.find((r) => name === r.prefix.replace(/\/$/, '') || name.startsWith(r.prefix.endsWith('/') ? r.prefix : `${r.prefix}/`));
    if (!rule) return true;
    return rule.users.some((u) => (u === 'anonymous' ? who.kind === 'anonymous' : u === '*' ? who.kind !== 'anonymous' : who.kind === 'user' && who.name === u));
  }
}
