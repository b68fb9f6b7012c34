import type { Logger } from 'pino';
import type { UploadFiles } from './session-files.ts';
import type { Uploads } from './uploads.ts';

/**
 * Removes upload sessions nothing was sent to for `idleMs` (config `local.uploadIdle`): a session's last
 * activity is the newer mtime of its two files (every request to it rewrites its meta, every chunk its
 * data). Leftovers that belong to no session (a meta write cut short, data whose meta never got written)
 * go after the same time. Built and stopped by the composition root; the timer never keeps the process up.
 */
export class UploadSweeper {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<number> | undefined;

  constructor(
    private readonly files: UploadFiles,
    private readonly uploads: Uploads,
    private readonly idleMs: number,
    private readonly log: Logger,
  ) {}

  start(): void {
    // Often enough that a session outlives its idle time by at most a quarter of it (and at most a minute).
    const every = Math.max(50, Math.min(60_000, Math.floor(this.idleMs / 4)));
    this.timer = setInterval(() => {
      void this.sweep().catch((err: Error) => this.log.warn({ err: err.message }, 'upload sweep failed'));
    }, every);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  /** One pass; concurrent calls share it. Resolves with how many sessions were removed. */
  sweep(now = Date.now()): Promise<number> {
    this.running ??= this.pass(now).finally(() => (this.running = undefined));
    return this.running;
  }

  private async pass(now: number): Promise<number> {
    const entries = await this.files.list();
    const last = new Map<string, number>();
    const hasMeta = new Set<string>();
    for (const e of entries) {
      if (e.id === undefined) continue;
      last.set(e.id, Math.max(last.get(e.id) ?? 0, e.mtimeMs));
      if (e.kind === 'meta') hasMeta.add(e.id);
    }
    let removed = 0;
    for (const [id, at] of last) {
      if (now - at < this.idleMs) continue;
      if (hasMeta.has(id) && !(await this.uploads.expire(id))) continue;
      if (!hasMeta.has(id)) await this.files.remove(id);
      removed++;
    }
    for (const e of entries) {
      if (e.id === undefined && now - e.mtimeMs >= this.idleMs) await this.files.removeFile(e.file);
    }
    if (removed > 0) this.log.info({ sessions: removed, idleMs: this.idleMs }, 'removed idle upload sessions');
    return removed;
  }
}
