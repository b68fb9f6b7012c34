import { randomUUID } from 'node:crypto';
import { lstat, mkdir, readdir, readFile, rename, rm, rmdir, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

/**
 * The mark `berth hosts` puts in the first line of every hosts.toml it writes. It is how the node agent
 * knows its own files after a restart (it keeps no state file): a hosts.toml without it belongs to
 * someone else and is never overwritten or removed.
 */
export const WRITTEN_BY = 'Written by `berth hosts`.';

/** Whether a hosts.toml's text is one `berth hosts` wrote. */
export function writtenByBerth(text: string): boolean {
  const first = text.slice(0, text.indexOf('\n') >>> 0);
  return first.startsWith('#') && first.includes(WRITTEN_BY);
}

/** What one sync did, for the log: registry hosts by outcome. */
export interface SyncReport {
  written: string[];
  unchanged: string[];
  removed: string[];
  /** Foreign hosts.toml files where berth would have written one: left as they are. */
  foreign: string[];
}

async function readOrUndefined(file: string): Promise<string | undefined> {
  try {
    return await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

/**
 * Whether `<dir>/<registry>` and its hosts.toml are a real directory and file, or not there yet. berth
 * never makes a symlink there, so one (the agent runs as root: a symlink to /etc would have it write or
 * delete outside DIR) is someone else's and is not followed.
 */
async function notSymlinked(dir: string, host: string): Promise<boolean> {
  for (const [p, want] of [
    [join(dir, host), 'dir'],
    [join(dir, host, 'hosts.toml'), 'file'],
  ] as const) {
    const s = await lstat(p).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return undefined;
      throw err;
    });
    if (s === undefined) return true;
    if (want === 'dir' ? !s.isDirectory() : !s.isFile()) return false;
  }
  return true;
}

/**
 * Writes `<dir>/<registry>/hosts.toml` for each entry of `wanted` whose file is missing or differs, by a
 * temp file in the same directory and a rename, so containerd (which reads hosts.toml at every pull)
 * never sees half a file. A foreign file in the way, or a symlink, is left alone.
 */
export async function writeHostsFiles(dir: string, wanted: ReadonlyMap<string, string>): Promise<SyncReport> {
  const report: SyncReport = { written: [], unchanged: [], removed: [], foreign: [] };
  for (const [host, toml] of wanted) {
    const file = join(dir, host, 'hosts.toml');
    if (!(await notSymlinked(dir, host))) {
      report.foreign.push(host);
      continue;
    }
    const current = await readOrUndefined(file);
    if (current === toml) {
      report.unchanged.push(host);
      continue;
    }
    if (current !== undefined && !writtenByBerth(current)) {
      report.foreign.push(host);
      continue;
    }
    await mkdir(join(dir, host), { recursive: true });
    const tmp = join(dir, host, `.hosts.toml.${randomUUID()}.tmp`);
    try {
      await writeFile(tmp, toml);
      await rename(tmp, file);
    } catch (err) {
      await unlink(tmp).catch(() => undefined);
      throw err;
    }
    report.written.push(host);
  }
  return report;
}

/**
 * Removes the hosts.toml files berth wrote under `dir` for registries not in `keep` (all of them when
 * `keep` is empty: uninstall), and each registry directory left empty by that. Files without berth's
 * mark, and anything else in a registry directory (a CA file), stay.
 */
export async function removeHostsFiles(dir: string, keep: ReadonlySet<string>): Promise<string[]> {
  const removed: string[] = [];
  let entries: string[];
  try {
    entries = await readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return removed;
    throw err;
  }
  for (const host of entries) {
    if (keep.has(host)) continue;
    const file = join(dir, host, 'hosts.toml');
    if (!(await notSymlinked(dir, host).catch(() => false))) continue;
    const text = await readOrUndefined(file).catch(() => undefined);
    if (text === undefined || !writtenByBerth(text)) continue;
    await rm(file, { force: true });
    removed.push(host);
    // A temp file of a write cut short (the agent killed between write and rename) is ours too.
    for (const f of await readdir(join(dir, host)).catch(() => [])) {
      if (/^\.hosts\.toml\..+\.tmp$/.test(f)) await rm(join(dir, host, f), { force: true });
    }
    // Only an empty directory goes: rmdir refuses one that holds anything else.
    await rmdir(join(dir, host)).catch(() => undefined);
  }
  return removed;
}
