import { existsSync, readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import type { z } from 'zod';
import { type Config, ConfigSchema } from './schema.ts';

/** Start-up stops with this: the message names the field and what is wrong with it. */
export class ConfigError extends Error {
  override name = 'ConfigError';
}

export const DEFAULT_CONFIG_FILE = 'config/berth.yaml';

/** The options every berth command takes; they win over the environment, which wins over the file. */
export interface ConfigFlags {
  config?: string;
  listen?: string;
  storage?: string;
  upstream?: string[];
  defaultUpstream?: string;
  offline?: boolean;
  logLevel?: string;
}

type Raw = Record<string, unknown>;

function section(raw: Raw, key: string): Raw {
  const v = raw[key];
  if (v === undefined || v === null) return (raw[key] = {});
  return v as Raw;
}

/** `host=url` pairs, from `--upstream` (repeatable) or BERTH_UPSTREAMS (comma separated). */
function upstreamPairs(pairs: string[], where: string): Raw[] {
  return pairs.map((p) => {
    const eq = p.indexOf('=');
    if (eq <= 0) throw new ConfigError(`${where}: "${p}" must be HOST=URL, e.g. docker.io=http://127.0.0.1:5001`);
    return { host: p.slice(0, eq).trim(), url: p.slice(eq + 1).trim() };
  });
}

function bool(v: string, name: string): boolean {
  if (/^(1|true|yes|on)$/i.test(v)) return true;
  if (/^(0|false|no|off)$/i.test(v)) return false;
  throw new ConfigError(`${name}: "${v}" is not a boolean (true/false)`);
}

/** Where a setting came from when not from the file: config path (`listen`, `storage.path`) → `--listen` / `BERTH_LISTEN`. */
type Origins = Map<string, string>;

function put(raw: Raw, origins: Origins, path: string, value: unknown, source: string): void {
  const keys = path.split('.');
  let at = raw;
  for (const k of keys.slice(0, -1)) at = section(at, k);
  at[keys[keys.length - 1]!] = value;
  origins.set(path, source);
}

/** The environment variables berth reads, documented in the README's configuration reference. */
function applyEnv(raw: Raw, env: NodeJS.ProcessEnv, origins: Origins): void {
  const e = (k: string) => (env[k] !== undefined && env[k] !== '' ? env[k] : undefined);
  const vars: Array<[string, string]> = [
    ['BERTH_LISTEN', 'listen'],
    ['BERTH_STORAGE', 'storage.path'],
    ['BERTH_STORAGE_MAX_SIZE', 'storage.maxSize'],
    ['BERTH_TAG_TTL', 'tagTtl'],
    ['BERTH_FILL_TIMEOUT', 'fillTimeout'],
    ['BERTH_LAZY_FILL', 'lazyFill'],
    ['BERTH_BANDWIDTH', 'bandwidth.limit'],
    ['BERTH_LOG_LEVEL', 'log.level'],
    ['BERTH_DEFAULT_UPSTREAM', 'defaultUpstream'],
    // Per replica or secret, so a Deployment gives them from the downward API and a Secret (no templated file).
    ['BERTH_CLUSTER_ADVERTISE', 'cluster.advertise'],
    ['BERTH_CLUSTER_SECRET', 'cluster.secret'],
    ['BERTH_INDEX_POSTGRES_URL', 'index.postgres.url'],
  ];
  for (const [name, path] of vars) if (e(name)) put(raw, origins, path, e(name), name);
  if (e('BERTH_OFFLINE')) put(raw, origins, 'offline', e('BERTH_OFFLINE') === 'except-parents' ? 'except-parents' : bool(e('BERTH_OFFLINE')!, 'BERTH_OFFLINE'), 'BERTH_OFFLINE');
  if (e('BERTH_FAILPOINTS'))
    put(
      raw,
      origins,
      'failpoints',
      e('BERTH_FAILPOINTS')!
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean),
      'BERTH_FAILPOINTS',
    );
  if (e('BERTH_UPSTREAMS')) put(raw, origins, 'upstreams', upstreamPairs(e('BERTH_UPSTREAMS')!.split(','), 'BERTH_UPSTREAMS'), 'BERTH_UPSTREAMS');
}

function applyFlags(raw: Raw, f: ConfigFlags, origins: Origins): void {
  if (f.listen !== undefined) put(raw, origins, 'listen', f.listen, '--listen');
  if (f.storage !== undefined) put(raw, origins, 'storage.path', f.storage, '--storage');
  if (f.offline !== undefined) put(raw, origins, 'offline', f.offline, '--offline');
  if (f.logLevel !== undefined) put(raw, origins, 'log.level', f.logLevel, '--log-level');
  if (f.defaultUpstream !== undefined) put(raw, origins, 'defaultUpstream', f.defaultUpstream, '--default-upstream');
  if (f.upstream && f.upstream.length > 0) put(raw, origins, 'upstreams', upstreamPairs(f.upstream, '--upstream'), '--upstream');
}

/** Env key for a host's credentials: `quay.io` → `BERTH_UPSTREAM_QUAY_IO_PASSWORD`. */
export function credentialEnvPrefix(host: string): string {
  return `BERTH_UPSTREAM_${host.toUpperCase().replace(/[^A-Z0-9]/g, '_')}_`;
}

function issuePath(path: PropertyKey[]): string {
  return path.map((p, i) => (typeof p === 'number' ? `[${p}]` : `${i > 0 ? '.' : ''}${String(p)}`)).join('') || '(top level)';
}

/** Each problem under the name of where its value came from: the flag or variable that set it, else the file. */
function formatIssues(err: z.ZodError, file: string, origins: Origins): string {
  return err.issues
    .map((i) => {
      const path = issuePath(i.path);
      let source = file;
      let best = -1;
      for (const [p, from] of origins) {
        if ((path === p || path.startsWith(`${p}.`) || path.startsWith(`${p}[`)) && p.length > best) {
          source = from;
          best = p.length;
        }
      }
      return `${source}: ${path}: ${i.message}`;
    })
    .join('\n');
}

/** Reads the file (when there is one), the environment and the flags into one validated, frozen Config. */
export function loadConfig(flags: ConfigFlags = {}, env: NodeJS.ProcessEnv = process.env): Readonly<Config> {
  let file = flags.config ?? env.BERTH_CONFIG;
  if (file === undefined && existsSync(DEFAULT_CONFIG_FILE)) file = DEFAULT_CONFIG_FILE;
  let raw: Raw = {};
  if (file !== undefined) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      throw new ConfigError(`--config: cannot read ${file}: ${(err as Error).message}`);
    }
    try {
      raw = (parseYaml(text) as Raw | null) ?? {};
    } catch (err) {
      throw new ConfigError(`${file}: not valid YAML: ${(err as Error).message.split('\n')[0]}`);
    }
    if (typeof raw !== 'object' || Array.isArray(raw)) throw new ConfigError(`${file}: the top level must be a mapping`);
  }
  const origins: Origins = new Map();
  applyEnv(raw, env, origins);
  applyFlags(raw, flags, origins);
  const parsed = ConfigSchema.safeParse(raw);
  if (!parsed.success) throw new ConfigError(formatIssues(parsed.error, file ?? 'configuration', origins));
  const config = parsed.data;

  const hosts = new Set<string>();
  config.upstreams.forEach((u, i) => {
    for (const h of [u.host, ...u.aliases]) {
      if (hosts.has(h)) throw new ConfigError(`upstreams[${i}].host: "${h}" is configured twice`);
      hosts.add(h);
    }
    const prefix = credentialEnvPrefix(u.host);
    if (env[`${prefix}USERNAME`]) u.username = env[`${prefix}USERNAME`];
    if (env[`${prefix}PASSWORD`]) u.password = env[`${prefix}PASSWORD`];
    if (u.passwordEnv !== undefined) {
      const v = env[u.passwordEnv];
      if (v === undefined) throw new ConfigError(`upstreams[${i}].passwordEnv: environment variable ${u.passwordEnv} is not set`);
      u.password = v;
    }
    if (u.passwordFile !== undefined) {
      try {
        u.password = readFileSync(u.passwordFile, 'utf8').split('\n')[0]!.trim();
      } catch (err) {
        throw new ConfigError(`upstreams[${i}].passwordFile: cannot read ${u.passwordFile}: ${(err as Error).message}`);
      }
    }
    if (u.ca !== undefined && !existsSync(u.ca)) throw new ConfigError(`upstreams[${i}].ca: file ${u.ca} does not exist`);
    if ((u.username === undefined) !== (u.password === undefined)) {
      throw new ConfigError(`upstreams[${i}]: username and password go together (password may come from passwordFile, passwordEnv or ${prefix}PASSWORD)`);
    }
  });

  const mustExist: Array<[string, string | undefined]> = [
    ['tls.certificate', config.tls?.certificate],
    ['tls.key', config.tls?.key],
    ['auth.htpasswd', config.auth?.htpasswd],
    ['auth.tokensFile', config.auth?.tokensFile],
    ['cluster.ca', config.cluster?.ca],
  ];
  for (const [field, file] of mustExist) {
    if (file !== undefined && !existsSync(file)) throw new ConfigError(`${field}: file ${file} does not exist`);
  }
  if (config.auth && !config.auth.htpasswd && !config.auth.tokensFile && !config.auth.anonymous) {
    throw new ConfigError('auth: anonymous is false but neither htpasswd nor tokensFile is set: nobody could pull');
  }

  let defaultUpstream = config.defaultUpstream;
  if (defaultUpstream === undefined) {
    defaultUpstream = config.upstreams.some((u) => u.host === 'docker.io') ? 'docker.io' : config.upstreams[0]!.host;
  } else if (!config.upstreams.some((u) => u.host === defaultUpstream)) {
    throw new ConfigError(`defaultUpstream: "${defaultUpstream}" is not one of the configured upstreams (${[...hosts].join(', ')})`);
  }
  return deepFreeze({ ...config, defaultUpstream });
}

function deepFreeze<T>(o: T): T {
  if (o && typeof o === 'object') {
    for (const v of Object.values(o)) deepFreeze(v);
    Object.freeze(o);
  }
  return o;
}

/** Splits `HOST:PORT` / `:PORT` into what net.Server.listen takes. */
export function listenAddress(listen: string): { host?: string; port: number } {
  const i = listen.lastIndexOf(':');
  const host = listen.slice(0, i).replace(/^\[|\]$/g, '');
  const port = Number(listen.slice(i + 1));
  return host ? { host, port } : { port };
}
