// Referrers as cosign, Notation and oras push them (OCI image spec v1.1): an artifact manifest with an
// `artifactType`, the empty config, one small blob and a `subject`; and, for a registry without the
// referrers API (Debian's docker-registry), the referrers tag `sha256-<hex>` holding an image index of them.
import assert from 'node:assert/strict';
import { request } from 'undici';
import { type Blob, digestOf, type Image, MediaTypes } from './blobs.ts';
import { request as rawRequest } from './http.ts';
import { type PushTarget, pushImage } from './push.ts';

export const EMPTY_CONFIG_TYPE = 'application/vnd.oci.empty.v1+json';
export const COSIGN_SIG = 'application/vnd.dev.cosign.artifact.sig.v1+json';
export const SPDX_SBOM = 'application/spdx+json';

export interface Artifact extends Image {
  artifactType: string;
  subject: { mediaType: string; digest: string; size: number };
  annotations: Record<string, string>;
}

const blob = (bytes: Buffer, mediaType: string): Blob => ({ digest: digestOf(bytes), size: bytes.length, mediaType, bytes });

/** An artifact manifest about `subject` (an image's manifest), carrying `payload` as its one layer. */
export function buildArtifact(subject: { manifest: Buffer; mediaType: string }, artifactType: string, payload: string, annotations: Record<string, string> = {}): Artifact {
  const config = blob(Buffer.from('{}'), EMPTY_CONFIG_TYPE);
  const layer = blob(Buffer.from(payload), artifactType === COSIGN_SIG ? 'application/vnd.dev.cosign.simplesigning.v1+json' : artifactType);
  const desc = (b: Blob) => ({ mediaType: b.mediaType, digest: b.digest, size: b.size });
  const subjectDesc = { mediaType: subject.mediaType, digest: digestOf(subject.manifest), size: subject.manifest.length };
  const all = { 'org.opencontainers.image.created': '2026-12-01T00:00:00Z', ...annotations };
  const manifest = Buffer.from(
    JSON.stringify({ schemaVersion: 2, mediaType: MediaTypes.oci.manifest, artifactType, config: desc(config), layers: [desc(layer)], subject: subjectDesc, annotations: all }),
  );
  return {
    manifest,
    manifestDigest: digestOf(manifest),
    mediaType: MediaTypes.oci.manifest,
    config,
    layers: [layer],
    platform: { os: 'unknown', architecture: 'unknown' },
    artifactType,
    subject: subjectDesc,
    annotations: all,
  };
}

/** What the referrers API lists for an artifact. */
export function referrerDescriptor(a: Artifact): { mediaType: string; digest: string; size: number; artifactType: string; annotations: Record<string, string> } {
  return { mediaType: a.mediaType, digest: a.manifestDigest, size: a.manifest.length, artifactType: a.artifactType, annotations: a.annotations };
}

/** The referrers tag of a subject digest. */
export function referrersTagOf(subject: string): string {
  return subject.replace(':', '-');
}

/** The image index a client without a referrers API keeps under the referrers tag. */
export function referrersTagIndex(artifacts: Artifact[]): Buffer {
  return Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaTypes.oci.index, manifests: artifacts.map(referrerDescriptor) }));
}

/**
 * Pushes artifacts about one subject as oras does against a registry without the referrers API: each
 * artifact by digest, then the referrers tag index.
 */
export async function pushReferrers(up: PushTarget, repository: string, artifacts: Artifact[]): Promise<void> {
  for (const a of artifacts) await pushImage(up, repository, a.manifestDigest, a);
  const subject = artifacts[0]!.subject.digest;
  await pushIndexBytes(up, repository, referrersTagOf(subject), referrersTagIndex(artifacts));
}

async function pushIndexBytes(up: PushTarget, repository: string, tag: string, bytes: Buffer): Promise<void> {
  const res = await request(`${up.url.replace(/\/+$/, '')}/v2/${repository}/manifests/${tag}`, { method: 'PUT', body: bytes, headers: { 'content-type': MediaTypes.oci.index } });
  const text = await res.body.text();
  if (res.statusCode !== 201) throw new Error(`PUT referrers tag ${repository}:${tag}: ${res.statusCode} ${text.slice(0, 300)}`);
}

export const INDEX = 'application/vnd.oci.image.index.v1+json';

export interface ReferrersAnswer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  manifests: Array<{ digest: string; artifactType?: string; annotations?: Record<string, string>; mediaType: string; size: number }>;
  body: string;
}

export async function referrers(base: string, name: string, digest: string, query = ''): Promise<ReferrersAnswer> {
  const res = await rawRequest(base, `/v2/${name}/referrers/${digest}${query}`);
  const body = res.body.toString('utf8');
  const json = res.status === 200 ? (JSON.parse(body) as { schemaVersion: number; mediaType: string; manifests: ReferrersAnswer['manifests'] }) : undefined;
  if (json) {
    assert.equal(json.schemaVersion, 2);
    assert.equal(json.mediaType, INDEX);
  }
  return { status: res.status, headers: res.headers, manifests: json?.manifests ?? [], body };
}

export const digests = (a: ReferrersAnswer): string[] => a.manifests.map((m) => m.digest).sort();

/** A small image manifest (a subject); its bytes are never fetched by these tests. */
export function image0(): Image {
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', nonce: Math.random() }));
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: digestOf(config), size: config.length },
      layers: [],
    }),
  );
  return {
    manifest,
    manifestDigest: digestOf(manifest),
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { digest: digestOf(config), size: config.length, mediaType: 'application/vnd.oci.image.config.v1+json', bytes: config },
    layers: [],
    platform: { os: 'linux', architecture: 'amd64' },
  };
}
