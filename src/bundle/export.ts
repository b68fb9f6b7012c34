import { createWriteStream } from 'node:fs';
import { rename, rm } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { MediaType } from '../oci/media-types.ts';
import type { WalkedImage } from '../registry/image-walk.ts';
import type { BlobReader } from '../store/roles.ts';
import { blobEntryName, CONTAINERD_NAME, LAYOUT_VERSION, LOCAL_MARK, REF_NAME } from './layout.ts';

/**
 * Writes images as an OCI image layout archive (a tar), streaming each blob from the store.
 * The archive appears at `out` only when complete (written beside it, then renamed).
 */
export async function writeBundle(images: WalkedImage[], store: Pick<BlobReader, 'stat' | 'read'>, out: string, onBytes: (n: number) => void = () => {}): Promise<{ blobs: number; bytes: number }> {
  const pack = tar.pack();
  const tmp = `${out}.partial`;
  const written = pipeline(pack, createWriteStream(tmp));
  const seen = new Set<string>();
  let bytes = 0;
  const add = async (name: string, body: Buffer) => {
    await new Promise<void>((ok, fail) => pack.entry({ name, size: body.length, mtime: new Date(0) }, body, (err) => (err ? fail(err) : ok())));
  };
  try {
    await add('oci-layout', Buffer.from(LAYOUT_VERSION));
    const blobs: Array<{ digest: string; size: number }> = [];
    for (const img of images) {
      for (const m of img.manifests) blobs.push({ digest: m.digest, size: m.size });
      for (const b of img.blobs) blobs.push({ digest: b.digest, size: b.size });
    }
    for (const b of blobs) {
      if (seen.has(b.digest)) continue;
      seen.add(b.digest);
      const size = (await store.stat(b.digest as never))?.size;
      if (size === undefined) throw new Error(`blob ${b.digest} is not in the cache`);
      const entry = pack.entry({ name: blobEntryName(b.digest), size, mtime: new Date(0) });
      const src = store.read(b.digest as never);
      src.on('data', (c: string | Buffer) => onBytes(c.length));
      await pipeline(src, entry);
      bytes += size;
    }
    const index = {
      schemaVersion: 2,
      mediaType: MediaType.OciIndex,
      manifests: images.map((img) => ({
        mediaType: img.root.mediaType,
        digest: img.root.digest,
        size: img.root.size,
        annotations: { [REF_NAME]: img.name, [CONTAINERD_NAME]: img.name, ...(img.route.local ? { [LOCAL_MARK]: 'true' } : {}) },
      })),
    };
    await add('index.json', Buffer.from(JSON.stringify(index, null, 2)));
    pack.finalize();
    await written;
    await rename(tmp, out);
    return { blobs: seen.size, bytes };
  } catch (err) {
    pack.destroy(err as Error);
    await written.catch(() => {});
    await rm(tmp, { force: true });
    throw err;
  }
}
