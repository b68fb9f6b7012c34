import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import { Counter } from 'prom-client';
import type { Metrics } from '../metrics.ts';
import type { Digest } from '../oci/digest.ts';
import { RegistryError } from '../oci/errors.ts';
import { IntegrityError } from '../oci/integrity.ts';
import type { BlobSource, Fill, SourceBody } from '../registry/fill/fill.ts';
import type { Fills } from '../registry/fill/fills.ts';
import type { Route } from '../registry/upstreams.ts';
import type { Priority } from '../upstream/bandwidth.ts';
import { Distrust, observeBody, Suspect } from './distrust.ts';
import type { LeaseHolder, Leases } from './leases.ts';
import { type PeerClient, PeerRefused } from './peer-client.ts';

/** After a peer said it has nothing (its fill just ended), look at the lease again this soon. */
const RECHECK_MS = 100;
/**
 * How long a replica about to commit a fill to shared storage waits for the owner's commit of the same blob
 * (see ownerCommitted): longer than the owner's upload takes (200 MB to RGW on this 2-core machine: about
 * 3 s alone, 6-9 s beside two more), so that it is rarely reached; reaching it costs one more copy, as before.
 */
const OWNER_COMMIT_WAIT_MS = 30_000;
/** How often the lease is looked at meanwhile (one small query). */
const OWNER_COMMIT_POLL_MS = 100;
/** The name of the quota runner's lease. */
export const QUOTA_LEASE = 'quota';

export interface ClusterOptions {
  leases: Leases;
  peers: PeerClient;
  fills: Fills;
  log: Logger;
  metrics: Metrics;
  leaseTimeoutMs: number;
  /** The replicas share their blob storage (storage.driver s3): a blob one of them committed is there for all. */
  sharedStorage?: boolean;
}

/**
 * One upstream read per blob across the replicas (docs/decisions.md "Cluster fills"). Every fill's source
 * is wrapped: each open() (the first request, a resume after a broken body, a lazy Range fetch) looks at
 * the fill lease. Ours, or free, or stale: the upstream, and the lease is ours until the fill ends. Another
 * live replica's: that replica's internal endpoint, Range included, so its one upstream body feeds us.
 * When the owner dies our body breaks, the fill resumes by calling open() again, we wait (bounded) until
 * its lease is stale, and one survivor takes it and continues from its own offset against the upstream
 * while the others read from it.
 */
export class Cluster {
  private readonly watched = new WeakSet<Fill>();
  /** The peer owners a fill has read from: one 'failed' listener per (fill, owner), not one per open() (a lazy fill opens per range). */
  private readonly peersOf = new WeakMap<Fill, Set<string>>();
  private readonly distrust = new Distrust();
  private readonly peerErrors: Counter<'kind'>;
  private readonly leasesTaken: Counter<'how'>;
  private readonly peerReads: Counter;
  private readonly peerBytes: Counter;
  private quotaRunner: boolean | undefined;

  constructor(private readonly o: ClusterOptions) {
    const registers = [o.metrics.registry];
    this.peerErrors = new Counter({
      name: 'berth_cluster_peer_errors_total',
      help: 'Reads from a peer replica that failed, by kind (unauthorized: cluster.secret differs)',
      labelNames: ['kind'],
      registers,
    });
    this.leasesTaken = new Counter({ name: 'berth_cluster_fill_leases_total', help: 'Fill leases this replica took: new, or taken over from a dead owner', labelNames: ['how'], registers });
    this.peerReads = new Counter({ name: 'berth_cluster_peer_reads_total', help: 'Fill bodies read from the owning peer replica instead of the upstream', registers });
    // Not in berth_upstream_bytes_total (SourceBody.fromPeer): a cluster's upstream bytes are the sum over its replicas.
    this.peerBytes = new Counter({ name: 'berth_cluster_peer_bytes_total', help: 'Blob bytes read from peer replicas (their upstream reads, shared)', registers });
  }

  /** The source a fill through `r` reads from, in place of `upstream` (blobs.ts). */
  wrap(r: Route, d: Digest, upstream: BlobSource): BlobSource {
    return { open: (range, priority, signal) => this.open(r, d, upstream, range, priority, signal) };
  }

  private async open(r: Route, d: Digest, upstream: BlobSource, range: { start: number; end?: number } | undefined, priority: () => Priority, signal: AbortSignal): Promise<SourceBody> {
    // A dead owner's lease goes stale within a timeout of its last heartbeat: waiting longer means something else is wrong.
    const deadline = Date.now() + 3 * this.o.leaseTimeoutMs;
    const ourselves = () => upstream.open(range, priority, signal);
    let suspect: Suspect | undefined;
    let last: unknown;
    while (Date.now() < deadline) {
      signal.throwIfAborted();
      const lease = await this.take(r.upstream, d);
      if (lease.mine) {
        this.leasesTaken.inc({ how: lease.tookOver ? 'takeover' : 'new' });
        if (lease.tookOver) this.o.log.warn({ digest: d, upstream: r.upstream, from: range?.start ?? 0 }, 'cluster: took over the fill of a replica that stopped heartbeating');
        this.watch(r.upstream, d);
        return ourselves();
      }
      if (this.distrust.has(r.upstream, d, lease.owner)) return ourselves();
      if (suspect?.owner === lease.owner && suspect.heartbeatedSince(lease.expiresInMs)) {
        // It heartbeats but does not answer us: its lease will not go, and waiting on it would hold the blob.
        this.distrusted(r.upstream, d, lease, 'timeout', `alive but not answering (${(last as Error | undefined)?.message ?? 'no answer'})`);
        return ourselves();
      }
      if (lease.url === this.o.leases.url) {
        // Our own URL under another id: this replica before a restart, dead by definition. Asking it would
        // be asking ourselves (our own fill, waiting for itself); wait for its heartbeat to go stale instead.
        this.o.log.info({ digest: d, waitMs: lease.expiresInMs }, 'cluster: the fill lease is held by this replica from before a restart; waiting for it to expire');
        await sleep(Math.min(Math.max(lease.expiresInMs, RECHECK_MS), Math.max(0, deadline - Date.now())), undefined, { signal });
        continue;
      }
      if (suspect?.owner === lease.owner) {
        // Unreachable, and not heartbeating since: presumably dead. Its lease goes stale when its heartbeat does.
        await sleep(Math.min(Math.max(lease.expiresInMs, RECHECK_MS), Math.max(0, deadline - Date.now())), undefined, { signal });
        continue;
      }
      const asked = Date.now();
      try {
        const body = await this.o.peers.open(lease.url, r.upstream, r.repository, d, range, signal);
        this.peerReads.inc();
        this.watchPeer(r.upstream, d, lease);
        return observeBody(
          body,
          signal,
          (err) => this.bodyBroke(r.upstream, d, lease, err),
          (n) => this.peerBytes.inc(n),
        );
      } catch (err) {
        if (signal.aborted) throw err;
        last = err;
        if (err instanceof PeerRefused && err.status === 401) {
          // Our secret is not the peers': we cannot read from them. Pulls keep working at the cost of a
          // second upstream read, and the operator hears of it.
          this.peerErrors.inc({ kind: 'unauthorized' });
          this.o.log.error({ peer: lease.url, digest: d }, 'cluster: a peer refused this replica (cluster.secret differs): fetching from the upstream instead');
          return ourselves();
        }
        if (err instanceof IntegrityError) {
          this.distrusted(r.upstream, d, lease, 'integrity', err.message);
          return ourselves();
        }
        if (err instanceof PeerRefused) {
          // The owner has no such fill now (it just ended, or failed): its lease is about to go.
          this.peerErrors.inc({ kind: err.status === 404 ? 'not-found' : 'status' });
          await sleep(RECHECK_MS, undefined, { signal });
          continue;
        }
        // Unreachable or silent: dead, or alive and not answering us. The next look at its lease tells which.
        this.peerErrors.inc({ kind: 'unreachable' });
        this.o.log.warn({ peer: lease.url, digest: d, err: (err as Error).message }, 'cluster: the replica owning a fill does not answer; looking at its lease again');
        suspect = new Suspect(lease.owner, asked + lease.expiresInMs, Date.now() - asked);
      }
    }
    // The owner neither answered nor let its lease go in time: the blob is not held up by it any longer.
    this.o.log.warn({ digest: d, err: (last as Error | undefined)?.message }, 'cluster: the replica owning a fill could not be read from in time: fetching from the upstream instead');
    return ourselves();
  }

  /**
   * Before this replica commits its fill of `d` (blobs.ts): on shared storage, waits while another live,
   * trusted replica holds the fill's lease, i.e. is still committing the same bytes. Readers of the owner get
   * its last byte just as it starts its own upload, so without this every replica found the blob missing and
   * uploaded a copy; after it, the store's commit finds the owner's object (a HEAD) and uploads nothing.
   * Waiting costs this replica's clients nothing they would not wait anyway (their last byte waits for our
   * commit, and our own upload to the same gateway would take at least as long as the owner's, which started
   * first). The lease ends when the owner's fill committed or failed; a dead owner's goes stale within the
   * lease timeout; one we do not trust, and a lease that is ours or cannot be read, are not waited on; and the
   * wait is bounded, so an owner whose upload hangs costs at most OWNER_COMMIT_WAIT_MS, then our own upload.
   */
  async ownerCommitted(r: Route, d: Digest): Promise<void> {
    if (!this.o.sharedStorage) return;
    const until = Date.now() + OWNER_COMMIT_WAIT_MS;
    for (let waited = false; ; waited = true) {
      const lease = await this.o.leases.fillHolder(r.upstream, d).catch(() => undefined);
      if (!lease || lease.mine || lease.expiresInMs === 0 || this.distrust.has(r.upstream, d, lease.owner)) return;
      if (Date.now() >= until) {
        this.o.log.warn({ digest: d, owner: lease.url, waitedMs: OWNER_COMMIT_WAIT_MS }, 'cluster: the replica owning a fill has not committed it in time: uploading our own copy');
        return;
      }
      if (!waited) this.o.log.info({ digest: d, owner: lease.url }, "cluster: waiting for the owner's commit of a fill before committing ours");
      await sleep(OWNER_COMMIT_POLL_MS);
    }
  }

  /** The owner failed us for this blob: remembered, counted and logged; we read the upstream ourselves. */
  private distrusted(upstream: string, d: Digest, lease: LeaseHolder, kind: 'integrity' | 'timeout', why: string): void {
    this.distrust.add(upstream, d, lease.owner, why);
    this.peerErrors.inc({ kind });
    this.o.log.error({ peer: lease.url, owner: lease.owner, digest: d, why }, 'cluster: a peer replica failed this blob; reading it from the upstream instead of from that peer');
  }

  /** Bytes from the peer that did not verify (digest, size, a body past its claim) fail the fill: never that peer again for it. */
  private watchPeer(upstream: string, d: Digest, lease: LeaseHolder): void {
    const fill = this.o.fills.get(d, upstream);
    if (!fill) return;
    const owners = this.peersOf.get(fill) ?? new Set<string>();
    this.peersOf.set(fill, owners);
    if (owners.has(lease.owner)) return;
    owners.add(lease.owner);
    fill.once('failed', (err: Error) => {
      if (err instanceof IntegrityError && !this.distrust.has(upstream, d, lease.owner)) this.distrusted(upstream, d, lease, 'integrity', err.message);
    });
  }

  /** A peer body that breaks twice for one blob (the owner stalls, resets): that peer is not used for it again. */
  private bodyBroke(upstream: string, d: Digest, lease: LeaseHolder, err: unknown): void {
    if (err instanceof IntegrityError) this.distrusted(upstream, d, lease, 'integrity', err.message);
    else if (this.distrust.strike(upstream, d, lease.owner) >= 2) this.distrusted(upstream, d, lease, 'timeout', `its body broke twice: ${(err as Error).message}`);
  }

  /** The lease, or a 503 naming PostgreSQL: without it we cannot know whether someone else is fetching. */
  private async take(upstream: string, d: Digest): Promise<LeaseHolder> {
    try {
      return await this.o.leases.takeFill(upstream, d);
    } catch (err) {
      throw new RegistryError('UNAVAILABLE', `cluster: cannot take the fill lease of ${d}: ${(err as Error).message}`);
    }
  }

  /** Our lease of a fill goes when the fill ends, committed or failed. */
  private watch(upstream: string, d: Digest): void {
    const fill = this.o.fills.get(d, upstream);
    if (!fill || this.watched.has(fill)) return;
    this.watched.add(fill);
    const release = () =>
      void this.o.leases.releaseFill(upstream, d).catch((err: Error) => this.o.log.warn({ digest: d, err: err.message }, 'cluster: could not release a fill lease (it expires by itself)'));
    fill.once('committed', release);
    fill.once('failed', release);
  }

  /**
   * Whether this replica may run quota and eviction now: only the holder of the 'quota' lease does, so two
   * replicas never evict from the shared store at once (store/quota.ts `mayRun`).
   */
  async mayRunQuota(): Promise<boolean> {
    try {
      const lease = await this.o.leases.takeNamed(QUOTA_LEASE);
      // Said once per change, not on every pass (a pass follows every commit).
      if (lease.mine !== this.quotaRunner) {
        if (lease.mine) this.o.log.info({ lease: QUOTA_LEASE, owner: this.o.leases.id }, 'cluster: this replica runs quota and eviction (it holds the quota lease)');
        else this.o.log.info({ lease: QUOTA_LEASE, runner: lease.url }, 'cluster: quota passes skipped: another replica runs quota and eviction');
      }
      this.quotaRunner = lease.mine;
      return lease.mine;
    } catch (err) {
      this.o.log.warn({ err: (err as Error).message }, 'cluster: quota pass skipped: cannot take the quota lease');
      return false;
    }
  }
}
