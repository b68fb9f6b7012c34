import { RegistryError } from '../oci/errors.ts';
import { MAX_MANIFEST_BYTES } from '../oci/manifest.ts';
import { bareMediaType, MediaType } from '../oci/media-types.ts';
import { type ReferrerDescriptor, referrerDescriptors } from '../oci/referrers.ts';
import { discard, readBounded } from './bodies.ts';
import { header, type UpstreamResponse } from './transport.ts';

/** Bound on one page of a referrers answer: it is an image index, bounded like a manifest. */
export const MAX_REFERRERS_BYTES = MAX_MANIFEST_BYTES;

/** One page of an upstream's referrers answer, checked. */
export interface ReferrersPage {
  manifests: ReferrerDescriptor[];
  /** The upstream applied the artifactType filter (OCI-Filters-Applied). */
  filtered: boolean;
  /** The path and query of the next page (Link rel="next"), when there is one. */
  next?: string;
}

/**
 * Whether a 2xx answer to GET /v2/<name>/referrers/<digest> is a referrers API at all: an upstream
 * without one may route the path to something else (a web page, a catch-all). Only an image index (or
 * JSON without a type, as some registries label it) is read as one.
 */
export function isReferrersAnswer(res: UpstreamResponse): boolean {
  const type = bareMediaType(header(res.headers, 'content-type'));
  return type === MediaType.OciIndex || type === 'application/json' || type === '';
}

/**
 * Reads a referrers answer: bounded (a body past MAX_REFERRERS_BYTES, declared or sent, is the upstream's
 * fault), JSON, an image index of descriptors. Anything else is UPSTREAM_ERROR naming the upstream.
 */
export async function readReferrers(res: UpstreamResponse, host: string, what: string): Promise<ReferrersPage> {
  const declared = Number(header(res.headers, 'content-length'));
  if (declared > MAX_REFERRERS_BYTES) {
    discard(res.body);
    throw new RegistryError('UPSTREAM_ERROR', `upstream ${host} sent ${declared} bytes for ${what}; the limit is ${MAX_REFERRERS_BYTES}`);
  }
  const raw = await readBounded(res.body, MAX_REFERRERS_BYTES).catch(() => undefined);
  if (!raw) throw new RegistryError('UPSTREAM_ERROR', `upstream ${host} sent more than ${MAX_REFERRERS_BYTES} bytes for ${what}, or broke off`);
  let json: unknown;
  try {
    json = JSON.parse(raw.toString('utf8'));
  } catch {
    json = undefined;
  }
  const manifests = referrerDescriptors(json);
  if (!manifests) throw new RegistryError('UPSTREAM_ERROR', `upstream ${host} sent an unreadable answer for ${what} (not an image index of descriptors)`);
  const filters = (header(res.headers, 'oci-filters-applied') ?? '').split(',').map((f) => f.trim());
  const link = header(res.headers, 'link');
  const next = link ? /<([^>]*)>\s*;\s*rel="?next"?/.exec(link)?.[1] : undefined;
  return { manifests, filtered: filters.includes('artifactType'), ...(next ? { next } : {}) };
}
