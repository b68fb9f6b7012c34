import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import pino from 'pino';
import { DEFAULT_CONFIG_FILE } from '../config/load.ts';
import type { Config } from '../config/schema.ts';
import { type Berth, createBerth, type OpenMode } from '../server.ts';
import { configFrom } from './common.ts';

/**
 * Says which storage directory and config file an operator command used: both default to paths
 * relative to the current directory (./storage, config/berth.yaml), so a command run from elsewhere
 * would otherwise quietly look at another cache. Timestamped like the progress lines, on stderr.
 */
export function announceStorage(opts: Record<string, unknown>, config: Readonly<Config>): void {
  const file = typeof opts.config === 'string' ? opts.config : (process.env.BERTH_CONFIG ?? (existsSync(DEFAULT_CONFIG_FILE) ? DEFAULT_CONFIG_FILE : undefined));
  process.stderr.write(`${new Date().toISOString()} storage ${resolve(config.storage.path)} (config: ${file ? resolve(file) : 'none, defaults'})\n`);
}

/**
 * Opens a storage directory in this process for an operator command: the same registry code as
 * `berth serve`, without listening. Logs go to stderr at warn unless --log-level says otherwise.
 * `mode` says whether the command takes the storage lock (it writes) and whether a missing storage
 * directory may be created (commands that bring content in) or is an error (a typo must not look like
 * an empty cache).
 */
export async function openBerth(opts: Record<string, unknown>, mode: OpenMode): Promise<Berth> {
  const { cluster: notServing, ...config } = configFrom(opts);
  announceStorage(opts, config);
  const level = typeof opts.logLevel === 'string' ? opts.logLevel : 'warn';
  // An operator command run with a replica's config takes no part in the cluster: it does not listen, so a
  // fill lease it took would send every replica asking for that blob to a URL nobody answers, to wait out
  // the lease and fail with a 503. Without leases it reads the upstream itself (a blob a replica is
  // fetching at the same moment is read twice, at worst), and the replicas never wait on it.
  // It still evicts only while it holds the replicas' quota lease (server.ts), judged by their leaseTimeout.
  return createBerth(config, pino({ level }, pino.destination(2)), { ...mode, ...(notServing ? { leaseTimeoutMs: notServing.leaseTimeout } : {}) });
}
