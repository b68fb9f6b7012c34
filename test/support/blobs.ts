// The shapes test images are made of, and the media types they use. Test-side only: berth's own types
// live in src/oci; these stay independent so a test never checks berth against berth.
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readFile } from 'node:fs/promises';
import type { Readable } from 'node:stream';

export interface Blob {
  digest: string;
  size: number;
  mediaType: string;
  /** File on disk, for blobs too big to hold in memory (exactly one of path/bytes is set). */
  path?: string;
  bytes?: Buffer;
  /** Layers only: sha256 of the uncompressed tar (the config's rootfs.diff_ids entry). */
  diffId?: string;
}

export interface Platform {
  architecture: string;
  os: string;
  variant?: string;
}

export interface Image {
  /** Exact manifest bytes as pushed: hash them to get manifestDigest. */
  manifest: Buffer;
  manifestDigest: string;
  mediaType: string;
  config: Blob;
  layers: Blob[];
  platform: Platform;
}

export interface Index {
  index: Buffer;
  digest: string;
  mediaType: string;
  images: Image[];
}

export type Format = 'oci' | 'docker';

export const MediaTypes = {
  oci: {
    manifest: 'application/vnd.oci.image.manifest.v1+json',
    index: 'application/vnd.oci.image.index.v1+json',
    config: 'application/vnd.oci.image.config.v1+json',
    layer: 'application/vnd.oci.image.layer.v1.tar+gzip',
  },
  docker: {
    manifest: 'application/vnd.docker.distribution.manifest.v2+json',
    index: 'application/vnd.docker.distribution.manifest.list.v2+json',
    config: 'application/vnd.docker.container.image.v1+json',
    layer: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
  },
} as const;

/** Accept header that gets any manifest kind back from a registry. */
export const ACCEPT_ALL_MANIFESTS = [MediaTypes.oci.manifest, MediaTypes.oci.index, MediaTypes.docker.manifest, MediaTypes.docker.index].join(', ');

export function digestOf(bytes: Buffer | string): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

/** sha256 digest of a file, streamed. */
export async function digestOfFile(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return `sha256:${hash.digest('hex')}`;
}

export function blobStream(blob: Blob): Readable | Buffer {
  if (blob.bytes !== undefined) return blob.bytes;
  if (blob.path !== undefined) return createReadStream(blob.path);
  throw new Error(`blob ${blob.digest} has neither bytes nor path`);
}

/** Whole blob in memory: for small blobs in assertions only. */
export async function blobBytes(blob: Blob): Promise<Buffer> {
  if (blob.bytes !== undefined) return blob.bytes;
  if (blob.path !== undefined) return readFile(blob.path);
  throw new Error(`blob ${blob.digest} has neither bytes nor path`);
}

/** Every distinct blob of an image or index (configs and layers; not manifests). */
export function blobsOf(item: Image | Index): Blob[] {
  const images = 'images' in item ? item.images : [item];
  const byDigest = new Map<string, Blob>();
  for (const image of images) for (const b of [image.config, ...image.layers]) byDigest.set(b.digest, b);
  return [...byDigest.values()];
}
