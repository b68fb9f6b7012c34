import { constants } from 'node:fs';
import { access, mkdir, stat } from 'node:fs/promises';
import type { Logger } from 'pino';
import type { StoragePaths } from './paths.ts';

/**
 * Checks the storage directory before anything opens it. `berth serve` creates a missing one (and says
 * so); an operator command refuses, since a typo in --storage or a command run from the wrong directory
 * would otherwise work on a new, empty cache. A directory berth cannot write is named as such, rather
 * than surfacing as SQLite's "unable to open database file".
 */
export async function prepareStorageDir(paths: StoragePaths, create: boolean, log: Logger): Promise<void> {
  const st = await stat(paths.root).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined;
    throw err;
  });
  if (!st) {
    if (!create) {
      throw new Error(`storage directory ${paths.root} does not exist (relative paths are from the current directory; set it with --storage, BERTH_STORAGE or storage.path)`);
    }
    await mkdir(paths.root, { recursive: true });
    log.warn({ storage: paths.root }, 'created the storage directory (it did not exist)');
    return;
  }
  if (!st.isDirectory()) throw new Error(`storage ${paths.root} is not a directory`);
  try {
    await access(paths.root, constants.W_OK);
  } catch (err) {
    throw new Error(`storage directory ${paths.root} is read-only (${(err as NodeJS.ErrnoException).code ?? 'not writable'}): berth writes its index and blobs there`);
  }
}
