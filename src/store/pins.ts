import type Database from 'better-sqlite3';
import type { Digest } from '../oci/digest.ts';
import type { ChildDescriptor, PinIndex } from './index-roles.ts';

/** Every digest an image needs, as far as the index knows: the manifest and its children, recursively (what a pin covers). */
export async function imageClosure(index: { childrenOf(d: Digest): ChildDescriptor[] | Promise<ChildDescriptor[]> }, root: Digest): Promise<Digest[]> {
  const out = new Set<Digest>();
  const queue = [root];
  for (let d = queue.pop(); d; d = queue.pop()) {
    if (out.has(d)) continue;
    out.add(d);
    for (const c of await index.childrenOf(d)) queue.push(c.digest);
  }
  return [...out];
}

/**
 * Pinned content: never evicted by the quota. A pin is held by a reference (`registry.k8s.io/pause:3.9`)
 * and covers every digest that image needs — its manifests and blobs — so unpinning one image leaves
 * another image's pin on shared layers in place. Built by StoreIndex on its own connection (index.pins).
 */
export class Pins implements PinIndex {
  private readonly s;

  constructor(private readonly db: Database.Database) {
    const p = (sql: string) => db.prepare(sql);
    this.s = {
      add: p('INSERT OR IGNORE INTO pins (digest, reference) VALUES (?, ?)'),
      removeRef: p('DELETE FROM pins WHERE reference = ?'),
      digests: p('SELECT DISTINCT digest FROM pins'),
      references: p('SELECT DISTINCT reference FROM pins ORDER BY reference'),
      isPinned: p('SELECT 1 FROM pins WHERE digest = ? LIMIT 1'),
    };
  }

  pin(reference: string, digests: Iterable<Digest>): void {
    this.db.transaction(() => {
      this.s.removeRef.run(reference);
      for (const d of digests) this.s.add.run(d, reference);
    })();
  }

  /** Returns how many digests the reference held. */
  unpin(reference: string): number {
    return this.s.removeRef.run(reference).changes;
  }

  isPinned(d: Digest): boolean {
    return this.s.isPinned.get(d) !== undefined;
  }

  digests(): Set<Digest> {
    return new Set((this.s.digests.all() as Array<{ digest: Digest }>).map((r) => r.digest));
  }

  references(): string[] {
    return (this.s.references.all() as Array<{ reference: string }>).map((r) => r.reference);
  }
}
