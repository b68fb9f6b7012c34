// berth's storage directory as seen from outside: where DESIGN.md says a committed blob lives
// (storage/blobs/sha256/<2 hex>/<64 hex>), and whether it is there.
import { existsSync } from 'node:fs';
import { access } from 'node:fs/promises';
import path from 'node:path';
import { blobFiles } from './berth-cli.ts';

export async function exists(file: string): Promise<boolean> {
  return access(file).then(
    () => true,
    () => false,
  );
}

/** Where DESIGN.md says a committed blob lives: storage/blobs/sha256/<2 hex>/<64 hex>. */
export function committedPath(b: { storage: string }, digest: string): string {
  const hex = digest.slice('sha256:'.length);
  return path.join(b.storage, 'blobs', 'sha256', hex.slice(0, 2), hex);
}

/** The blob is committed at its place under blobs/ (checked synchronously). */
export function committed(b: { storage: string }, digest: string): boolean {
  return existsSync(committedPath(b, digest));
}

/** Some file under `<storage>/blobs/`, at any depth, is named after the digest. */
export async function hasBlobFile(storage: string, digest: string): Promise<boolean> {
  return (await blobFiles(storage)).some((f) => f.digest === digest);
}
