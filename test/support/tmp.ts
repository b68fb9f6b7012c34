// Per-instance state directories under os.tmpdir().
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

/** A fresh directory; the prefix names the helper so a leftover dir says who left it. */
export async function makeTempDir(prefix: string): Promise<string> {
  return mkdtemp(path.join(os.tmpdir(), `berth-${prefix}-`));
}

/**
 * Removes a helper's directory after its processes are gone. Set BERTH_KEEP_TMP=1 to keep every
 * directory (logs, registry data) for debugging a failed run.
 */
export async function removeTempDir(dir: string): Promise<void> {
  if (process.env.BERTH_KEEP_TMP === '1') return;
  await rm(dir, { recursive: true, force: true, maxRetries: 3 });
}
