import { readFileSync } from 'node:fs';
import { open, readFile, rename, unlink, writeFile } from 'node:fs/promises';
import type { StoragePaths } from './paths.ts';

/** What berth.lock says about the process that holds the storage. */
export interface LockInfo {
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
    readonly holder: LockInfo,
  ) {
    super(
      `storage ${root} is in use by berth ${holder.command} (pid ${holder.pid}, since ${holder.startedAt}${holder.url ? `, serving ${holder.url}` : ''}): ` +
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

/** Whether the process that wrote `info` is still running (a kill -9 leaves the file, not the process). */
function alive(info: LockInfo): boolean {
  // Our own PID in the file is a previous life of this process (a container restarted as PID 1) or a
  // second open in the same process (tests): not another holder.
  if (info.pid === process.pid) return false;
  try {
    process.kill(info.pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ESRCH') return false;
  }
  const now = procStart(info.pid);
  return info.procStart === undefined || now === undefined || now === info.procStart;
}

/** The live holder of the storage, or undefined (no lock file, or a stale one). */
export async function lockHolder(paths: StoragePaths): Promise<LockInfo | undefined> {
  let info: LockInfo;
  try {
    info = JSON.parse(await readFile(paths.lock, 'utf8')) as LockInfo;
  } catch {
    return undefined; // none, or half-written by a process that died at once: not a holder either way
  }
  return typeof info.pid === 'number' && alive(info) ? info : undefined;
}

/**
 * The exclusive hold on a storage directory: one writer at a time (berth serve, or an operator command
 * that changes the index). berth.lock is created with O_EXCL and names its holder; a file left by a
 * holder that is gone (kill -9, power cut) is stale and taken over, so a crash never leaves a storage
 * that refuses to start.
 */
export class StorageLock {
  private constructor(
    private readonly paths: StoragePaths,
    private info: LockInfo,
  ) {}

  static async acquire(paths: StoragePaths, command: string): Promise<StorageLock> {
    const info: LockInfo = { pid: process.pid, startedAt: new Date().toISOString(), command };
    const start = procStart(process.pid);
    if (start !== undefined) info.procStart = start;
    for (let attempt = 0; ; attempt++) {
      try {
        const fh = await open(paths.lock, 'wx');
        try {
          await fh.writeFile(`${JSON.stringify(info)}\n`);
        } catch (err) {
          // A full disk may take the file but not its content: berth still starts (it must serve what
          // it has); the empty file names no holder, so it protects nothing until space returns.
          if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
        } finally {
          await fh.close();
        }
        return new StorageLock(paths, info);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || attempt >= 2) throw err;
      }
      const holder = await lockHolder(paths);
      if (holder) throw new StorageLockedError(paths.root, holder);
      // Stale: move it aside by rename, then race for the O_EXCL create again; whoever wins holds the
      // storage. (Two processes finding the same stale file in the same instant could both get past
      // here: the window is between the read above and the rename, a few microseconds.)
      const aside = `${paths.lock}.stale-${process.pid}`;
      await rename(paths.lock, aside).catch(() => undefined);
      await unlink(aside).catch(() => undefined);
    }
  }

  /** Records the URL `berth serve` answers on, for commands that go through it. */
  async setUrl(url: string, adminUrl?: string): Promise<void> {
    this.info = { ...this.info, url, ...(adminUrl ? { adminUrl } : {}) };
    const tmp = `${this.paths.lock}.${process.pid}.tmp`;
    try {
      await writeFile(tmp, `${JSON.stringify(this.info)}\n`);
      await rename(tmp, this.paths.lock);
    } catch {
      // Best effort (a full disk): the lock still holds; commands then refuse instead of going through.
      await unlink(tmp).catch(() => undefined);
    }
  }

  /** Removes the lock file, if it is still ours. */
  async release(): Promise<void> {
    try {
      const now = JSON.parse(await readFile(this.paths.lock, 'utf8')) as LockInfo;
      if (now.pid !== this.info.pid || now.startedAt !== this.info.startedAt) return;
      await unlink(this.paths.lock);
    } catch {
      // already gone
    }
  }
}
