import { randomBytes, randomUUID } from 'node:crypto';
import { open, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { syncDir } from '../../store/blob-store.ts';
import { isUploadId, type StoragePaths } from '../../store/paths.ts';

/** What an upload session's .json says. The offset is not stored: it is the data file's size. */
export interface UploadMeta {
  /** The repository the session was started for: another repository's request never finds it. */
  repository: string;
  /** ms since the epoch. */
  created: number;
  touched: number;
}

/** A file under uploads/ as the sweeper sees it. */
export interface UploadEntry {
  file: string;
  /** The session it belongs to, or undefined for a leftover (a meta write cut short). */
  id: string | undefined;
  kind: 'data' | 'meta' | 'other';
  mtimeMs: number;
  /** Allocated bytes (st_blocks × 512), as the quota counts ingest/. */
  bytes: number;
}

const ENTRY = /^([0-9a-f-]{36})\.(data|json)$/;

/**
 * The session files under `storage/uploads/`: `<id>.data` holds the bytes received so far, appended in
 * order, and `<id>.json` the session's repository and times. The data file is created first and the meta
 * file last, so a session with a .json always has its data; a .json without data is a session that was
 * committed (its data renamed into blobs/) just before a crash, and is gone. Every id here is berth's own
 * randomUUID: text from a client reaches a path only after isUploadId said it has that shape.
 */
export class UploadFiles {
  constructor(private readonly paths: StoragePaths) {}

  data(id: string): string {
    return this.paths.uploadData(id);
  }

  async create(repository: string, now = Date.now()): Promise<string> {
    const id = randomUUID();
    const fh = await open(this.paths.uploadData(id), 'wx');
    await fh.close();
    await this.writeMeta(id, { repository, created: now, touched: now });
    // The session must survive a power cut once the client was told its Location.
    await syncDir(this.paths.uploads);
    return id;
  }

  /** The session's meta, or undefined when `id` is not one of ours (any text a client sends is fine here). */
  async meta(id: string): Promise<UploadMeta | undefined> {
    if (!isUploadId(id)) return undefined;
    let text: string;
    try {
      text = await readFile(this.paths.uploadMeta(id), 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
    try {
      const m = JSON.parse(text) as Partial<UploadMeta>;
      if (typeof m.repository !== 'string' || typeof m.created !== 'number' || typeof m.touched !== 'number') return undefined;
      return { repository: m.repository, created: m.created, touched: m.touched };
    } catch {
      return undefined;
    }
  }

  /** Replaced whole (temp file, rename): a reader never sees half a meta file. */
  async writeMeta(id: string, meta: UploadMeta): Promise<void> {
    const tmp = join(this.paths.uploads, `${id}.json.${randomBytes(6).toString('hex')}.tmp`);
    await writeFile(tmp, JSON.stringify(meta));
    await rename(tmp, this.paths.uploadMeta(id));
  }

  /** Bytes in the session's data file, or undefined when it is gone. */
  async size(id: string): Promise<number | undefined> {
    try {
      return (await stat(this.paths.uploadData(id))).size;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
  }

  /** Removes both files (the meta first: without it the session is unknown at once). */
  async remove(id: string): Promise<void> {
    await rm(this.paths.uploadMeta(id), { force: true });
    await rm(this.paths.uploadData(id), { force: true });
  }

  async removeFile(file: string): Promise<void> {
    await rm(file, { force: true });
  }

  /** Bytes held by upload sessions (allocated blocks), for the quota. */
  async bytes(): Promise<number> {
    return (await this.list()).reduce((n, e) => n + e.bytes, 0);
  }

  async list(): Promise<UploadEntry[]> {
    const out: UploadEntry[] = [];
    for (const name of await readdir(this.paths.uploads).catch(() => [] as string[])) {
      const file = join(this.paths.uploads, name);
      const st = await stat(file).catch(() => undefined);
      if (!st?.isFile()) continue;
      const m = ENTRY.exec(name);
      const id = m && isUploadId(m[1]!) ? m[1]! : undefined;
      const kind = id === undefined ? 'other' : m![2] === 'data' ? 'data' : 'meta';
      out.push({ file, id, kind, mtimeMs: st.mtimeMs, bytes: st.blocks * 512 });
    }
    return out;
  }
}
