import type { Digest } from '../../oci/digest.ts';
import type { AsyncPinIndex } from '../async-index-roles.ts';
import type { PgDb } from './db.ts';
import { LOCK_CLASS } from './migrations.ts';

/**
 * Pins in PostgreSQL (src/store/pins.ts is the SQLite one and says what a pin is): the pins table of the same
 * database, so eviction on any replica sees every replica's pins.
 */
export class PgPins implements AsyncPinIndex {
  constructor(private readonly db: PgDb) {}

  /**
   * Replaces what `reference` pins. Two replicas pinning the same reference at once queue on an advisory lock
   * of it: without it each one's DELETE would miss the other's fresh rows and the two sets would merge.
   */
  async pin(reference: string, digests: Iterable<Digest>): Promise<void> {
    const list = [...new Set(digests)].sort();
    await this.db.tx(async (q) => {
      await q.run('SELECT pg_advisory_xact_lock($1, hashtext($2))', [LOCK_CLASS.pin, reference]);
      await q.run('DELETE FROM pins WHERE reference = $1', [reference]);
      if (list.length > 0) await q.run('INSERT INTO pins (digest, reference) SELECT d, $2 FROM unnest($1::text[]) AS d ON CONFLICT DO NOTHING', [list, reference]);
    });
  }

  /** Returns how many digests the reference held. */
  async unpin(reference: string): Promise<number> {
    return (await this.db.run('DELETE FROM pins WHERE reference = $1', [reference])).rowCount;
  }

  async isPinned(d: Digest): Promise<boolean> {
    return (await this.db.run('SELECT 1 FROM pins WHERE digest = $1 LIMIT 1', [d])).rows.length > 0;
  }

  async digests(): Promise<Set<Digest>> {
    return new Set((await this.db.run<{ digest: Digest }>('SELECT DISTINCT digest FROM pins')).rows.map((r) => r.digest));
  }

  async references(): Promise<string[]> {
    return (await this.db.run<{ reference: string }>('SELECT reference FROM pins GROUP BY reference ORDER BY reference COLLATE "C"')).rows.map((r) => r.reference);
  }
}
