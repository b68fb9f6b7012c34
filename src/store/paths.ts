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
 *   <root>/uploads/<uuid>.data             a push's upload session (issue #10): the bytes received so far, appended in order
 *   <root>/uploads/<uuid>.json             its repository and times; <uuid> is berth's own randomUUID, never client text
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
  get uploads(): string {
    return join(this.root, 'uploads');
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
  /** An upload session's files; `id` must be one berth made (isUploadId), so no client text reaches a path. */
  uploadData(id: string): string {
    return join(this.uploads, `${uploadId(id)}.data`);
  }
  uploadMeta(id: string): string {
    return join(this.uploads, `${uploadId(id)}.json`);
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

const UPLOAD_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

/** Whether `s` has the shape of an upload session id (crypto.randomUUID: lowercase v4 UUID). */
export function isUploadId(s: string): boolean {
  return UPLOAD_ID.test(s);
}

function uploadId(id: string): string {
  if (!isUploadId(id)) throw new Error(`not an upload session id: ${JSON.stringify(id.slice(0, 80))}`);
  return id;
}
