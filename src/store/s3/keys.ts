import { randomBytes } from 'node:crypto';
import { type Digest, digestHex, isDigest } from '../../oci/digest.ts';

/**
 * Where things live in the bucket, all under the configured prefix:
 *
 *   <prefix>blobs/sha256/<2 hex>/<64 hex>     verified content only: an object here always hashes to its name
 *                                             (it got there by a PUT of bytes hashed in memory, or by a copy of a
 *                                             verified ingest object)
 *   <prefix>ingest/<replica>.<12 hex>.<rand>  a write in progress (a multipart upload, then the completed object
 *                                             until it is copied into place); <replica> is the storage directory's
 *                                             own id, so a restarted replica can clear what it left behind
 *   <prefix>quarantine/<64 hex>.<time>        blobs that stopped hashing to their name
 *
 * Listing blobs/sha256/ gives keys in byte order, which for these names is digest order.
 */
export class S3Keys {
  constructor(
    readonly prefix: string,
    readonly replica: string,
  ) {}

  get blobs(): string {
    return `${this.prefix}blobs/sha256/`;
  }
  get ingest(): string {
    return `${this.prefix}ingest/`;
  }
  /** This replica's own ingest objects. */
  get ownIngest(): string {
    return `${this.ingest}${this.replica}.`;
  }

  blob(d: Digest): string {
    const hex = digestHex(d);
    return `${this.blobs}${hex.slice(0, 2)}/${hex}`;
  }

  /** A fresh ingest key for a write of `d`: never shared by two writers. */
  ingestFor(d: Digest): string {
    return `${this.ownIngest}${digestHex(d).slice(0, 12)}.${randomBytes(8).toString('hex')}`;
  }

  quarantine(d: Digest): string {
    return `${this.prefix}quarantine/${digestHex(d)}.${Date.now()}`;
  }

  /** The digest a key under blobs/ names, or undefined for a key that is not a blob (foreign, or misplaced). */
  digestOf(key: string): Digest | undefined {
    if (!key.startsWith(this.blobs)) return undefined;
    const rest = key.slice(this.blobs.length);
    const m = /^([0-9a-f]{2})\/([0-9a-f]{64})$/.exec(rest);
    if (!m || m[2]!.slice(0, 2) !== m[1]) return undefined;
    const d = `sha256:${m[2]}`;
    return isDigest(d) ? d : undefined;
  }
}
