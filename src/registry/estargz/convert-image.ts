import { createHash } from 'node:crypto';
import type { Digest } from '../../oci/digest.ts';
import { RegistryError } from '../../oci/errors.ts';
import { type Descriptor, manifestJson, type Platform, parseManifest } from '../../oci/manifest.ts';
import { DEFAULT_MANIFEST_ACCEPT } from '../../oci/media-types.ts';
import { platformMatches } from '../../oci/platform.ts';
import type { AsyncRegistryIndex } from '../../store/async-index-roles.ts';
import type { BlobIngester, BlobReader } from '../../store/roles.ts';
import type { Manifests } from '../manifests.ts';
import type { Route } from '../upstreams.ts';
import { convertManifest } from './convert-manifest.ts';
import type { ConvertedImage, WrittenManifest } from './images.ts';
import type { LayerConversions } from './layer-conversions.ts';
import type { Plan } from './options.ts';
import { rewriteIndex } from './rewrite.ts';

export interface ConvertImageInput {
  route: Route;
  source: Digest;
  mediaType: string;
  bytes: Buffer;
  plan: Plan;
  /** Platforms of an index to convert (estargz.platforms); undefined: all. */
  platforms: Platform[] | undefined;
  manifests: Pick<Manifests, 'source'>;
  layers: LayerConversions;
  store: BlobReader & BlobIngester;
  index: AsyncRegistryIndex;
  blobs: { warm(route: Route, d: Digest): Promise<unknown> };
}

/**
 * A source image (manifest or index) to eStargz: an image manifest directly, an index platform by
 * platform (one after the other: their layers queue on the pool anyway), then the new index over them.
 * Everything is stored; nothing is recorded or tagged (the caller does that once all of it exists).
 */
export async function convertImage(i: ConvertImageInput): Promise<ConvertedImage> {
  const parsed = parseManifest(i.bytes, i.mediaType);
  const one = (digest: Digest, b: Buffer) => convertManifest({ ...i, source: digest, bytes: b });
  if (parsed.manifests.length === 0) {
    const root = await one(i.source, i.bytes);
    return { source: i.source, options: i.plan.options, root, manifests: [root] };
  }
  const chosen = parsed.manifests.filter((m) => !isAttestation(m) && platformMatches(m.platform, i.platforms));
  if (chosen.length === 0) throw new RegistryError('MANIFEST_UNKNOWN', `${i.source} has no platform to convert to eStargz (estargz.platforms)`);
  const children: WrittenManifest[] = [];
  for (const m of chosen) {
    const child = await i.manifests.source(i.route, { kind: 'digest', digest: m.digest }, DEFAULT_MANIFEST_ACCEPT, 'GET');
    if (!child.bytes) throw new RegistryError('INTERNAL', `manifest ${m.digest} came without its bytes`);
    children.push(await one(m.digest, child.bytes));
  }
  const out = rewriteIndex(
    i.bytes,
    i.source,
    chosen.map((m, n) => ({ from: m.digest, digest: children[n]!.digest, size: children[n]!.size, mediaType: children[n]!.mediaType })),
  );
  manifestJson(out);
  const digest = `sha256:${createHash('sha256').update(out).digest('hex')}` as Digest;
  await i.store.putBytes(digest, out);
  const root = { digest, size: out.length, mediaType: parsed.mediaType, children: children.map((c) => ({ digest: c.digest, size: c.size, mediaType: c.mediaType })) };
  return { source: i.source, options: i.plan.options, root, manifests: [...children, root] };
}

/** BuildKit's attestation manifests (`unknown/unknown` entries) describe the source image, not a platform. */
function isAttestation(m: Descriptor): boolean {
  return m.annotations?.['vnd.docker.reference.type'] === 'attestation-manifest';
}
