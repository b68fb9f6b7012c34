import type { Digest } from '../oci/digest.ts';
import { RegistryError } from '../oci/errors.ts';
import { parseManifest } from '../oci/manifest.ts';
import { DEFAULT_MANIFEST_ACCEPT } from '../oci/media-types.ts';
import type { WalkedImage, WalkedManifest } from './image-walk.ts';
import type { Manifests } from './manifests.ts';
import type { Referrers } from './referrers.ts';
import type { Route } from './upstreams.ts';

/** A walked image with the referrers of its manifests (signatures, SBOMs) and what they need. */
export interface WalkedReferrers {
  /** The referrer manifests themselves, in the order found (also in image.manifests). */
  referrers: WalkedManifest[];
}

/**
 * `--with-referrers` for prewarm and export: the referrers of an image's root and of each of its child
 * manifests (referrers API, src/registry/referrers.ts), each fetched through the normal manifest path,
 * with its blobs (and, for a referrer that is an index, its child manifests and their blobs). One level:
 * referrers of referrers (a signature of an SBOM) are not followed.
 */
export class ReferrerWalker {
  constructor(
    private readonly referrers: Referrers,
    private readonly manifests: Manifests,
  ) {}

  async expand(image: WalkedImage): Promise<WalkedImage & WalkedReferrers> {
    const manifests = [...image.manifests];
    const have = new Set<Digest>(manifests.map((m) => m.digest));
    const blobs = new Map(image.blobs.map((b) => [b.digest, b]));
    const found: WalkedManifest[] = [];
    for (const subject of image.manifests) {
      const { manifests: list } = await this.referrers.list(image.route, subject.digest, undefined);
      for (const r of list) {
        if (have.has(r.digest)) continue;
        const m = await this.fetch(image.route, r.digest);
        have.add(m.digest);
        manifests.push(m);
        found.push(m);
        const parsed = parseManifest(m.bytes);
        const images = [parsed];
        for (const c of parsed.manifests) {
          if (have.has(c.digest)) continue;
          const child = await this.fetch(image.route, c.digest);
          have.add(child.digest);
          manifests.push(child);
          images.push(parseManifest(child.bytes));
        }
        for (const img of images) for (const b of img.blobs) blobs.set(b.digest, { digest: b.digest, size: b.size, mediaType: b.mediaType });
      }
    }
    return { ...image, manifests, blobs: [...blobs.values()], referrers: found };
  }

  private async fetch(route: Route, digest: Digest): Promise<WalkedManifest> {
    const m = await this.manifests.get(route, { kind: 'digest', digest }, DEFAULT_MANIFEST_ACCEPT, 'GET');
    if (!m.bytes) throw new RegistryError('INTERNAL', `manifest ${m.digest} came without its bytes`);
    return { digest: m.digest, mediaType: m.mediaType, size: m.size, bytes: m.bytes };
  }
}
