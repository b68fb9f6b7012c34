import type { Logger } from 'pino';
import type { Config } from '../config/schema.ts';
import type { Metrics } from '../metrics.ts';
import type { BlobStore } from '../store/blob-store.ts';
import type { StoreIndex } from '../store/store-index.ts';
import type { Pins } from '../store/pins.ts';
import type { Quota } from '../store/quota.ts';
import type { BandwidthBudget } from '../upstream/bandwidth.ts';
import type { Fills } from './fill/fills.ts';
import type { Upstreams } from './upstreams.ts';

/** What the registry layer is built from; made once by the composition root (server.ts). */
export interface RegistryContext {
  config: Readonly<Config>;
  store: BlobStore;
  index: StoreIndex;
  pins: Pins;
  quota: Quota;
  fills: Fills;
  upstreams: Upstreams;
  budget: BandwidthBudget;
  metrics: Metrics;
  log: Logger;
}
