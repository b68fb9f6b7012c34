import { mkdir, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import type { Command } from 'commander';
import type { Config } from '../config/schema.ts';
import { configFrom, run, withConfigOptions } from './common.ts';

/**
 * Where a node falls back to when berth is down (`server` in hosts.toml): the upstream berth itself is
 * configured with, for docker.io too (a site that points docker.io at its own mirror wants its nodes
 * to fall back there, not to Docker Hub).
 */
function fallbackServer(url: string): string {
  return url.replace(/\/$/, '');
}

/**
 * containerd's `certs.d/<registry>/hosts.toml` for one upstream: berth first (containerd adds
 * `?ns=<registry>`, which is how berth routes), the real registry as fallback, or berth alone when the
 * site is isolated and a fallback could only time out.
 */
export function hostsToml(upstreamHost: string, upstreamUrl: string, berthUrl: string, fallback: boolean): string {
  const server = fallback ? fallbackServer(upstreamUrl) : berthUrl;
  return [
    `# ${upstreamHost} through berth. Written by \`berth hosts\`.`,
    `server = "${server}"`,
    '',
    `[host."${berthUrl}"]`,
    '  capabilities = ["pull", "resolve"]',
    ...(berthUrl.startsWith('http://') ? [] : ['  # ca = "/etc/containerd/certs.d/berth-ca.pem"   # when berth serves TLS with a private CA']),
    '',
  ].join('\n');
}

export function daemonJson(berthUrl: string): string {
  const host = new URL(berthUrl).host;
  const insecure = berthUrl.startsWith('http://') ? { 'insecure-registries': [host] } : {};
  return `${JSON.stringify({ 'registry-mirrors': [berthUrl], ...insecure }, null, 2)}\n`;
}

function defaultBerthUrl(config: Readonly<Config>): string {
  const port = config.listen.slice(config.listen.lastIndexOf(':') + 1);
  return `http://${hostname()}:${port}`;
}

export function hostsCommand(program: Command): void {
  withConfigOptions(
    program
      .command('hosts')
      .description("print the containerd hosts.toml files (and docker's daemon.json mirror) that point nodes at this berth")
      .option('--url <url>', 'berth as the nodes reach it (default: http://<this hostname>:<listen port>)')
      .option('--no-fallback', 'isolated site: no fallback to the real registries')
      .option('--out <dir>', 'write <dir>/<registry>/hosts.toml (containerd certs.d) instead of printing')
      .option('--docker <file>', "write docker's daemon.json mirror entry to this file (e.g. /etc/docker/daemon.json)"),
  ).action(
    run(async (opts) => {
      const config = configFrom(opts);
      const url = (typeof opts.url === 'string' ? opts.url : defaultBerthUrl(config)).replace(/\/$/, '');
      new URL(url);
      const fallback = opts.fallback !== false;
      for (const u of config.upstreams) {
        for (const host of [u.host, ...u.aliases.filter((a) => a !== 'registry-1.docker.io')]) {
          const toml = hostsToml(host, u.url, url, fallback);
          if (typeof opts.out === 'string') {
            await mkdir(join(opts.out, host), { recursive: true });
            await writeFile(join(opts.out, host, 'hosts.toml'), toml);
          } else {
            process.stdout.write(`# --- ${host}/hosts.toml\n${toml}\n`);
          }
        }
      }
      // daemon.json is docker's, not containerd's: it never goes into the certs.d folder.
      if (typeof opts.docker === 'string') {
        await writeFile(opts.docker, daemonJson(url));
        process.stdout.write(`wrote docker's mirror entry to ${opts.docker}\n`);
      }
      if (typeof opts.out === 'string') {
        process.stdout.write(`wrote hosts.toml for ${config.upstreams.length} registries under ${opts.out}\n`);
      } else if (typeof opts.docker !== 'string') {
        process.stdout.write(`# --- /etc/docker/daemon.json (docker mirrors Docker Hub only; --docker FILE writes it)\n${daemonJson(url)}`);
      }
    }),
  );
}
