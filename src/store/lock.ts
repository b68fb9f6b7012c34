import { readFileSync } from 'node:fs';
import { readFile, rename, unlink, writeFile } from 'node:fs/promises';
import Database from 'better-sqlite3';
import type { StoragePaths } from './paths.ts';

/** What berth.lock says about the process that holds the storage. */
export interface LockInfo {
  /** The holder's PID in its own PID namespace (1 in most containers): for the message, not for the lock. */
  pid: number;
  /** The holder's start time as the kernel counts it (/proc/PID/stat field 22): tells a reused PID apart. */
  procStart?: string;
  startedAt: string;
  /** `serve`, `import`, `gc`…: who holds it. */
  command: string;
  /** The registry's URL once `berth serve` listens: commands that can go through it (prewarm) do. */
  url?: string;
  /** Where its admin endpoints (/_berth/prewarm) answer, when on a listener of their own. */
  adminUrl?: string;
}

/** The storage is held by another live process. */
export class StorageLockedError extends Error {
  override name = 'StorageLockedError';
  constructor(
    readonly root: string,
    readonly holder: LockInfo | undefined,
  ) {
    super(
      `storage ${root} is in use by ${holder ? `berth ${holder.command} (pid ${holder.pid}, since ${holder.startedAt}${holder.url ? `, serving ${holder.url}` : ''})` : 'another berth (it has not written berth.lock yet)'}: ` +
        'stop it first (read-only commands such as `berth ls` may run beside it)',
    );
  }
}

function procStart(pid: number): string | undefined {
  try {
    // The command name (field 2) may hold spaces and parentheses: count fields after its closing one.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

/** Whether `info` names a process of this PID namespace that is running now (us too: a second open in one process). */
function runningHere(info: LockInfo): boolean {
  const now = procStart(info.pid);
  return now !== undefined && (info.procStart === undefined || now === info.procStart);
}

async function readInfo(paths: StoragePaths): Promise<{ raw: string; info?: LockInfo }> {
  try {
    const raw = await readFile(paths.lock, 'utf8');
    try {
      const info = JSON.parse(raw) as LockInfo;
      return typeof info.pid === 'number' ? { raw, info } : { raw };
    } catch {
      return { raw };
    }
  } catch {
    return { raw: '' };
  }
}

/**
 * Who holds the storage, once the kernel lock says someone does. The holder writes berth.lock just after
 * it takes the lock, so for a moment the file may be missing or still a dead holder's: wait (briefly)
 * for one that names a process running here, or that changed since we first looked; a holder in another
 * PID namespace (another container) never looks running here, so that costs it the whole wait.
 */
async function describeHolder(paths: StoragePaths, waitMs = 1000): Promise<LockInfo | undefined> {
  const first = await readInfo(paths);
  const deadline = Date.now() + waitMs;
  let now = first;
  while (!(now.info && (runningHere(now.info) || now.raw !== first.raw)) && Date.now() < deadline) {
    await new Promise((ok) => setTimeout(ok, 25));
    now = await readInfo(paths);
  }
  return now.info;
}

const BUSY = new Set(['SQLITE_BUSY', 'SQLITE_LOCKED']);

/**
 * Takes the kernel lock: an open SQLite transaction on berth.lock.db under BEGIN EXCLUSIVE. SQLite locks
 * through fcntl POSIX locks, which the kernel keeps per open file on the inode (so across PID namespaces
 * on a shared volume) and drops when the process dies, kill -9 included. SQLite also keeps the locks of
 * every connection to one file in one process consistent, so a second open in this process is refused too.
 * The file stays empty: nothing is ever written to it, so a full disk does not stop it either. Nothing in
 * this process may open berth.lock.db other than through SQLite: closing any descriptor of a file drops
 * the process's POSIX locks on it (SQLite's own connections account for that).
 */
function kernelLock(paths: StoragePaths): Database.Database | 'busy' {
  // A short busy wait: a probe (lockHolder) holds a shared lock for a few microseconds.
  const db = new Database(paths.lockDb, { timeout: 250 });
  try {
    // No journal file: BEGIN EXCLUSIVE would otherwise create one, and fail with SQLITE_FULL on a full disk
    // (journal_mode OFF is not taken on this build; MEMORY is, and nothing is ever written anyway).
    db.pragma('journal_mode = MEMORY');
    db.exec('BEGIN EXCLUSIVE');
    return db;
  } catch (err) {
    db.close();
    if (BUSY.has((err as { code?: string }).code ?? '')) return 'busy';
    throw err;
  }
}

/**
 * The live holder of the storage, or undefined (nobody holds the kernel lock). Throws StorageLockedError
 * when it is held by a process that has not named itself in berth.lock (yet, or for a full disk).
 */
export async function lockHolder(paths: StoragePaths): Promise<LockInfo | undefined> {
  // A shared lock is enough to learn whether anyone holds the exclusive one, and taking it (for a moment)
  // does not make a holder of the storage out of this read-only probe.
  let db: Database.Database;
  try {
    db = new Database(paths.lockDb, { readonly: true, fileMustExist: true, timeout: 0 });
  } catch {
    return undefined; // never locked (or a storage from before berth.lock.db): nobody holds it
  }
  try {
    db.prepare('SELECT count(*) FROM sqlite_master').get();
    return undefined;
  } catch (err) {
    if (!BUSY.has((err as { code?: string }).code ?? '')) throw err;
  } finally {
    db.close();
  }
  const holder = await describeHolder(paths);
  if (!holder) throw new StorageLockedError(paths.root, undefined);
  return holder;
}

/**
 * The exclusive hold on a storage directory: one writer at a time (berth serve, or an operator command
 * that changes the index). The hold itself is a kernel lock (see kernelLock), so it is released by the
 * kernel when the holder dies and no crash leaves a storage that refuses to start; berth.lock only names
 * the holder (pid, start time, URL) for the message and for prewarm/pin to find the running server. A
 * berth.lock found while nobody holds the kernel lock is a dead holder's, and is simply overwritten.
 */
export class StorageLock {
  private writing: Promise<void> = Promise.resolve();
  private released = false;

  private constructor(
    private readonly paths: StoragePaths,
    private readonly db: Database.Database,
    private info: LockInfo,
  ) {}

  static async acquire(paths: StoragePaths, command: string): Promise<StorageLock> {
    const held = kernelLock(paths);
    if (held === 'busy') throw new StorageLockedError(paths.root, await describeHolder(paths));
    const info: LockInfo = { pid: process.pid, startedAt: new Date().toISOString(), command };
    const start = procStart(process.pid);
    if (start !== undefined) info.procStart = start;
    const lock = new StorageLock(paths, held, info);
    await lock.write();
    return lock;
  }

  /** Records the URL `berth serve` answers on, for commands that go through it. */
  async setUrl(url: string, adminUrl?: string): Promise<void> {
    this.info = { ...this.info, url, ...(adminUrl ? { adminUrl } : {}) };
    await this.write();
  }

  /**
   * berth.lock by rename, so a reader never sees it half-written. Writes take turns with each other and
   * with release(): a rename landing after release's unlink would leave a lock file nobody holds.
   */
  private write(): Promise<void> {
    this.writing = this.writing.then(() => (this.released ? undefined : this.writeNow()));
    return this.writing;
  }

  private async writeNow(): Promise<void> {
    const tmp = `${this.paths.lock}.${process.pid}.tmp`;
    try {
      await writeFile(tmp, `${JSON.stringify(this.info)}\n`);
      await rename(tmp, this.paths.lock);
    } catch {
      // Best effort (a full disk): the kernel lock still holds; others then refuse without a name, and
      // prewarm/pin refuse instead of going through the server.
      await unlink(tmp).catch(() => undefined);
    }
  }

  /** Removes berth.lock (ours: we hold the kernel lock until the next line), then lets go of the storage. */
  async release(): Promise<void> {
    this.released = true;
    await this.writing;
    await unlink(this.paths.lock).catch(() => undefined);
    if (this.db.open) this.db.close();
  }
}
