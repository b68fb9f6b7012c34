import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import bcrypt from 'bcryptjs';
import type { Context, Next } from 'koa';
import { LRUCache } from 'lru-cache';
import { RegistryError } from '../oci/errors.ts';

export interface ClientAuthConfig {
  anonymous: boolean;
  htpasswd?: string;
  tokensFile?: string;
}

/**
 * Client authentication: HTTP basic against an htpasswd file (bcrypt only, as docker-registry), and
 * static bearer tokens for automation. bcrypt is slow on purpose (~50 ms a check), so a successful
 * check is remembered for a few minutes by a hash of the credentials, never the password itself.
 */
export class ClientAuth {
  private readonly users = new Map<string, string>();
  private readonly tokens: Buffer[] = [];
  private readonly verified = new LRUCache<string, true>({ max: 10_000, ttl: 5 * 60_000 });

  constructor(private readonly config: ClientAuthConfig) {
    if (config.htpasswd) {
      for (const line of readFileSync(config.htpasswd, 'utf8').split('\n')) {
        const i = line.indexOf(':');
        if (i <= 0) continue;
        const hash = line.slice(i + 1).trim();
        if (!/^\$2[aby]\$/.test(hash)) throw new Error(`${config.htpasswd}: user ${line.slice(0, i)} has a non-bcrypt hash; use htpasswd -B`);
        this.users.set(line.slice(0, i), hash);
      }
    }
    if (config.tokensFile) {
      for (const line of readFileSync(config.tokensFile, 'utf8').split('\n')) {
        const t = line.replace(/#.*$/, '').trim();
        if (t) this.tokens.push(sha(t));
      }
    }
  }

  private async check(header: string | undefined): Promise<boolean> {
    if (!header) return false;
    const [scheme, value = ''] = header.split(/\s+/, 2);
    if (/^bearer$/i.test(scheme ?? '')) {
      const h = sha(value);
      return this.tokens.some((t) => timingSafeEqual(t, h));
    }
    if (!/^basic$/i.test(scheme ?? '')) return false;
    const key = sha(header).toString('hex');
    if (this.verified.has(key)) return true;
    const decoded = Buffer.from(value, 'base64').toString('utf8');
    const i = decoded.indexOf(':');
    if (i <= 0) return false;
    const hash = this.users.get(decoded.slice(0, i));
    if (!hash || !(await bcrypt.compare(decoded.slice(i + 1), hash))) return false;
    this.verified.set(key, true);
    return true;
  }

  middleware() {
    return async (ctx: Context, next: Next): Promise<void> => {
      const header = ctx.get('Authorization') || undefined;
      if (header ? await this.check(header) : this.config.anonymous) return next();
      ctx.set('WWW-Authenticate', 'Basic realm="berth"');
      throw new RegistryError('UNAUTHORIZED', header ? 'invalid credentials' : 'authentication required');
    };
  }
}

function sha(s: string): Buffer {
  return createHash('sha256').update(s).digest();
}
