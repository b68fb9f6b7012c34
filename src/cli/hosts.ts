import { writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import type { Command } from 'commander';
import type { Config } from '../config/schema.ts';
import { configFrom, run, withConfigOptions } from './common.ts';
import { resolvedUrl, runHostsAgent } from './hosts-agent.ts';
import { WRITTEN_BY, writeHostsFiles } from './hosts-files.ts';

/**
 * Where a node falls back to when berth is down (`server` in hosts.toml): the upstream berth itself is
 * configured with, for docker.io too (a site that points docker.io at its own mirror wants its nodes
 * to fall back there, not to Docker Hub).
 */
function fallbackServer(url: string): string {
  return normalized(url);
}

/**
 * A URL as berth itself parses it (WHATWG: a quote percent-encoded, tabs and newlines dropped), without
 * the trailing slash: the configuration's text is never what goes into the TOML.
 */
function normalized(url: string): string {
  return new URL(url).href.replace(/\/$/, '');
}

/** A TOML basic string: JSON's escapes (\", \\, \n, \uXXXX) are TOML's. */
const tomlString = (s: string): string => JSON.stringify(s);

/**
 * containerd's `certs.d/<registry>/hosts.toml` for one upstream: berth first (containerd adds
 * `?ns=<registry>`, which is how berth routes), the real registry as fallback, or berth alone when the
 * site is isolated and a fallback could only time out.
 */
export function hostsToml(upstreamHost: string, upstreamUrl: string, berthUrlText: string, fallback: boolean): string {
  const berthUrl = normalized(berthUrlText);
  const server = fallback ? fallbackServer(upstreamUrl) : berthUrl;
  return [
    `# ${upstreamHost} through berth. ${WRITTEN_BY}`,
    `server = ${tomlString(server)}`,
    '',
    `[host.${tomlString(berthUrl)}]`,
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

/** Every registry host of the configuration → its hosts.toml (aliases too, but not Docker Hub's API host). */
export function hostsFiles(config: Readonly<Config>, berthUrl: string, fallback: boolean): Map<string, string> {
  const files = new Map<string, string>();
  for (const u of config.upstreams) {
    for (const host of [u.host, ...u.aliases.filter((a) => a !== 'registry-1.docker.io')]) files.set(host, hostsToml(host, u.url, berthUrl, fallback));
  }
  return files;
}

/** The longest delay setInterval keeps (2^31-1 ms, about 24.8 days). */
const MAX_TIMER_MS = 2 ** 31 - 1;

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
      .option('--docker <file>', "write docker's daemon.json mirror entry to this file (e.g. /etc/docker/daemon.json)")
      .option('--watch', 'node agent: keep the --out files in step with the configuration file (and SIGHUP), remove them on SIGTERM')
      .option('--resolve', "write the address the --url host name resolves to here (a cluster Service name nodes' resolvers do not know)")
      .option('--interval <seconds>', 'with --watch: also resync this often (repairs removed or changed files)', '60')
      .option('--keep-on-exit', 'with --watch: leave the files in place on SIGTERM'),
  ).action(
    run(async (opts) => {
      const config = configFrom(opts);
      const url = (typeof opts.url === 'string' ? opts.url : defaultBerthUrl(config)).replace(/\/$/, '');
      new URL(url);
      const fallback = opts.fallback !== false;
      const out = typeof opts.out === 'string' ? opts.out : undefined;
      if (opts.watch === true) {
        if (out === undefined) throw new Error('--watch keeps the files of --out DIR: give --out');
        const intervalMs = Number(opts.interval);
        if (!Number.isFinite(intervalMs) || intervalMs < 1) throw new Error(`--interval: "${String(opts.interval)}" is not a number of seconds`);
        // Node runs a timer longer than 2^31-1 ms every millisecond instead: a resync loop as root.
        if (intervalMs * 1000 > MAX_TIMER_MS) throw new Error(`--interval: ${intervalMs} s is longer than a timer can wait (at most ${Math.floor(MAX_TIMER_MS / 1000)} s)`);
        await runHostsAgent({
          out,
          configFile: typeof opts.config === 'string' ? opts.config : process.env.BERTH_CONFIG || undefined,
          load: () => configFrom(opts),
          render: (c, u) => hostsFiles(c, u, fallback),
          url,
          resolveHost: opts.resolve === true,
          intervalMs: intervalMs * 1000,
          keepOnExit: opts.keepOnExit === true,
          log: (line) => process.stdout.write(`berth hosts: ${line}\n`),
        });
        return;
      }
      const files = hostsFiles(config, opts.resolve === true ? await resolvedUrl(url) : url, fallback);
      if (out !== undefined) {
        const report = await writeHostsFiles(out, files);
        for (const host of report.foreign) process.stdout.write(`left ${host}/hosts.toml alone: not written by berth hosts (remove it to let berth hosts write one)\n`);
      } else {
        for (const [host, toml] of files) process.stdout.write(`# --- ${host}/hosts.toml\n${toml}\n`);
      }
      // daemon.json is docker's, not containerd's: it never goes into the certs.d folder.
      if (typeof opts.docker === 'string') {
        await writeFile(opts.docker, daemonJson(url));
        process.stdout.write(`wrote docker's mirror entry to ${opts.docker}\n`);
      }
      if (out !== undefined) {
        process.stdout.write(`wrote hosts.toml for ${config.upstreams.length} registries under ${out}\n`);
      } else if (typeof opts.docker !== 'string') {
        process.stdout.write(`# --- /etc/docker/daemon.json (docker mirrors Docker Hub only; --docker FILE writes it)\n${daemonJson(url)}`);
      }
    }),
  );
}
