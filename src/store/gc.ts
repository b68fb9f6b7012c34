import { readdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Digest } from '../oci/digest.ts';
import type { AsyncBlobIndex, AsyncManifestIndex, AsyncPinIndex, AsyncReferrerIndex, AsyncTagIndex } from './async-index-roles.ts';
import { LOCAL_UPSTREAM } from './index-roles.ts';
import type { BlobRemover } from './roles.ts';

export interface GcReport {
  partials: string[];
  blobs: Array<{ digest: Digest; size: number }>;
  /** Blobs in the store that the index does not know. */
  orphans: Digest[];
  freed: number;
}

export interface GcDeps {
  index: Pick<AsyncBlobIndex, 'allDigests' | 'getBlob' | 'deleteBlob'> &
    Pick<AsyncManifestIndex, 'childrenOf' | 'deleteChildren'> &
    Pick<AsyncTagIndex, 'allTags'> &
    Pick<AsyncReferrerIndex, 'referrerDigests' | 'forgetReferrer'> &
    LocalGcIndex;
  pins: Pick<AsyncPinIndex, 'digests'>;
  store: BlobRemover & { list(): AsyncIterable<ListedBlob> };
  /** Local directories of unfinished writes (ingest/, tmp/): what is older than minAgeMs there is nobody's. */
  staging: string[];
  /**
   * Other processes write this index meanwhile (index.driver postgres: the replicas, and operator commands
   * in other working directories). The storage lock gc holds excludes none of them, so the age of a row is
   * the only sign of their work in progress: unreached rows younger than minAgeMs stay (see collectGarbage).
   */
  shared?: boolean;
}

/** What a store's listing says of an object; `modifiedAt` (ms) when the store knows it (S3's LastModified). */
interface ListedBlob {
  digest: Digest;
  size: number;
  modifiedAt?: number;
}

/** What gc asks of the index about local repositories (issue #10). */
type LocalGcIndex = Pick<AsyncManifestIndex, 'localManifests' | 'refsOf' | 'deleteRef'>;

/**
 * Garbage collection of the storage directory: partial downloads and temp files nobody finished (older
 * than `minAgeMs`, so a running server's fills are left alone), blobs no tag or pin reaches, and blobs
 * the index does not know. Reachability follows manifest → children edges, and subject → referrer. Roots: tags, pins, and the
 * manifests local repositories hold (pushed content is the site's own until a DELETE lets it go); a local
 * blob younger than `minAgeMs` that nothing reaches yet is a push in progress (its manifest comes last)
 * and stays too.
 *
 * On a shared index (`shared`) every unreached row younger than `minAgeMs` stays: another process may be
 * between storing a manifest and tagging it, or prewarming an image it pins only at the end, or have made
 * it reachable after the walk above; none of that is visible from here. An object the index does not know
 * stays while it is younger than `minAgeMs` when the store says how old it is (S3): a replica stores the
 * object first and writes its row next, and gc reads the rows before it lists the bucket.
 */
export async function collectGarbage({ index, pins, store, staging, shared = false }: GcDeps, o: { dryRun: boolean; minAgeMs: number }): Promise<GcReport> {
  const report: GcReport = { partials: [], blobs: [], orphans: [], freed: 0 };
  const now = Date.now();
  for (const dir of staging) {
    for (const name of await readdir(dir).catch(() => [] as string[])) {
      const file = join(dir, name);
      const st = await stat(file).catch(() => undefined);
      if (!st || now - st.mtimeMs < o.minAgeMs) continue;
      report.partials.push(file);
      report.freed += st.size;
      if (!o.dryRun) await rm(file, { force: true });
    }
  }
  const reachable = new Set<Digest>(await pins.digests());
  const queue: Digest[] = [...(await index.allTags()).map((t) => t.digest), ...(await index.localManifests()), ...reachable];
  for (let d = queue.pop(); d; d = queue.pop()) {
    reachable.add(d);
    for (const c of await index.childrenOf(d)) if (!reachable.has(c.digest)) queue.push(c.digest);
    // A manifest whose subject is kept is kept (its signatures, SBOMs), and what it reaches.
    for (const r of await index.referrerDigests(d)) if (!reachable.has(r)) queue.push(r);
  }
  const known = new Set<string>();
  for (const d of await index.allDigests()) {
    known.add(d);
    if (reachable.has(d) || store.busy(d)) continue;
    const row = await index.getBlob(d);
    const local = (await index.refsOf(d)).filter((r) => r.upstream === LOCAL_UPSTREAM);
    if ((shared || local.length > 0) && row && now - row.createdAt < o.minAgeMs) continue;
    const size = row?.size ?? 0;
    report.blobs.push({ digest: d, size });
    report.freed += size;
    if (!o.dryRun) {
      await index.deleteBlob(d);
      await index.deleteChildren(d);
      await index.forgetReferrer(d);
      // A local repository no longer holds what is gone (a later blob of that digest is not its own).
      for (const r of local) await index.deleteRef(r.upstream, r.repository, d);
      await store.remove(d);
    }
  }
  for await (const b of store.list()) {
    if (known.has(b.digest)) continue;
    if (b.modifiedAt !== undefined && now - b.modifiedAt < o.minAgeMs) continue;
    report.orphans.push(b.digest);
    report.freed += b.size;
    if (!o.dryRun) await store.remove(b.digest);
  }
  return report;
}
