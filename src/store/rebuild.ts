import { createHash } from 'node:crypto';
import { createReadStream, existsSync } from 'node:fs';
import { readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { type Digest, digestFromHex } from '../oci/digest.ts';
import { MAX_MANIFEST_BYTES, parseManifest } from '../oci/manifest.ts';
import { isManifestMediaType } from '../oci/media-types.ts';
import type { StoragePaths } from './paths.ts';
import { imageClosure } from './pins.ts';
import { StoreIndex, type TagInput } from './store-index.ts';

export interface RebuildReport {
  movedAside?: string;
  blobs: number;
  manifests: number;
  tags: number;
  removed: string[];
}

/**
 * Rebuilds the SQLite index from what is on disk: the damaged database is moved aside, every blob file is
 * indexed (and, with `verify`, re-hashed; a file that does not hash to its name is removed), manifests
 * are recognised by parsing, and tags come back from the tag journal where their manifest is present.
 */
export async function rebuildIndex(paths: StoragePaths, o: { verify: boolean }): Promise<RebuildReport> {
  const report: RebuildReport = { blobs: 0, manifests: 0, tags: 0, removed: [] };
  if (existsSync(paths.database)) {
    report.movedAside = `${paths.database}.damaged-${Date.now()}`;
    await rename(paths.database, report.movedAside);
    for (const suffix of ['-wal', '-shm']) await rm(`${paths.database}${suffix}`, { force: true });
  }
  const index = new StoreIndex(paths.database);
  try {
    for (const prefix of await readdir(paths.blobs).catch(() => [] as string[])) {
      for (const hex of await readdir(join(paths.blobs, prefix)).catch(() => [] as string[])) {
        let d: Digest;
        try {
          d = digestFromHex(hex);
        } catch {
          continue;
        }
        const file = join(paths.blobs, prefix, hex);
        const { size, mtimeMs } = await stat(file);
        if (o.verify && (await hashFile(file)) !== hex) {
          await rm(file, { force: true });
          report.removed.push(file);
          continue;
        }
        let mediaType: string | null = null;
        let children: Array<{ digest: Digest; size: number; mediaType: string }> = [];
        if (size <= MAX_MANIFEST_BYTES) {
          const bytes = await readFile(file);
          if (bytes[0] === 0x7b) {
            try {
              const m = parseManifest(bytes);
              const json = JSON.parse(bytes.toString('utf8')) as { schemaVersion?: number };
              if (json.schemaVersion === 2 && isManifestMediaType(m.mediaType) && (m.manifests.length > 0 || m.blobs.length > 0)) {
                mediaType = m.mediaType;
                children = [...m.manifests, ...m.blobs].map((c) => ({ digest: c.digest, size: c.size, mediaType: c.mediaType }));
              }
            } catch {
              // a JSON config blob or anything else: a plain blob
            }
          }
        }
        index.putBlob(d, size, mediaType, Math.floor(mtimeMs));
        if (mediaType) {
          index.addChildren(d, children);
          report.manifests++;
        }
        report.blobs++;
      }
    }
    if (existsSync(paths.tagJournal)) {
      // One row per (upstream, repository, tag, negotiation); lines from before negotiation keys have
      // no `accept` and are the tag's own content (src/oci/negotiation.ts).
      const latest = new Map<string, Omit<TagInput, 'checkedAt'>>();
      for (const line of (await readFile(paths.tagJournal, 'utf8')).split('\n')) {
        try {
          const t = JSON.parse(line) as Omit<TagInput, 'checkedAt'> & { deleted?: true };
          // A tombstone (TagTable.delete) forgets every negotiation of the tag journalled before it.
          if (t.deleted) {
            const prefix = `${t.upstream}|${t.repository}|${t.tag}|`;
            for (const k of [...latest.keys()]) if (k.startsWith(prefix)) latest.delete(k);
            continue;
          }
          latest.set(`${t.upstream}|${t.repository}|${t.tag}|${t.accept ?? '*'}`, t);
        } catch {
          // a torn last line after a crash
        }
      }
      for (const t of latest.values()) {
        if (!index.getBlob(t.digest)?.mediaType) continue;
        // checkedAt 0: revalidated on first use when online, served as is offline.
        index.putTag({ ...t, checkedAt: 0 });
        // The whole image (an index's children's blobs too), as its pulls or pushes recorded it: for a local
        // repository these rows are what keeps its content from eviction.
        index.addRefs(t.upstream, t.repository, await imageClosure(index, t.digest));
        report.tags++;
      }
    }
  } finally {
    index.close();
  }
  return report;
}

async function hashFile(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const c of createReadStream(file, { highWaterMark: 1024 * 1024 })) h.update(c as Buffer);
  return h.digest('hex');
}
