// The local registry (issue #10) from the client side, for tests: blobs are seeded straight into the store
// and the index (the upload routes are another part's), manifests go over real HTTP.
import { Readable } from 'node:stream';
import { request } from 'undici';
import type { Digest } from '../../src/oci/digest.ts';
import { LOCAL_UPSTREAM } from '../../src/registry/local-names.ts';
import type { InProcessBerth } from './berth.ts';
import { type Blob, blobBytes, type Image, type Index } from './blobs.ts';

export interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
  /** The error envelope's first code, when there is one. */
  code?: string;
  message?: string;
}

/** One request with an optional body (a Buffer is sent with Content-Length, a Readable chunked). */
export async function send(b: { url: string }, method: string, path: string, o: { body?: Buffer | Readable; contentType?: string; headers?: Record<string, string> } = {}): Promise<Answer> {
  const headers: Record<string, string> = { ...o.headers };
  if (o.contentType !== undefined) headers['content-type'] = o.contentType;
  const res = await request(`${b.url}${path}`, { method: method as 'GET', headers, ...(o.body !== undefined ? { body: o.body } : {}) });
  const body = Buffer.from(await res.body.arrayBuffer());
  const a: Answer = { status: res.statusCode, headers: res.headers, body };
  if (res.statusCode >= 400 && body.length > 0 && method !== 'HEAD') {
    try {
      const e = (JSON.parse(body.toString('utf8')) as { errors?: Array<{ code: string; message: string }> }).errors?.[0];
      if (e) {
        a.code = e.code;
        a.message = e.message;
      }
    } catch {
      // not an envelope
    }
  }
  return a;
}

/** Puts blobs into a local repository as an upload would leave them: verified bytes and the repository's reference. */
export async function seedLocalBlobs(b: InProcessBerth, repository: string, blobs: Blob[]): Promise<void> {
  for (const blob of blobs) {
    const bytes = await blobBytes(blob);
    await b.berth.store.putBytes(blob.digest as Digest, bytes);
    await b.berth.index.putBlob(blob.digest as Digest, bytes.length, null);
    await b.berth.index.addRefs(LOCAL_UPSTREAM, repository, [blob.digest as Digest]);
  }
}

export function putManifest(b: { url: string }, repository: string, reference: string, bytes: Buffer, contentType: string): Promise<Answer> {
  return send(b, 'PUT', `/v2/${repository}/manifests/${reference}`, { body: bytes, contentType });
}

/** An image pushed as a client does: its blobs (seeded), then its manifest under `reference`. */
export async function pushLocalImage(b: InProcessBerth, repository: string, reference: string, image: Image): Promise<Answer> {
  await seedLocalBlobs(b, repository, [image.config, ...image.layers]);
  return putManifest(b, repository, reference, image.manifest, image.mediaType);
}

/** An index: each image by digest, then the index under `reference`. */
export async function pushLocalIndex(b: InProcessBerth, repository: string, reference: string, index: Index): Promise<Answer> {
  for (const img of index.images) {
    const r = await pushLocalImage(b, repository, img.manifestDigest, img);
    if (r.status !== 201) throw new Error(`child ${img.manifestDigest}: ${r.status} ${r.body.toString()}`);
  }
  return putManifest(b, repository, reference, index.index, index.mediaType);
}

/** A body that arrives chunked (no Content-Length). */
export function chunked(bytes: Buffer, chunk = 16 * 1024): Readable {
  const parts: Buffer[] = [];
  for (let i = 0; i < bytes.length; i += chunk) parts.push(bytes.subarray(i, i + chunk));
  return Readable.from(parts);
}
