import { createHash, type Hash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { type FileHandle, open } from 'node:fs/promises';
import type { Logger } from 'pino';
import type { Failpoints } from '../../failpoints.ts';
import type { Digest } from '../../oci/digest.ts';
import { RegistryError } from '../../oci/errors.ts';
import type { AsyncBlobIndex, AsyncManifestIndex } from '../../store/async-index-roles.ts';
import type { BlobIngester, BlobStatter } from '../../store/roles.ts';
import { DigestMismatchError } from '../../store/roles.ts';
import { LOCAL_UPSTREAM } from '../local-names.ts';
import type { Route } from '../upstreams.ts';
import type { UploadFiles, UploadMeta } from './session-files.ts';

export interface UploadsOptions {
  files: UploadFiles;
  store: BlobIngester & BlobStatter;
  index: Pick<AsyncBlobIndex, 'getBlob' | 'putBlob'> & Pick<AsyncManifestIndex, 'addRefs' | 'refsOf'>;
  log: Logger;
  /** Told after bytes landed or a blob was committed (the quota pass: sessions count against storage.maxSize). */
  onStored?: () => void;
  /** Crash points of the fault tests (`upload.before-rename`). */
  failpoints?: Pick<Failpoints, 'hit'>;
}

/** Where a session stands: `offset` bytes are in its data file. */
export interface UploadState {
  id: string;
  offset: number;
}

/** A chunk's declared place (`Content-Range: <start>-<end>`, inclusive). */
export interface ChunkRange {
  start: number;
  end: number;
}

/**
 * What this process knows of a session beyond its files: the running hash of the first `hashed` bytes
 * of its data, and whether a request is writing to it. After a restart there is none: the data file is
 * hashed again before the session takes more bytes or is committed.
 */
interface Live {
  hash: Hash;
  hashed: number;
  busy: boolean;
  removed: boolean;
}

/** `Range: 0-<last>` as distribution sends it (`0-0` for an empty session). */
export function rangeHeader(offset: number): string {
  return `0-${Math.max(0, offset - 1)}`;
}

/**
 * Blob upload sessions of the local registry (OCI distribution spec, "Pushing blobs"). A session's bytes
 * are appended to its data file as they arrive (streamed, with backpressure) and hashed as they are
 * written; the finishing PUT hands the file to the store's one verified commit (commitFile) only when
 * the hash is the digest the client named. One request writes to a session at a time; another is told
 * 416 with the session's Range rather than interleaving bytes.
 */
export class Uploads {
  private readonly live = new Map<string, Live>();

  constructor(private readonly o: UploadsOptions) {}

  async start(repository: string): Promise<UploadState> {
    return { id: await this.o.files.create(repository), offset: 0 };
  }

  /** GET of a session: where it stands. Counts as activity (the idle clock starts again). */
  async status(repository: string, id: string): Promise<UploadState> {
    const meta = await this.find(repository, id);
    const offset = await this.offsetOf(id);
    await this.touch(id, meta);
    return { id, offset };
  }

  /** PATCH: appends `body`; with `range`, only if it starts exactly where the session stands. */
  async append(repository: string, id: string, body: AsyncIterable<Buffer>, range?: ChunkRange, length?: number): Promise<UploadState> {
    const { meta, live } = await this.claim(repository, id);
    try {
      const offset = await this.written(id, live, range, length);
      return { id, offset: await this.write(id, meta, live, body, offset, range ? range.end + 1 - range.start : length) };
    } finally {
      live.busy = false;
    }
  }

  /**
   * PUT: appends the final `body` (if any), verifies the whole session against `d` and commits it to
   * `repository`. A mismatch removes the session: nothing of it is kept.
   */
  async finish(repository: string, id: string, d: Digest, body?: AsyncIterable<Buffer>, range?: ChunkRange, length?: number): Promise<{ size: number }> {
    const { meta, live } = await this.claim(repository, id);
    try {
      let size = await this.written(id, live, range, length);
      if (body) size = await this.write(id, meta, live, body, size, range ? range.end + 1 - range.start : length);
      await this.catchUp(id, live, size);
      const actual = `sha256:${live.hash.copy().digest('hex')}` as Digest;
      if (actual !== d) {
        await this.drop(id, live);
        throw new RegistryError('DIGEST_INVALID', `the uploaded content (${size} bytes) hashes to ${actual}, not ${d}: upload discarded`);
      }
      this.o.failpoints?.hit('upload.before-rename');
      if (live.removed) throw gone();
      try {
        await this.o.store.commitFile(d, this.o.files.data(id), { digest: actual, size });
      } catch (err) {
        // Cancelled (DELETE) or expired while this request verified it.
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw gone();
        // The file changed under us (it cannot, while we hold the session): discard rather than keep doubt.
        if (err instanceof DigestMismatchError) {
          await this.drop(id, live);
          throw new RegistryError('DIGEST_INVALID', err.message);
        }
        throw err;
      }
      await this.drop(id, live);
      await this.commitRefs(repository, d, size);
      return { size };
    } finally {
      live.busy = false;
    }
  }

  /** DELETE of a session. */
  async cancel(repository: string, id: string): Promise<void> {
    await this.find(repository, id);
    const live = this.live.get(id);
    await this.drop(id, live);
  }

  /**
   * Cross-repository mount: true (and `target` now references `d`) when `d` is committed and `from`
   * references it: a local repository by its '@local' reference row, a cached one by the row of the
   * upstream it routes to (any upstream, when the client named none). Otherwise false: the caller opens a
   * session instead, as the spec says.
   */
  async mount(target: string, d: Digest, from: Route): Promise<boolean> {
    const holds = (await this.o.index.refsOf(d)).some((r) => {
      if (r.repository !== from.repository) return false;
      if (from.local) return r.upstream === LOCAL_UPSTREAM;
      return from.explicit ? r.upstream === from.upstream : r.upstream !== LOCAL_UPSTREAM;
    });
    if (!holds) return false;
    const info = await this.o.store.stat(d);
    if (!info) return false;
    await this.commitRefs(target, d, info.size);
    return true;
  }

  /** Removes a session the sweeper found idle, unless a request is writing to it now. */
  async expire(id: string): Promise<boolean> {
    const live = this.live.get(id);
    if (live?.busy) return false;
    await this.drop(id, live);
    return true;
  }

  private async commitRefs(repository: string, d: Digest, size: number): Promise<void> {
    if (!(await this.o.index.getBlob(d))) await this.o.index.putBlob(d, size, null);
    await this.o.index.addRefs(LOCAL_UPSTREAM, repository, [d]);
    this.o.onStored?.();
  }

  private async find(repository: string, id: string): Promise<UploadMeta> {
    const meta = await this.o.files.meta(id);
    // Another repository's session is as unknown as a made-up id: ids must not be probed across names.
    if (!meta || meta.repository !== repository) throw new RegistryError('BLOB_UPLOAD_UNKNOWN', 'no such upload session in this repository');
    return meta;
  }

  private async offsetOf(id: string): Promise<number> {
    const size = await this.o.files.size(id);
    if (size === undefined) throw new RegistryError('BLOB_UPLOAD_UNKNOWN', 'upload session is gone');
    return size;
  }

  /** Finds the session and makes this request its only writer (no await between the check and the claim). */
  private async claim(repository: string, id: string): Promise<{ meta: UploadMeta; live: Live }> {
    const meta = await this.find(repository, id);
    let live = this.live.get(id);
    if (!live) {
      live = { hash: createHash('sha256'), hashed: 0, busy: false, removed: false };
      this.live.set(id, live);
    }
    if (live.busy) {
      const offset = (await this.o.files.size(id)) ?? 0;
      throw new RegistryError('RANGE_NOT_SATISFIABLE', 'another request is writing to this upload session', undefined, { Range: rangeHeader(offset) });
    }
    live.busy = true;
    return { meta, live };
  }

  /** The session's offset, checked against the chunk's declared range and length. */
  private async written(id: string, live: Live, range: ChunkRange | undefined, length: number | undefined): Promise<number> {
    const offset = await this.offsetOf(id).catch(async (err) => {
      await this.drop(id, live);
      throw err;
    });
    if (range) {
      if (range.start !== offset) {
        throw new RegistryError('RANGE_NOT_SATISFIABLE', `chunk starts at ${range.start}, the session holds ${offset} bytes: send from ${offset}`, undefined, { Range: rangeHeader(offset) });
      }
      if (length !== undefined && length !== range.end + 1 - range.start) {
        throw new RegistryError('BLOB_UPLOAD_INVALID', `Content-Range ${range.start}-${range.end} is ${range.end + 1 - range.start} bytes, Content-Length says ${length}`);
      }
    }
    return offset;
  }

  /**
   * Appends the body to the data file, chunk by chunk (each awaited: backpressure on the client), hashing
   * what was written when the hash is level with the file. However the body ends — complete, a client gone
   * mid-body, a write error — the file is synced and the session stands at what is in it.
   */
  private async write(id: string, meta: UploadMeta, live: Live, body: AsyncIterable<Buffer>, offset: number, limit: number | undefined): Promise<number> {
    await this.catchUp(id, live, offset);
    const fh = await open(this.o.files.data(id), 'a');
    let pos = offset;
    try {
      for await (const chunk of body) {
        if (live.removed) throw gone();
        if (limit !== undefined && pos - offset + chunk.length > limit) {
          throw new RegistryError('BLOB_UPLOAD_INVALID', `the chunk is longer than the ${limit} bytes its Content-Range or Content-Length declared`);
        }
        await writeAll(fh, chunk);
        live.hash.update(chunk);
        live.hashed += chunk.length;
        pos += chunk.length;
      }
    } finally {
      await fh.sync().catch(() => undefined);
      await fh.close();
      if (!live.removed) await this.touch(id, meta);
      if (pos > offset) this.o.onStored?.();
    }
    return pos;
  }

  /** Brings the running hash level with the first `size` bytes of the data file (all of them after a restart). */
  private async catchUp(id: string, live: Live, size: number): Promise<void> {
    if (live.hashed > size) {
      live.hash = createHash('sha256');
      live.hashed = 0;
    }
    if (live.hashed === size) return;
    for await (const chunk of createReadStream(this.o.files.data(id), { start: live.hashed, end: size - 1, highWaterMark: 256 * 1024 })) {
      live.hash.update(chunk as Buffer);
      live.hashed += (chunk as Buffer).length;
    }
    if (live.hashed !== size) throw new Error(`upload ${id}: data file shorter than ${size} bytes while hashing`);
  }

  private async touch(id: string, meta: UploadMeta): Promise<void> {
    await this.o.files.writeMeta(id, { ...meta, touched: Date.now() }).catch((err: Error) => this.o.log.warn({ upload: id, err: err.message }, 'could not record upload activity'));
  }

  private async drop(id: string, live: Live | undefined): Promise<void> {
    if (live) live.removed = true;
    this.live.delete(id);
    await this.o.files.remove(id);
  }
}

function gone(): RegistryError {
  return new RegistryError('BLOB_UPLOAD_UNKNOWN', 'the upload session was cancelled or expired meanwhile');
}

async function writeAll(fh: FileHandle, chunk: Buffer): Promise<void> {
  for (let done = 0; done < chunk.length; ) {
    const { bytesWritten } = await fh.write(chunk, done, chunk.length - done);
    done += bytesWritten;
  }
}
