import { RegistryError } from './errors.ts';
import { isDigest, type Digest } from './digest.ts';
import { MediaType, bareMediaType, isIndexMediaType, isManifestMediaType } from './media-types.ts';

/** The largest manifest berth accepts from an upstream (the distribution spec suggests 4 MiB). */
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

export interface Descriptor {
  mediaType: string;
  digest: Digest;
  size: number;
  platform?: Platform;
  annotations?: Record<string, string>;
}

/** What berth needs to know of a manifest: its kind and what it points at. Never re-serialised. */
export interface ParsedManifest {
  mediaType: string;
  /** For an index or manifest list: the child manifests. */
  manifests: Descriptor[];
  /** For an image manifest: the config followed by the layers. */
  blobs: Descriptor[];
}

function descriptor(v: unknown, where: string): Descriptor {
  const o = v as Record<string, unknown> | null;
  if (!o || typeof o !== 'object' || typeof o.digest !== 'string' || !isDigest(o.digest) || typeof o.size !== 'number' || !Number.isSafeInteger(o.size) || o.size < 0) {
    throw new RegistryError('MANIFEST_INVALID', `manifest has an invalid descriptor at ${where}`);
  }
  const d: Descriptor = { mediaType: typeof o.mediaType === 'string' ? o.mediaType : '', digest: o.digest, size: o.size };
  const p = o.platform as Record<string, unknown> | undefined;
  if (p && typeof p.os === 'string' && typeof p.architecture === 'string') {
    d.platform = { os: p.os, architecture: p.architecture, ...(typeof p.variant === 'string' ? { variant: p.variant } : {}) };
  }
  if (o.annotations && typeof o.annotations === 'object') d.annotations = o.annotations as Record<string, string>;
  return d;
}

/**
 * Parses manifest bytes. The media type is the one the upstream sent in Content-Type, else the
 * manifest's own `mediaType` field (OCI manifests may omit it; then `manifests` means an index).
 */
export function parseManifest(bytes: Buffer, contentType?: string): ParsedManifest {
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(bytes.toString('utf8')) as Record<string, unknown>;
  } catch {
    throw new RegistryError('MANIFEST_INVALID', 'manifest is not valid JSON');
  }
  if (!json || typeof json !== 'object' || Array.isArray(json)) throw new RegistryError('MANIFEST_INVALID', 'manifest is not a JSON object');
  const header = bareMediaType(contentType);
  let mediaType = typeof json.mediaType === 'string' ? json.mediaType : '';
  if (isManifestMediaType(header)) mediaType = header;
  if (!mediaType) {
    if (json.schemaVersion === 1) mediaType = MediaType.DockerManifestV1Signed;
    else mediaType = Array.isArray(json.manifests) ? MediaType.OciIndex : MediaType.OciManifest;
  }
  if (isIndexMediaType(mediaType)) {
    if (!Array.isArray(json.manifests)) throw new RegistryError('MANIFEST_INVALID', 'index has no manifests array');
    return { mediaType, manifests: json.manifests.map((m, i) => descriptor(m, `manifests[${i}]`)), blobs: [] };
  }
  if (mediaType === MediaType.DockerManifestV1Signed || mediaType === MediaType.DockerManifestV1) {
    const layers = Array.isArray(json.fsLayers) ? json.fsLayers : [];
    const blobs = layers
      .map((l) => (l as { blobSum?: unknown }).blobSum)
      .filter((d): d is Digest => typeof d === 'string' && isDigest(d))
      .map((digest) => ({ mediaType: '', digest, size: -1 }));
    return { mediaType, manifests: [], blobs };
  }
  const blobs: Descriptor[] = [];
  if (json.config !== undefined) blobs.push(descriptor(json.config, 'config'));
  if (Array.isArray(json.layers)) json.layers.forEach((l, i) => blobs.push(descriptor(l, `layers[${i}]`)));
  return { mediaType, manifests: [], blobs };
}

export function platformString(p: Platform): string {
  return `${p.os}/${p.architecture}${p.variant ? `/${p.variant}` : ''}`;
}
