// containerd hosts.toml (registry config_path) for tests. containerd falls back to `server` when every
// mirror host fails, and without a `server` line it uses the real registry (registry-1.docker.io for
// docker.io). So test hosts.toml files always name a dead loopback server, and are checked before use.
import { DEAD_ENDPOINT, isLoopback } from './safety.ts';

export interface MirrorHostsOptions {
  /** The mirror URL already contains the /v2/<prefix> part (berth's `/v2/quay.io` style path routing). */
  overridePath?: boolean;
  /** PEM file to verify an https mirror with. */
  ca?: string;
  skipVerify?: boolean;
  capabilities?: string[];
}

export function mirrorHostsToml(mirrorUrl: string, opts: MirrorHostsOptions = {}): string {
  const lines = [`server = "http://${DEAD_ENDPOINT}"`, '', `[host."${mirrorUrl}"]`, `  capabilities = [${(opts.capabilities ?? ['pull', 'resolve']).map((c) => `"${c}"`).join(', ')}]`];
  if (opts.overridePath === true) lines.push('  override_path = true');
  if (opts.ca !== undefined) lines.push(`  ca = "${opts.ca}"`);
  if (opts.skipVerify === true) lines.push('  skip_verify = true');
  const toml = `${lines.join('\n')}\n`;
  assertLoopbackHostsToml(toml);
  return toml;
}

/** Throws unless `server` and every [host."…"] are loopback URLs. */
export function assertLoopbackHostsToml(toml: string): void {
  const server = /^\s*server\s*=\s*"([^"]+)"/m.exec(toml)?.[1];
  if (server === undefined) {
    throw new Error('hosts.toml without `server`: containerd would fall back to the real registry');
  }
  const hosts = [...toml.matchAll(/^\s*\[host\."([^"]+)"\]/gm)].map((m) => m[1] ?? '');
  for (const url of [server, ...hosts]) {
    if (!isLoopback(url)) throw new Error(`hosts.toml names a non-loopback endpoint: ${url}`);
  }
}
