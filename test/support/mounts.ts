// Mounts: small tmpfs disks for full-disk tests, and what containerd/dockerd leave (overlay snapshots, shm, netns) under a helper's own directory.
import { execFile } from 'node:child_process';
import { open, readFile } from 'node:fs/promises';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** Mount points at or below `dir`, deepest first (so children are unmounted before parents). */
export async function mountsUnder(dir: string): Promise<string[]> {
  const info = await readFile('/proc/self/mountinfo', 'utf8');
  const prefix = dir.endsWith('/') ? dir : `${dir}/`;
  const points = info
    .split('\n')
    .map((line) => line.split(' ')[4])
    .filter((p): p is string => p !== undefined)
    // mountinfo escapes space, tab, newline and backslash as octal
    .map((p) => p.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))))
    .filter((p) => p === dir || p.startsWith(prefix));
  return [...new Set(points)].sort((a, b) => b.length - a.length);
}

/** Unmounts everything under `dir`; a busy mount is detached lazily so the dir can still be removed. */
export async function unmountUnder(dir: string): Promise<void> {
  for (const point of await mountsUnder(dir)) {
    try {
      await run('umount', [point]);
    } catch {
      await run('umount', ['-l', point]).catch(() => undefined);
    }
  }
}

/** A tmpfs of `size` (`20m`) at `dir` (which must exist): a small disk that fills up for real (we are root). */
export async function mountTmpfs(dir: string, size: string): Promise<void> {
  await run('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir]);
}

/** Writes `file` until its filesystem is full (something else filled the disk); anything but ENOSPC throws. */
export async function fillUp(file: string): Promise<void> {
  const fh = await open(file, 'w');
  try {
    for (;;) await fh.write(Buffer.alloc(1024 * 1024));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
  } finally {
    await fh.close();
  }
}
