// What every figure gets: the options, the testbed, a scratch dir, the warm systems (started on first
// use) and fresh cold caches behind the rate-limited relay.
import { mkdtemp } from 'node:fs/promises';
import path from 'node:path';
import type { BenchOptions } from './options.ts';
import { type Server, startBerthServer, startNginx, startRegistryProxy } from './systems.ts';
import type { Testbed } from './testbed.ts';

export interface WarmSystems {
  berth: Server;
  registry: Server;
  nginx: Server;
  all: Server[];
}

export type CacheName = 'berth' | 'registry';

export interface BenchContext {
  opts: BenchOptions;
  bed: Testbed;
  /** A fresh directory for one figure's files. */
  scratch(name: string): Promise<string>;
  /** berth and docker-registry fetching straight from the upstream (no relay), and nginx; started once. */
  warm(): Promise<WarmSystems>;
  /** A new, empty cache that reaches the upstream through the relay (the link). Stop it when done. */
  cold(name: CacheName): Promise<Server>;
  log(message: string): void;
}

export function createContext(opts: BenchOptions, bed: Testbed): BenchContext {
  const t0 = performance.now();
  let warm: Promise<WarmSystems> | undefined;
  return {
    opts,
    bed,
    scratch: (name) => mkdtemp(path.join(bed.dir, `${name}-`)),
    warm() {
      warm ??= (async () => {
        const [berth, registry, nginx] = await Promise.all([startBerthServer(bed.up.url), startRegistryProxy(bed.up.url), startNginx(bed)]);
        return { berth, registry, nginx, all: [berth, registry, nginx] };
      })();
      return warm;
    },
    cold: (name) => (name === 'berth' ? startBerthServer(bed.relay.url()) : startRegistryProxy(bed.relay.url())),
    log(message) {
      const s = ((performance.now() - t0) / 1000).toFixed(1).padStart(6);
      process.stderr.write(`[${s}s] ${message}\n`);
    },
  };
}
