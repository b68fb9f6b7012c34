import { createHash } from 'node:crypto';
import { AbortMultipartUploadCommand, CompleteMultipartUploadCommand, CreateMultipartUploadCommand, DeleteObjectCommand, type S3Client, UploadPartCommand } from '@aws-sdk/client-s3';
import type { Digest } from '../../oci/digest.ts';
import { type BlobInfo, type BlobWriter, DigestMismatchError, type HashedFile } from '../roles.ts';
import { SEND_BODY, SERVER_SIDE, s3Failure } from './client.ts';
import type { GatewayWatch } from './gateway-watch.ts';

const MiB = 1024 * 1024;
/**
 * Multipart parts: S3 wants 5 MiB at least (but the last) and at most 10,000 parts, so 8 MiB for the first
 * 2,000 (16 GiB) and 64 MiB after that (up to 528 GiB). A writer holds two part buffers: one being sent
 * while the next fills, so memory per writer is bounded and the upload overlaps the incoming bytes.
 */
export const partSizeFor = (partNumber: number): number => (partNumber <= 2000 ? 8 * MiB : 64 * MiB);

export interface S3Bucket {
  client: S3Client;
  bucket: string;
  endpoint: string;
  /** Bounds the reads clients wait on by whether the gateway answers at all (without one: the client's own timeouts). */
  watch?: GatewayWatch;
}

/** `command` as a read a client waits on: through the watch when there is one. */
export function sendRead<T>(s3: S3Bucket, run: (opts?: { abortSignal: AbortSignal; requestTimeout: number }) => Promise<T>): Promise<T> {
  return s3.watch ? s3.watch.send(run) : run();
}

/** What a verified write hands to the store's one commit path: bytes still in memory, or a completed ingest object. */
export type Staged = { bytes: Buffer } | { key: string };

/** The store's commit: refuses unless `hashed` is `d` (and the staged object holds `hashed.size` bytes). */
export type Install = (d: Digest, hashed: HashedFile, staged: Staged) => Promise<void>;

/**
 * A verified write to S3. Bytes are hashed as they arrive and collected into parts; a blob smaller than one
 * part never leaves memory until commit, where it is PUT straight to its blobs/ key once its hash is known
 * (a PutObject is atomic, so that key never holds anything unverified). A larger one streams as a multipart
 * upload to its own ingest key; commit checks the hash first and completes the upload only when it matches
 * (else aborts it: nothing ever becomes visible), then the store copies the object into place. A multipart
 * upload's key is fixed when it is created, which is why the bytes cannot go to blobs/ directly.
 */
export class S3BlobWriter implements BlobWriter {
  private readonly hash = createHash('sha256');
  private bytes = 0;
  private ended = false;
  /** The part being filled, and how much of it is. */
  private part: Buffer | undefined;
  private filled = 0;
  /** A part buffer whose upload finished, for the next part of the same size. */
  private spare: Buffer | undefined;
  /** The one part upload in flight (rejects with its failure). */
  private inFlight: Promise<void> | undefined;
  private uploadId: string | undefined;
  /** Parts handed to sendPart so far (the next one's number is this + 1). */
  private started = 0;
  private completed = false;
  private readonly parts: Array<{ PartNumber: number; ETag: string | undefined }> = [];

  constructor(
    readonly digest: Digest,
    private readonly s3: S3Bucket,
    private readonly key: string,
    private readonly install: Install,
  ) {}

  get written(): number {
    return this.bytes;
  }

  async write(chunk: Buffer): Promise<void> {
    if (this.ended) throw new Error(`write of ${this.digest} after it ended`);
    this.hash.update(chunk);
    this.bytes += chunk.length;
    for (let off = 0; off < chunk.length; ) {
      if (!this.part) {
        const size = partSizeFor(this.started + 1);
        this.part = this.spare?.length === size ? this.spare : Buffer.allocUnsafe(size);
        this.spare = undefined;
        this.filled = 0;
      }
      const n = chunk.copy(this.part, this.filled, off);
      this.filled += n;
      off += n;
      if (this.filled === this.part.length) await this.sendPart();
    }
  }

  /** Sends the filled part once the one before it is done (so at most one is in flight, two buffers held). */
  private async sendPart(): Promise<void> {
    if (this.inFlight !== undefined) await this.inFlight;
    const buf = this.part!;
    const body = buf.subarray(0, this.filled);
    this.part = undefined;
    this.filled = 0;
    const { client, bucket, endpoint } = this.s3;
    if (!this.uploadId) {
      const created = await client.send(new CreateMultipartUploadCommand({ Bucket: bucket, Key: this.key })).catch((err: unknown) => {
        throw s3Failure('start an upload', endpoint, err);
      });
      this.uploadId = created.UploadId;
    }
    const PartNumber = ++this.started;
    const cmd = new UploadPartCommand({ Bucket: bucket, Key: this.key, UploadId: this.uploadId, PartNumber, Body: body, ContentLength: body.length });
    this.inFlight = client.send(cmd, SEND_BODY).then(
      (r) => {
        this.parts.push({ PartNumber, ETag: r.ETag });
        this.spare = buf;
      },
      (err: unknown) => {
        throw s3Failure('upload a part', endpoint, err);
      },
    );
    // Seen by the next write or by commit/abort; never an unhandled rejection meanwhile.
    this.inFlight.catch(() => undefined);
  }

  async commit(): Promise<BlobInfo> {
    if (this.ended) throw new Error(`commit of ${this.digest} after it ended`);
    this.ended = true;
    const hashed = { digest: `sha256:${this.hash.digest('hex')}` as Digest, size: this.bytes };
    try {
      if (hashed.digest !== this.digest) throw new DigestMismatchError(this.digest, hashed.digest);
      if (!this.uploadId) {
        await this.install(this.digest, hashed, { bytes: this.part ? this.part.subarray(0, this.filled) : Buffer.alloc(0) });
      } else {
        if (this.filled > 0) await this.sendPart();
        await this.inFlight;
        const { client, bucket, endpoint } = this.s3;
        await client.send(new CompleteMultipartUploadCommand({ Bucket: bucket, Key: this.key, UploadId: this.uploadId, MultipartUpload: { Parts: this.parts } }), SERVER_SIDE).catch((err: unknown) => {
          throw s3Failure('complete an upload', endpoint, err);
        });
        this.completed = true;
        await this.install(this.digest, hashed, { key: this.key });
      }
      this.release();
      return { size: this.bytes };
    } catch (err) {
      await this.cleanUp();
      throw err;
    }
  }

  async abort(): Promise<void> {
    if (this.ended) return; // after a commit (good or failed) there is nothing left of this write
    this.ended = true;
    await this.cleanUp();
  }

  /**
   * Leaves nothing: the upload aborted (its parts freed) or, once completed, the ingest object deleted (the
   * store deletes it after a good copy; this is for a copy that failed). Best effort: with the gateway down
   * a leftover stays under this replica's ingest/ prefix, which its next start clears.
   */
  private async cleanUp(): Promise<void> {
    await this.inFlight?.catch(() => undefined);
    const { client, bucket } = this.s3;
    if (this.uploadId && !this.completed) {
      await client.send(new AbortMultipartUploadCommand({ Bucket: bucket, Key: this.key, UploadId: this.uploadId })).catch(() => undefined);
    } else if (this.completed) {
      await client.send(new DeleteObjectCommand({ Bucket: bucket, Key: this.key })).catch(() => undefined);
    }
    this.release();
  }

  private release(): void {
    this.part = undefined;
    this.spare = undefined;
  }
}
