import { randomUUID } from 'node:crypto';
import { unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { AsyncRegistryIndex } from './store/async-index-roles.ts';
import type { UpstreamClient } from './upstream/client.ts';

export interface ReadinessReport {
  ready: boolean;
  /** `s3` only with storage.driver s3: the bucket blobs/ lives in. */
  checks: { index: string; storage: string; s3?: string };
  offline: boolean | 'except-parents';
  upstreams: Array<{ host: string; up: boolean; retryInSeconds?: number }>;
}

/**
 * What /readyz reports. Ready means berth can do its job with what it has: the index answers and takes
 * writes, and the storage directory takes files. Upstreams are reported, not required: a berth whose
 * upstreams are down still serves its cache (stale-if-error), and one that is offline on purpose is as
 * ready as it will ever be. Each check is a tiny real operation, not a flag set at start-up.
 */
export class Readiness {
  constructor(
    private readonly index: Pick<AsyncRegistryIndex, 'probe'>,
    private readonly tmpDir: string,
    private readonly upstreams: readonly UpstreamClient[],
    private readonly offline: boolean | 'except-parents',
    /** storage.driver s3: the bucket, probed with one bounded request (S3BlobStore.probe). */
    private readonly bucket?: { probe(): Promise<void> },
  ) {}

  async report(): Promise<ReadinessReport> {
    const [index, storage, s3] = await Promise.all([this.checkIndex(), this.checkStorage(), this.checkBucket()]);
    return {
      ready: index === 'ok' && storage === 'ok' && (s3 === undefined || s3 === 'ok'),
      checks: { index, storage, ...(s3 !== undefined ? { s3 } : {}) },
      offline: this.offline,
      upstreams: this.upstreams.map((c) => (c.health.down ? { host: c.host, up: false, retryInSeconds: Math.ceil(c.health.retryInMs / 1000) } : { host: c.host, up: true })),
    };
  }

  private async checkIndex(): Promise<string> {
    // A tiny real read and write with a short wait (StoreIndex.probe: a lock taken and given back; PgIndex: a statement).
    try {
      await this.index.probe();
      return 'ok';
    } catch (err) {
      return `failed: ${(err as Error).message}`;
    }
  }

  /** The message names the bucket and the endpoint (S3BlobStore.probe). */
  private async checkBucket(): Promise<string | undefined> {
    if (!this.bucket) return undefined;
    try {
      await this.bucket.probe();
      return 'ok';
    } catch (err) {
      return `failed: ${(err as Error).message}`;
    }
  }

  private async checkStorage(): Promise<string> {
    const probe = join(this.tmpDir, `.readyz-${randomUUID()}`);
    try {
      await writeFile(probe, 'ok');
      await unlink(probe);
      return 'ok';
    } catch (err) {
      await unlink(probe).catch(() => undefined);
      return `failed: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`;
    }
  }
}
