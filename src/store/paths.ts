import { join } from 'node:path';
import { type Digest, digestHex } from '../oci/digest.ts';

/**
 * The storage directory, all of it:
 *
 *   <root>/blobs/sha256/<2 hex>/<64 hex>   verified content only: layers, configs and manifests, byte-exact.
 *                                          A file here always hashes to its name: it arrives by rename
 *                                          after verification and fsync, so a crash leaves nothing half-written.
 *   <root>/ingest/<64 hex>.<upstream>.data a fill in progress (sparse: lazily fetched ranges land at their offsets),
 *                                          one per upstream: bytes not yet verified are never shared across upstreams
 *   <root>/ingest/<64 hex>.<upstream>.json what of .data is on disk (extents) and the blob's size; written after
 *                                          the data it describes is synced, so it never claims bytes that are not there
 *   <root>/tmp/                            small writes (manifests, imports) before their rename
 *   <root>/berth.db                        SQLite index (WAL): blobs, tags, references, pins, access times
 *   <root>/tags.jsonl                      every tag change, appended: lets `berth index rebuild` restore tags
 *   <root>/quarantine/<64 hex>.<time>      blobs that stopped hashing to their name (found when served or by `berth verify`)
 *   <root>/berth.lock                      who has the storage open for writing: pid, start time, URL (see store/lock.ts)
 *   <root>/berth.lock.db                   always empty: the kernel (fcntl) lock that one writer holds through SQLite
 */
export class StoragePaths {
  constructor(readonly root: string) {}

  get blobs(): string {
    return join(this.root, 'blobs', 'sha256');
  }
  get ingest(): string {
    return join(this.root, 'ingest');
  }
  get tmp(): string {
    return join(this.root, 'tmp');
  }
  get database(): string {
    return join(this.root, 'berth.db');
  }
  get tagJournal(): string {
    return join(this.root, 'tags.jsonl');
  }
  get quarantine(): string {
    return join(this.root, 'quarantine');
  }
  get lock(): string {
    return join(this.root, 'berth.lock');
  }
  get lockDb(): string {
    return join(this.root, 'berth.lock.db');
  }

  blob(d: Digest): string {
    const hex = digestHex(d);
    return join(this.blobs, hex.slice(0, 2), hex);
  }
  /** Flat in ingest/ (no folder per upstream), so that tools that sweep ingest/ by age see every file. */
  ingestData(d: Digest, upstream: string): string {
    return join(this.ingest, `${digestHex(d)}.${ingestName(upstream)}.data`);
  }
  ingestMeta(d: Digest, upstream: string): string {
    return join(this.ingest, `${digestHex(d)}.${ingestName(upstream)}.json`);
  }
}

/** An upstream host as a file name part: `127.0.0.1:5001` → `127.0.0.1%3A5001` (reversible, no `/`). */
function ingestName(upstream: string): string {
  return encodeURIComponent(upstream.toLowerCase());
}
