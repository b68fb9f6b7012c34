import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { join, relative, sep } from 'node:path';
import { type Digest, digestFromHex } from '../oci/digest.ts';
import { parseManifest } from '../oci/manifest.ts';
import { type ImportDeps, type ImportResult, type IndexEntry, putVerified, register } from './import.ts';
import { REF_NAME } from './layout.ts';

/**
 * `skopeo sync --dest dir` output: one directory per image, named by its reference
 * (`registry.k8s.io/pause:3.9` with `--scoped`, else `pause:3.9`), holding `manifest.json`, the instance
 * manifests of an index as `<hex>.manifest.json`, and every blob as a file named by its hex digest.
 * Each file is verified on the way in, like any bundle.
 */
export async function importSkopeoDirs(ctx: ImportDeps, root: string, counts: { blobs: number; added: number; bytes: number }, onBytes: (n: number) => void): Promise<ImportResult> {
  const entries: IndexEntry[] = [];
  for (const dir of await imageDirs(root)) {
    const manifest = await readFile(join(dir, 'manifest.json'));
    const digest = `sha256:${createHash('sha256').update(manifest).digest('hex')}` as Digest;
    for (const name of await readdir(dir)) {
      const m = /^([a-f0-9]{64})(\.manifest\.json)?$/.exec(name);
      if (m) await putVerified(ctx, digestFromHex(m[1]!), createReadStream(join(dir, name)), counts, onBytes);
    }
    await putVerified(ctx, digest, createReadStream(join(dir, 'manifest.json')), counts, onBytes);
    const name = relative(root, dir).split(sep).join('/');
    entries.push({ digest, mediaType: parseManifest(manifest).mediaType, annotations: { [REF_NAME]: name } });
  }
  if (entries.length === 0) throw new Error(`${root} holds neither an OCI layout (index.json) nor skopeo sync directories (manifest.json)`);
  const { images, skipped } = await register(ctx, entries);
  return { images, skipped, ...counts };
}

/** Directories below `root` that hold a `manifest.json` (an image in skopeo's dir format). */
async function imageDirs(root: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (dir: string, depth: number): Promise<void> => {
    const items = await readdir(dir, { withFileTypes: true });
    if (items.some((i) => i.isFile() && i.name === 'manifest.json')) out.push(dir);
    if (depth > 8) return;
    for (const i of items) if (i.isDirectory()) await walk(join(dir, i.name), depth + 1);
  };
  await walk(root, 0);
  return out.sort();
}
