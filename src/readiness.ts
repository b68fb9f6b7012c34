import { randomUUID } from 'node:crypto';
import { unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type Database from 'better-sqlite3';
import type { UpstreamClient } from './upstream/client.ts';

export interface ReadinessReport {
  ready: boolean;
  checks: { index: string; storage: string };
  offline: boolean;
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
    private readonly db: Database.Database,
    private readonly tmpDir: string,
    private readonly upstreams: readonly UpstreamClient[],
    private readonly offline: boolean,
  ) {}

  async report(): Promise<ReadinessReport> {
    const index = this.checkIndex();
    const storage = await this.checkStorage();
    return {
      ready: index === 'ok' && storage === 'ok',
      checks: { index, storage },
      offline: this.offline,
      upstreams: this.upstreams.map((c) => (c.health.down ? { host: c.host, up: false, retryInSeconds: Math.ceil(c.health.retryInMs / 1000) } : { host: c.host, up: true })),
    };
  }

  private checkIndex(): string {
    // better-sqlite3 waits for a lock synchronously: a probe must not hold the event loop for the
    // connection's full busy timeout (5 s) while another process writes.
    const timeout = this.db.pragma('busy_timeout', { simple: true }) as number;
    try {
      this.db.pragma('busy_timeout = 250');
      this.db.prepare('SELECT 1 FROM blobs LIMIT 1').get();
      // Takes the write lock and gives it back: fails on a read-only file, a full disk's journal, a lock held elsewhere.
      this.db.exec('BEGIN IMMEDIATE; ROLLBACK');
      return 'ok';
    } catch (err) {
      return `failed: ${(err as Error).message}`;
    } finally {
      this.db.pragma(`busy_timeout = ${Math.floor(timeout)}`);
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
