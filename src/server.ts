import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { createServer as createTlsServer, type Server as TlsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { resolve } from 'node:path';
import pino, { type Logger } from 'pino';
import { type ClusterParts, openCluster } from './cluster/open.ts';
import { oneShotQuotaLease } from './cluster/quota-lease.ts';
import { listenAddress } from './config/load.ts';
import type { Config } from './config/schema.ts';
import { ConversionPool } from './estargz/pool.ts';
import type { LayerConverter } from './estargz/types.ts';
import { Failpoints } from './failpoints.ts';
import { createApp } from './http/app.ts';
import { ClientAuth } from './http/client-auth.ts';
import { clusterEndpoint } from './http/cluster.ts';
import { RecentBytes } from './http/status/recent-bytes.ts';
import { RecentErrors } from './http/status/recent-errors.ts';
import { StatusBuilder } from './http/status/status.ts';
import { pushWarnings } from './http/write-rules.ts';
import { FillMemory } from './memory.ts';
import { Metrics } from './metrics.ts';
import type { Digest } from './oci/digest.ts';
import type { ByteRange } from './oci/range.ts';
import { Readiness } from './readiness.ts';
import { Blobs } from './registry/blobs.ts';
import { EstargzImages } from './registry/estargz/images.ts';
import { LayerConversions } from './registry/estargz/layer-conversions.ts';
import { Fills } from './registry/fill/fills.ts';
import { isDiskFull } from './registry/fill-errors.ts';
import { ImageWalker } from './registry/image-walk.ts';
import { LocalRegistry } from './registry/local/local-registry.ts';
import { Manifests } from './registry/manifests.ts';
import { Prewarmer } from './registry/prewarm.ts';
import { ReferrerWalker } from './registry/referrer-walk.ts';
import { Referrers } from './registry/referrers.ts';
import { Tags } from './registry/tags.ts';
import { UploadFiles } from './registry/uploads/session-files.ts';
import { UploadSweeper } from './registry/uploads/sweeper.ts';
import { Uploads } from './registry/uploads/uploads.ts';
import { Upstreams } from './registry/upstreams.ts';
import type { AsyncPinIndex, AsyncRegistryIndex } from './store/async-index-roles.ts';
import { BlobStore } from './store/blob-store.ts';
import { StorageLock } from './store/lock.ts';
import { openIndex } from './store/open-index.ts';
import { StoragePaths } from './store/paths.ts';
import { claimOf, claimPrefix } from './store/prefix-claim.ts';
import { Quota } from './store/quota.ts';
import type { BlobStorage } from './store/roles.ts';
import { openS3Store } from './store/s3/open.ts';
import { S3BlobStore } from './store/s3/s3-store.ts';
import { prepareStorageDir } from './store/storage-dir.ts';
import { BandwidthBudget } from './upstream/bandwidth.ts';

/** How often recorded access times are written to the index. */
const ACCESS_FLUSH_MS = 30_000;

export interface Berth {
  config: Readonly<Config>;
  /** The blob store of storage.driver; `paths` is the storage directory (with s3: the replica's working directory). */
  store: BlobStorage & { readonly paths: StoragePaths; close?(): void };
  /** The index of index.driver, asynchronous whatever the driver (SQLite runs behind asyncIndex()). */
  index: AsyncRegistryIndex;
  pins: AsyncPinIndex;
  quota: Quota;
  fills: Fills;
  upstreams: Upstreams;
  budget: BandwidthBudget;
  metrics: Metrics;
  log: Logger;
  manifests: Manifests;
  blobs: Blobs;
  tags: Tags;
  referrers: Referrers;
  walker: ImageWalker;
  prewarmer: Prewarmer;
  /** eStargz on demand (issue #11): `<tag>-esgz` tags. */
  estargz: EstargzImages;
  /** Starts listening; resolves with the bound address (and the admin listener's, when configured). */
  listen(): Promise<AddressInfo & { admin?: AddressInfo }>;
  /** Re-reads the TLS certificate and key (SIGHUP). */
  reloadTls(): void;
  close(): Promise<void>;
}

/** How a process opens the storage (see store/lock.ts and store/storage-dir.ts). */
export interface OpenMode {
  /** Take the exclusive storage lock as this command (`serve`, `import`…); false for read-only commands (`ls`). */
  lock?: string | false;
  /** Create a missing storage directory (serve), or refuse (operator commands). */
  createStorage?: boolean;
  /** The quota lease's timeout when the config's `cluster` was dropped (an operator command): the replicas' leaseTimeout. */
  leaseTimeoutMs?: number;
  /** The layer converter (tests inject one); default: berth's own. */
  converter?: LayerConverter;
}

/** The composition root: everything is built here from the validated config and passed in. */
export async function createBerth(config: Readonly<Config>, log: Logger = pino({ level: config.log.level }), mode: OpenMode = {}): Promise<Berth> {
  const paths = new StoragePaths(resolve(config.storage.path));
  await prepareStorageDir(paths, mode.createStorage ?? true, log);
  const lock = mode.lock === false ? undefined : await StorageLock.acquire(paths, mode.lock ?? 'serve');
  // onQuarantine runs only when a blob is served, after `index` below exists.
  const failpoints = new Failpoints(config.failpoints);
  const storeOptions = {
    verifyReads: config.storage.verifyReads,
    onQuarantine: (d: Digest, movedTo: string) => {
      void index.deleteBlob(d).catch((err: Error) => log.warn({ digest: d, err: err.message }, 'could not forget a quarantined blob in the index'));
      log.error({ digest: d, movedTo }, 'cached blob does not hash to its digest: quarantined, it will be fetched again');
    },
  };
  // storage.driver s3: blobs/ is in the bucket (an unreachable bucket ends start-up, exit code 2); only the
  // process holding the storage lock clears its own leftovers under the bucket's ingest/.
  const s3 = config.storage.driver === 's3' ? config.storage.s3 : undefined;
  const store: Berth['store'] = s3
    ? await openS3Store(s3, paths, { ...storeOptions, failpoints, sweep: lock !== undefined }).catch(async (err: unknown) => {
        await lock?.release();
        throw err;
      })
    : new BlobStore(paths, storeOptions);
  if (store instanceof BlobStore) await store.init();
  // index.driver postgres: an unreachable server ends start-up (exit code 2), as an unreachable bucket does.
  const opened = await openIndex(config.index, paths).catch(async (err: unknown) => {
    store.close?.();
    await lock?.release();
    throw err;
  });
  const { index } = opened;
  // One index per bucket prefix (store/prefix-claim.ts): a second SQLite instance, or another database, on
  // the same prefix would gc and evict this one's blobs. Checked by whoever writes (holds the storage lock).
  if (lock && store instanceof S3BlobStore) {
    await claimPrefix(store.s3, store.keys, claimOf(config.index, store.keys, paths.root)).catch(async (err: unknown) => {
      await index.close().catch(() => {});
      store.close?.();
      await lock.release();
      throw err;
    });
  }
  const budget = new BandwidthBudget(
    config.bandwidth.limit,
    config.upstreams.map((u) => [u.host, u.bandwidth] as [string, number | undefined]),
  );
  const metrics = new Metrics({
    bandwidthWait: () => budget.waitedMs(),
    // Read at scrape time only: `quota` is built below, and nothing scrapes before listen().
    storage: async () => {
      const { total, count } = await index.totals();
      return { bytes: total, blobs: count, quota: await quota.limit() };
    },
  });
  const upstreams = new Upstreams(config, {
    onHealthChange: (host, down) => {
      metrics.upstreamUp.set({ upstream: host }, down ? 0 : 1);
      log.warn({ upstream: host }, down ? 'upstream marked down after repeated failures' : 'upstream reachable again');
    },
    observer: (host) => ({
      warn: (fields, message) => log.warn(fields, message),
      responded: (operation, seconds) => metrics.upstreamDuration.observe({ upstream: host, operation }, seconds),
      failed: (kind) => metrics.upstreamErrors.inc({ upstream: host, kind }),
    }),
  });
  for (const c of upstreams.clients) metrics.upstreamUp.set({ upstream: c.host }, 1);
  // The status page's recent past (src/http/status): upstream bytes per second, the last errors.
  const recentBytes = new RecentBytes();
  const recentErrors = new RecentErrors();
  const memory = new FillMemory();
  const fills = new Fills(
    {
      started: () => {
        memory.fillStarted();
        metrics.fillsStarted.inc();
        metrics.fillsActive.inc();
      },
      ended: (fill, ok) => {
        metrics.fillsActive.dec();
        memory.afterFill(fill.extents.bytes);
        if (!ok) metrics.fillsFailed.inc();
        // `quota` is built below; a fill cannot end before then.
        if (!ok && isDiskFull(fill.error)) void quota.diskFull().catch((err: Error) => log.error({ err }, 'could not free space'));
        if (!ok) recentErrors.record({ kind: 'fill', digest: fill.digest, ...(fill.repository ? { repository: fill.repository } : {}), message: fill.error?.message ?? 'fill failed' });
      },
      upstreamBytes: (upstream, n, priority) => recentBytes.add(upstream, n, priority),
    },
    config.fills,
    failpoints,
  );
  // config.cluster (issue #12): fill leases in PostgreSQL; only a process holding the storage lock takes part.
  const cluster: ClusterParts | undefined = lock
    ? await openCluster(config, { log, metrics, fills }).catch(async (err: unknown) => {
        await lock.release();
        throw err;
      })
    : undefined;
  // The replicas share the index, so they should share what it describes: with their own directories each
  // keeps its own copies, and the one replica that runs the quota sees its own disk only.
  if (cluster && config.storage.driver === 'filesystem') {
    log.warn('cluster replicas with storage.driver filesystem: each keeps its own copy of the blobs it served; share them with storage.driver s3 (or one shared directory)');
  }
  // A writer on a shared PostgreSQL index that is not a replica evicts only under the replicas' quota lease.
  const quotaLease = lock && !cluster ? oneShotQuotaLease(config, { log, command: mode.lock || 'serve', ...(mode.leaseTimeoutMs ? { leaseTimeoutMs: mode.leaseTimeoutMs } : {}) }) : undefined;
  const pins = index.pins;
  const uploadFiles = new UploadFiles(paths);
  const quota: Quota = new Quota(index, store, config.storage.maxSize, log, {
    fillRunning: (d) => fills.get(d) !== undefined,
    stagedBytes: () => uploadFiles.bytes(),
    onEvicted: (evicted, freed) => {
      metrics.evictions.inc(evicted);
      metrics.evictedBytes.inc(freed);
    },
    ...(cluster ? { mayRun: () => cluster.cluster.mayRunQuota() } : {}),
    ...(quotaLease ? { mayRun: () => quotaLease.take(), ran: () => quotaLease.release() } : {}),
  });
  // A read-only command (no lock) must not evict beside a running server.
  if (lock) await quota.enforce();
  const { offline } = upstreams;
  const manifests = new Manifests({ index, store, upstreams, metrics, log, offline, tagTtl: config.tagTtl });
  const blobs = new Blobs({
    index,
    store,
    upstreams,
    fills,
    budget,
    quota,
    metrics,
    log,
    offline,
    lazyFill: config.lazyFill,
    retries: config.retries,
    fillTimeout: config.fillTimeout,
    abandonGrace: config.fills.abandonGrace,
    ...(cluster ? { cluster: cluster.cluster } : {}),
  });
  const tags = new Tags({ index, upstreams, offline });
  // Push upload sessions (issue #10): bytes landed or a blob committed run a quota pass, as a fill's commit does.
  const uploads = new Uploads({ files: uploadFiles, store, index, log, failpoints, onStored: () => void quota.enforce().catch((err: Error) => log.error({ err }, 'quota pass failed')) });
  const uploadSweeper = new UploadSweeper(uploadFiles, uploads, config.local.uploadIdle, log);
  if (lock) uploadSweeper.start();
  const referrers = new Referrers({ index, upstreams, manifests, log, offline, tagTtl: config.tagTtl });
  // eStargz on demand (issue #11): conversions abort on shutdown and leave nothing half-written.
  const conversionsAbort = new AbortController();
  // Worker threads at background priority, estargz.concurrency at once (src/estargz/pool.ts).
  const pool = mode.converter ? undefined : new ConversionPool({ concurrency: config.estargz.concurrency, spoolDir: paths.tmp });
  const converter: LayerConverter = mode.converter ?? pool!;
  const layerConversions = new LayerConversions({
    converter,
    store,
    index,
    blobs,
    quota,
    log,
    signal: conversionsAbort.signal,
    onConverted: () => metrics.estargzConversions.inc({ kind: 'layer' }),
  });
  if (lock) {
    const swept = await layerConversions.sweepLeftovers();
    if (swept > 0) log.info({ swept }, 'removed the temp files of eStargz conversions a stopped berth left');
  }
  const estargz = new EstargzImages({
    config: config.estargz,
    manifests,
    layers: layerConversions,
    store,
    index,
    blobs,
    log,
    offline,
    parent: upstreams.isParent,
    onConverted: () => metrics.estargzConversions.inc({ kind: 'image' }),
  });
  manifests.derive(estargz);
  const walker = new ImageWalker(upstreams, manifests);
  const prewarmer = new Prewarmer(walker, blobs, pins, quota, store, new ReferrerWalker(referrers, manifests), (image, platforms) =>
    estargz.convertWalked(image, (name) => walker.walk(name, platforms)),
  );
  const readiness = new Readiness(index, paths.tmp, upstreams.clients, config.offline, store instanceof S3BlobStore ? store : undefined);
  const local = new LocalRegistry({ index, store, deleteEnabled: config.delete.enabled, log });
  const usage = { totals: () => index.totals(), usage: (n: number) => opened.usage(n) };
  const status = new StatusBuilder({ startedAt: Date.now(), offline: config.offline, upstreams, budget, recentBytes, fills, index: usage, quota, metrics, errors: recentErrors });
  const deps = {
    blobReads: { observe: (d: Digest, r: readonly ByteRange[] | undefined, c: string | undefined) => estargz.learner?.observe(d, r, c) },
    upstreams,
    manifests,
    blobs,
    tags,
    referrers,
    uploads,
    metrics,
    log,
    prewarmer,
    readiness,
    index,
    maxPrewarmReferences: config.admin.maxPrewarmReferences,
    status,
    recentErrors,
    ...(cluster ? { cluster: clusterEndpoint({ secret: cluster.secret, advertise: cluster.advertise, blobs, fills, log, onUnauthorized: cluster.refused }) } : {}),
  };
  const localDeps = { local, catalog: index, maxManifestSize: config.local.maxManifestSize };
  const a = config.auth;
  const auth = a && (a.htpasswd || a.tokensFile || a.rules.length > 0) ? new ClientAuth({ ...a, onCheck: (result) => metrics.clientAuth.inc({ result }) }) : undefined;
  // Admin endpoints need an admin user only where there are users to log in as.
  const guard = { allowRemote: config.admin.allowRemote, ...(auth && (a?.htpasswd || a?.tokensFile) ? { auth } : {}) };
  const app = createApp({ ...deps, ...localDeps }, { registry: true, admin: !config.admin.listen, guard, allowAnonymousPush: config.local.allowAnonymousPush, ...(auth ? { auth } : {}) });
  const adminApp = config.admin.listen ? createApp({ ...deps, ...localDeps }, { registry: false, admin: true }) : undefined;
  const tlsFiles = () => ({ cert: readFileSync(config.tls!.certificate), key: readFileSync(config.tls!.key) });
  const flush = setInterval(() => {
    // A full disk or a busy index: the access times stay pending and go out with the next flush.
    index.flushAccess().catch((err: Error) => log.warn({ err: err.message }, 'could not record access times'));
  }, ACCESS_FLUSH_MS);
  flush.unref();
  let server: Server | TlsServer | undefined;
  let adminServer: Server | undefined;

  return {
    config,
    store,
    index,
    pins,
    quota,
    fills,
    upstreams,
    budget,
    metrics,
    log,
    manifests,
    blobs,
    tags,
    referrers,
    walker,
    prewarmer,
    estargz,
    async listen() {
      // Node checks headersTimeout on this interval: a fraction of it, so a slowloris ends on time.
      const { headers, idle } = config.clientTimeouts;
      const checking = { connectionsCheckingInterval: Math.max(250, Math.min(30_000, Math.floor(headers / 4))) };
      server = config.tls ? createTlsServer({ ...tlsFiles(), ...checking }, app.callback()) : createServer(checking, app.callback());
      // Layers take minutes on slow links: no overall request timeout. Slow headers (slowloris) end
      // after headersTimeout; a socket on which nothing moves for `idle` (a reader that never reads)
      // is closed, which releases its fill reader and buffers.
      server.requestTimeout = 0;
      server.headersTimeout = headers;
      server.keepAliveTimeout = Math.min(65_000, idle);
      server.timeout = idle;
      const bound = await listenOn(server, config.listen);
      log.info(
        { address: bound.address, port: bound.port, tls: !!config.tls, storage: paths.root, upstreams: upstreams.clients.map((c) => `${c.host}=${c.base.origin}`), offline: config.offline },
        'berth listening',
      );
      for (const w of pushWarnings({ localEnabled: upstreams.local.enabled, allowAnonymousPush: config.local.allowAnonymousPush, ...(auth ? { auth } : {}) }))
        log.warn({ prefixes: config.local.prefixes }, w);
      const url = (a: AddressInfo, tls: boolean) =>
        `${tls ? 'https' : 'http'}://${a.address === '::' || a.address === '0.0.0.0' ? '127.0.0.1' : a.address.includes(':') ? `[${a.address}]` : a.address}:${a.port}`;
      await lock?.setUrl(url(bound, !!config.tls));
      if (!adminApp || !config.admin.listen) return bound;
      adminServer = createServer(adminApp.callback());
      const admin = await listenOn(adminServer, config.admin.listen);
      log.info({ address: admin.address, port: admin.port }, 'admin listener (metrics, health, prewarm)');
      await lock?.setUrl(url(bound, !!config.tls), url(admin, false));
      return { ...bound, admin };
    },
    reloadTls() {
      if (!config.tls || !server || !('setSecureContext' in server)) return;
      server.setSecureContext(tlsFiles());
      log.info({ certificate: config.tls.certificate }, 'TLS certificate reloaded');
    },
    async close() {
      clearInterval(flush);
      uploadSweeper.stop();
      memory.close();
      for (const s of [server, adminServer]) {
        if (!s) continue;
        s.closeAllConnections();
        await new Promise<void>((ok) => s.close(() => ok()));
      }
      conversionsAbort.abort(new Error('berth is shutting down'));
      estargz.close();
      await pool?.close();
      for (const f of fills.all()) f.fail(new Error('berth is shutting down'));
      await cluster?.close();
      await quotaLease?.close();
      await upstreams.close();
      // PostgreSQL down at shutdown: the pending access times are lost (they only order eviction), the pool still ends.
      await index.close().catch((err: Error) => log.warn({ err: err.message }, 'could not write the last access times to the index'));
      store.close?.();
      await lock?.release();
    },
  };
}

async function listenOn(server: Server | TlsServer, listen: string): Promise<AddressInfo> {
  const addr = listenAddress(listen);
  await new Promise<void>((ok, fail) => {
    server.once('error', fail);
    server.listen(addr.port, addr.host, () => ok());
  });
  return server.address() as AddressInfo;
}
