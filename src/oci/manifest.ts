import { type Digest, isDigest } from './digest.ts';
import { RegistryError } from './errors.ts';
import { isIndexMediaType, isManifestMediaType, MediaType } from './media-types.ts';

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
  /** The manifest this one is about (a signature, an SBOM): referrers API, OCI image spec v1.1. */
  subject?: Descriptor;
  /** An artifact's type: its own `artifactType`, else (image manifests) its config's media type, as the referrers API reports it. */
  artifactType?: string;
  /** The manifest's own top-level annotations (the referrers API lists them). */
  annotations?: Record<string, string>;
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
 * Parses manifest bytes. The media type comes from the bytes alone: the manifest's own `mediaType`,
 * which must be one of the registry manifest types berth serves (anything else, `text/html` or a value
 * with a CR/LF in it, makes the manifest invalid), else what the structure says (OCI manifests may omit
 * the field; then `manifests` means an index). So the same bytes have one type whoever served them and
 * whatever Content-Type came with them: `declared` (a Content-Type, an index entry's mediaType) is not
 * trusted and not used.
 */
/** The manifest's JSON object; MANIFEST_INVALID when the bytes are not one. */
export function manifestJson(bytes: Buffer): Record<string, unknown> {
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(bytes.toString('utf8')) as Record<string, unknown>;
  } catch {
    throw new RegistryError('MANIFEST_INVALID', 'manifest is not valid JSON');
  }
  if (!json || typeof json !== 'object' || Array.isArray(json)) throw new RegistryError('MANIFEST_INVALID', 'manifest is not a JSON object');
  return json;
}

export function parseManifest(bytes: Buffer, _declared?: string): ParsedManifest {
  const json = manifestJson(bytes);
  if (json.schemaVersion !== 1 && json.schemaVersion !== 2) throw new RegistryError('MANIFEST_INVALID', 'manifest has no schemaVersion 1 or 2');
  const mediaType = mediaTypeOf(json);
  const about = referrerFields(json);
  if (isIndexMediaType(mediaType)) {
    if (!Array.isArray(json.manifests)) throw new RegistryError('MANIFEST_INVALID', 'index has no manifests array');
    return { mediaType, manifests: json.manifests.map((m, i) => descriptor(m, `manifests[${i}]`)), blobs: [], ...about };
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
  if (Array.isArray(json.layers))
    json.layers.forEach((l, i) => {
      blobs.push(descriptor(l, `layers[${i}]`));
    });
  // An image manifest without artifactType is reported with its config's media type (image spec v1.1).
  const artifactType = about.artifactType ?? (json.config !== undefined ? blobs[0]?.mediaType || undefined : undefined);
  return { mediaType, manifests: [], blobs, ...about, ...(artifactType ? { artifactType } : {}) };
}

/**
 * `subject`, `artifactType` and `annotations` of an OCI manifest or index, where present and well formed.
 * Lenient on purpose: an upstream's image with odd annotations must still pull; what a client pushes is
 * checked strictly by the push path (MANIFEST_INVALID).
 */
function referrerFields(json: Record<string, unknown>): Pick<ParsedManifest, 'subject' | 'artifactType' | 'annotations'> {
  const out: Pick<ParsedManifest, 'subject' | 'artifactType' | 'annotations'> = {};
  if (json.subject !== undefined) {
    try {
      out.subject = descriptor(json.subject, 'subject');
    } catch {
      // not a descriptor: no subject
    }
  }
  if (typeof json.artifactType === 'string' && MEDIA_TYPE.test(json.artifactType)) out.artifactType = json.artifactType;
  const a = json.annotations;
  if (a && typeof a === 'object' && !Array.isArray(a) && Object.values(a).every((v) => typeof v === 'string')) out.annotations = a as Record<string, string>;
  return out;
}

/** RFC 6838 type/subtype (with a +suffix), as artifactType must be. */
export const MEDIA_TYPE = /^[A-Za-z0-9][\w.!#$&^+-]{0,126}\/[A-Za-z0-9][\w.!#$&^+-]{0,126}$/;

function mediaTypeOf(json: Record<string, unknown>): string {
  const field = json.mediaType;
  if (field !== undefined) {
    if (typeof field !== 'string' || !isManifestMediaType(field)) {
      throw new RegistryError('MANIFEST_INVALID', `manifest declares media type ${JSON.stringify(String(field).slice(0, 100))}, which is not a registry manifest type`);
    }
    return field;
  }
  if (json.schemaVersion === 1) return Array.isArray(json.signatures) ? MediaType.DockerManifestV1Signed : MediaType.DockerManifestV1;
  return Array.isArray(json.manifests) ? MediaType.OciIndex : MediaType.OciManifest;
}

export function platformString(p: Platform): string {
  return `${p.os}/${p.architecture}${p.variant ? `/${p.variant}` : ''}`;
}
