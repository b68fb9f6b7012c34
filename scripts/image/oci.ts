// The image's JSON documents (image-spec config, manifest, index) and the oci-archive: a plain tar of an OCI
// image layout (oci-layout, index.json, blobs/sha256/<hex>) as `skopeo copy … oci-archive:` writes and
// `podman load` and `berth import` read. Every document is serialised with a fixed key order and every archive
// entry has the same mtime and owner, so the digests depend only on the inputs.
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { feedPack } from './layer.ts';

export const MediaTypes = {
  manifest: 'application/vnd.oci.image.manifest.v1+json',
  config: 'application/vnd.oci.image.config.v1+json',
  layer: 'application/vnd.oci.image.layer.v1.tar+gzip',
} as const;

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
  platform?: { architecture: string; os: string };
}

export interface Blob {
  digest: string;
  size: number;
  /** A file on disk (a layer), or the bytes (a JSON document). */
  file?: string;
  data?: Buffer;
}

export function jsonBlob(doc: unknown): Blob & { data: Buffer } {
  const data = Buffer.from(JSON.stringify(doc));
  return { digest: `sha256:${createHash('sha256').update(data).digest('hex')}`, size: data.length, data };
}

export interface ImageConfig {
  architecture: string;
  created: string;
  config: Record<string, unknown>;
  layers: Array<{ diffId: string; createdBy: string }>;
}

export function configDocument(c: ImageConfig): unknown {
  return {
    created: c.created,
    architecture: c.architecture,
    os: 'linux',
    config: c.config,
    rootfs: { type: 'layers', diff_ids: c.layers.map((l) => l.diffId) },
    history: c.layers.map((l) => ({ created: c.created, created_by: l.createdBy })),
  };
}

export function manifestDocument(config: Blob, layers: Blob[]): unknown {
  return {
    schemaVersion: 2,
    mediaType: MediaTypes.manifest,
    config: { mediaType: MediaTypes.config, digest: config.digest, size: config.size },
    layers: layers.map((l) => ({ mediaType: MediaTypes.layer, digest: l.digest, size: l.size })),
  };
}

export function indexDocument(manifests: Descriptor[]): unknown {
  return { schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests };
}

/** Writes the layout as a tar: oci-layout, index.json, then the blobs in digest order; layers stream from disk. */
export async function writeArchive(out: string, index: Buffer, blobs: Blob[], epoch: number): Promise<void> {
  const mtime = new Date(epoch * 1000);
  const owner = { uid: 0, gid: 0, uname: '', gname: '', mtime };
  const pack = tar.pack();
  const written = pipeline(pack, createWriteStream(out));
  const put = (name: string, data: Buffer) =>
    new Promise<void>((resolve, reject) => pack.entry({ name, type: 'file', mode: 0o644, size: data.length, ...owner }, data, (err) => (err ? reject(err) : resolve())));
  await feedPack(pack, written, async () => {
    await put('oci-layout', Buffer.from('{"imageLayoutVersion":"1.0.0"}'));
    await put('index.json', index);
    for (const dir of ['blobs/', 'blobs/sha256/']) {
      await new Promise<void>((resolve, reject) => pack.entry({ name: dir, type: 'directory', mode: 0o755, ...owner }, (err) => (err ? reject(err) : resolve())));
    }
    const unique = [...new Map(blobs.map((b) => [b.digest, b])).values()].sort((a, b) => (a.digest < b.digest ? -1 : 1));
    for (const b of unique) {
      const name = `blobs/sha256/${b.digest.slice('sha256:'.length)}`;
      if (b.data) await put(name, b.data);
      else await pipeline(createReadStream(b.file!), pack.entry({ name, type: 'file', mode: 0o644, size: b.size, ...owner }));
    }
  });
}
