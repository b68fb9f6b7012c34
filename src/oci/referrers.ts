import { type Digest, digestHex, isDigest } from './digest.ts';
import { MEDIA_TYPE, type ParsedManifest } from './manifest.ts';
import { MediaType } from './media-types.ts';

/**
 * One entry of a referrers list (distribution spec v1.1 "Listing Referrers"): the referrer manifest's
 * descriptor, with its `artifactType` (its own, else its config's media type) and its top-level
 * annotations.
 */
export interface ReferrerDescriptor {
  mediaType: string;
  digest: Digest;
  size: number;
  artifactType?: string;
  annotations?: Record<string, string>;
}

/** The referrers tag schema: the tag under which a registry without the API keeps the index of a subject's referrers. */
export function referrersTag(subject: Digest): string {
  return `sha256-${digestHex(subject)}`;
}

/**
 * The descriptors of an image index's `manifests` as referrer descriptors (a referrers API answer, or the
 * index under the referrers tag). `undefined` when `json` is not an index with a `manifests` array or an
 * entry is not a descriptor (a digest berth can store, a whole size, a media type): such an answer is not
 * a list of referrers. Malformed annotations and artifact types are dropped, as parseManifest does.
 */
export function referrerDescriptors(json: unknown): ReferrerDescriptor[] | undefined {
  const o = json as { schemaVersion?: unknown; manifests?: unknown } | null;
  if (!o || typeof o !== 'object' || Array.isArray(o) || !Array.isArray(o.manifests)) return undefined;
  const out: ReferrerDescriptor[] = [];
  for (const e of o.manifests as unknown[]) {
    const d = e as Record<string, unknown> | null;
    if (!d || typeof d !== 'object') return undefined;
    if (typeof d.digest !== 'string' || !isDigest(d.digest) || typeof d.size !== 'number' || !Number.isSafeInteger(d.size) || d.size < 0) return undefined;
    if (typeof d.mediaType !== 'string' || !MEDIA_TYPE.test(d.mediaType)) return undefined;
    const r: ReferrerDescriptor = { mediaType: d.mediaType, digest: d.digest, size: d.size };
    if (typeof d.artifactType === 'string' && MEDIA_TYPE.test(d.artifactType)) r.artifactType = d.artifactType;
    const a = d.annotations;
    if (a && typeof a === 'object' && !Array.isArray(a) && Object.values(a).every((v) => typeof v === 'string')) r.annotations = a as Record<string, string>;
    out.push(r);
  }
  return out;
}

/** The referrers API's answer: an image index of the descriptors. */
export function referrersIndex(manifests: readonly ReferrerDescriptor[]): { schemaVersion: 2; mediaType: string; manifests: ReferrerDescriptor[] } {
  return { schemaVersion: 2, mediaType: MediaType.OciIndex, manifests: [...manifests] };
}

/** Merges lists by digest (the first list's entry wins), in a stable order: by digest. */
export function mergeReferrers(...lists: ReadonlyArray<readonly ReferrerDescriptor[]>): ReferrerDescriptor[] {
  const byDigest = new Map<string, ReferrerDescriptor>();
  for (const list of lists) for (const r of list) if (!byDigest.has(r.digest)) byDigest.set(r.digest, r);
  return [...byDigest.values()].sort((a, b) => (a.digest < b.digest ? -1 : a.digest > b.digest ? 1 : 0));
}

/** What a manifest record carries for the referrers API (ManifestRecord's subject, artifactType, annotations). */
export function referrerFieldsOf(m: ParsedManifest): { subject?: Digest; artifactType?: string; annotations?: Record<string, string> } {
  return {
    ...(m.subject ? { subject: m.subject.digest } : {}),
    ...(m.artifactType ? { artifactType: m.artifactType } : {}),
    ...(m.annotations ? { annotations: m.annotations } : {}),
  };
}
