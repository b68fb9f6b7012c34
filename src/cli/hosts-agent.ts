import { lookup } from 'node:dns/promises';
import { watch } from 'node:fs';
import { isIP } from 'node:net';
import { basename, dirname, resolve } from 'node:path';
import type { Config } from '../config/schema.ts';
import { removeHostsFiles, type SyncReport, writeHostsFiles } from './hosts-files.ts';

export interface AgentOptions {
  /** The certs.d directory (`/host/etc/containerd/certs.d` in the DaemonSet). */
  out: string;
  /** The configuration file to watch; undefined: configuration from flags and environment only. */
  configFile: string | undefined;
  /** Reads the configuration again (throws ConfigError on a bad one). */
  load: () => Readonly<Config>;
  /** The hosts.toml files for a configuration and berth's URL: registry host → text. */
  render: (config: Readonly<Config>, berthUrl: string) => Map<string, string>;
  url: string;
  /** Write the address the URL's host name resolves to, for nodes whose resolver knows no cluster names. */
  resolveHost: boolean;
  /** Full resync this often, which also repairs files someone removed or changed. */
  intervalMs: number;
  keepOnExit: boolean;
  log: (line: string) => void;
}

/** `http://berth.berth.svc:5000` → `http://10.96.0.12:5000`, by the resolver of this process (the pod's). */
export async function resolvedUrl(url: string): Promise<string> {
  const u = new URL(url);
  const host = u.hostname.replace(/^\[|\]$/g, '');
  if (isIP(host) !== 0) return url;
  const { address, family } = await lookup(host);
  u.hostname = family === 6 ? `[${address}]` : address;
  return u.href.replace(/\/$/, '');
}

function summary(r: SyncReport, removed: string[]): string {
  const parts = [
    r.written.length > 0 ? `wrote ${r.written.join(', ')}` : '',
    removed.length > 0 ? `removed ${removed.join(', ')}` : '',
    r.foreign.length > 0 ? `left alone (not written by berth hosts) ${r.foreign.join(', ')}` : '',
  ].filter(Boolean);
  return parts.length > 0 ? parts.join('; ') : `${r.unchanged.length} hosts.toml up to date`;
}

/**
 * The node agent (`berth hosts --out DIR --watch`): keeps DIR's hosts.toml files in step with the
 * configuration. It syncs at start, when the configuration file's directory changes (a ConfigMap volume
 * is updated by swapping its `..data` symlink, so the file itself is never written and watching it
 * would miss the change), on SIGHUP and every `intervalMs`. A configuration that does not load is
 * logged and the last good files stay. On SIGTERM or SIGINT (the DaemonSet deleted or the pod moved)
 * it removes the files it wrote unless `keepOnExit`. Resolves when it has stopped.
 */
export function runHostsAgent(o: AgentOptions): Promise<void> {
  let config: Readonly<Config> | undefined;
  let lastUrl: string | undefined;
  let lastForeign = '';
  // Syncs run one after the other: a burst of watch events or signals queues one more, not many.
  let running: Promise<void> = Promise.resolve();
  let queued = false;
  let stopping = false;

  const syncOnce = async (why: string) => {
    let next: Readonly<Config>;
    try {
      next = o.load();
    } catch (err) {
      o.log(`error: configuration not loaded (${why}), keeping the last good hosts.toml files: ${(err as Error).message}`);
      if (config === undefined) return;
      next = config;
    }
    let url = o.url;
    if (o.resolveHost) {
      try {
        url = await resolvedUrl(o.url);
      } catch (err) {
        o.log(`error: cannot resolve ${o.url} (${why}): ${(err as Error).message}`);
        if (lastUrl === undefined) return;
        url = lastUrl;
      }
    }
    config = next;
    lastUrl = url;
    const wanted = o.render(next, url);
    try {
      const report = await writeHostsFiles(o.out, wanted);
      const removed = await removeHostsFiles(o.out, new Set(wanted.keys()));
      // Foreign files are reported when that list changes, not at every periodic check.
      const foreign = report.foreign.join(',');
      if (foreign === lastForeign) report.foreign = [];
      lastForeign = foreign;
      if (report.written.length + removed.length + report.foreign.length > 0 || why === 'start') o.log(`${why}: ${summary(report, removed)}`);
    } catch (err) {
      o.log(`error: writing under ${o.out} (${why}): ${(err as Error).message}`);
    }
  };
  const sync = (why: string) => {
    if (stopping || queued) return;
    queued = true;
    running = running.then(() => {
      queued = false;
      return stopping ? undefined : syncOnce(why);
    });
  };

  const watchers: Array<{ close(): void }> = [];
  let debounce: NodeJS.Timeout | undefined;
  if (o.configFile !== undefined) {
    const file = resolve(o.configFile);
    const w = watch(dirname(file), (_event, name) => {
      // Any entry of a ConfigMap mount may be the swap (`..data`, `..2026_…`); elsewhere only the file.
      if (name !== null && name !== basename(file) && !name.startsWith('..')) return;
      clearTimeout(debounce);
      debounce = setTimeout(() => sync('configuration changed'), 200);
    });
    w.on('error', (err) => o.log(`error: watching ${dirname(file)}: ${err.message}`));
    watchers.push(w);
  }
  const timer = setInterval(() => sync('periodic check'), o.intervalMs);
  const onHup = () => sync('SIGHUP');
  process.on('SIGHUP', onHup);

  return new Promise((done) => {
    const stop = (signal: string) => {
      if (stopping) return;
      stopping = true;
      clearInterval(timer);
      clearTimeout(debounce);
      for (const w of watchers) w.close();
      process.off('SIGHUP', onHup);
      void running
        .then(async () => {
          if (o.keepOnExit) {
            o.log(`${signal}: stopping, hosts.toml files kept (--keep-on-exit)`);
            return;
          }
          const removed = await removeHostsFiles(o.out, new Set());
          o.log(`${signal}: stopping, removed ${removed.length > 0 ? removed.join(', ') : 'nothing'}`);
        })
        .catch((err: Error) => o.log(`error: removing under ${o.out}: ${err.message}`))
        .finally(done);
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
    sync('start');
  });
}
