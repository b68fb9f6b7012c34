import { readFile, rename, rm, writeFile } from 'node:fs/promises';
import { Extents } from './extents.ts';

/**
 * A fill's checkpoint: `ingest/<name>.json`, what of `ingest/<name>.data` is on disk. Written only after the
 * data it describes was synced, so it may claim less than is there, never more.
 */
export interface Checkpoint {
  size: number;
  extents: Extents;
}

/** The checkpoint left by an earlier fill, unless there is none or it disagrees with the known size. */
export async function readCheckpoint(file: string, expectedSize: number | undefined): Promise<Checkpoint | undefined> {
  try {
    const meta = JSON.parse(await readFile(file, 'utf8')) as { size?: unknown; extents?: unknown };
    if (typeof meta.size !== 'number' || !Array.isArray(meta.extents)) return undefined;
    if (expectedSize !== undefined && expectedSize !== meta.size) return undefined;
    return { size: meta.size, extents: new Extents(meta.extents as Array<[number, number]>) };
  } catch {
    return undefined;
  }
}

/** Atomically (temp file, then rename): a full disk leaves the old checkpoint or none, never a truncated one. */
export async function writeCheckpoint(file: string, size: number, extents: Extents): Promise<void> {
  const tmp = `${file}.tmp`;
  try {
    await writeFile(tmp, JSON.stringify({ size, extents: extents.toJSON() }));
    await rename(tmp, file);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}
