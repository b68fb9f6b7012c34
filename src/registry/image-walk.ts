import type { Digest } from '../oci/digest.ts';
import { RegistryError } from '../oci/errors.ts';
import { formatImageReference, type ImageReference, parseImageReference } from '../oci/image-reference.ts';
import { type Platform, parseManifest } from '../oci/manifest.ts';
import { DEFAULT_MANIFEST_ACCEPT } from '../oci/media-types.ts';
import { platformMatches } from '../oci/platform.ts';
import type { Reference } from '../oci/reference.ts';
import { localImageName, localImageReference } from './local/image-name.ts';
import { LOCAL_UPSTREAM } from './local-names.ts';
import type { Manifests } from './manifests.ts';
import type { Route, Upstreams } from './upstreams.ts';

export interface WalkedManifest {
  digest: Digest;
  mediaType: string;
  size: number;
  bytes: Buffer;
}

/** Everything one image reference needs: its root manifest, the child manifests chosen, and their blobs. */
export interface WalkedImage {
  reference: ImageReference;
  /** The reference as written by the operator, normalised (`registry.k8s.io/pause:3.9`). */
  name: string;
  route: Route;
  root: WalkedManifest;
  manifests: WalkedManifest[];
  blobs: Array<{ digest: Digest; size: number; mediaType: string }>;
}

/**
 * Resolves operator references (`registry.k8s.io/pause:3.9`) through the same pull-through manifests
 * that clients use, so prewarm and export fetch and cache exactly what a pull would.
 */
export class ImageWalker {
  constructor(
    private readonly upstreams: Upstreams,
    private readonly manifests: Manifests,
  ) {}

  routeOf(ref: ImageReference): Route {
    if (ref.host === LOCAL_UPSTREAM) return { upstream: LOCAL_UPSTREAM, repository: ref.repository, explicit: true, local: true };
    const client = this.upstreams.get(ref.host);
    if (!client) throw new RegistryError('NAME_UNKNOWN', `registry ${ref.host} is not configured as an upstream of this berth`);
    return { upstream: client.host, repository: ref.repository, explicit: true };
  }

  async walk(text: string, platforms: Platform[] | undefined): Promise<WalkedImage> {
    // A local image (`site/app:1`) is read from the local repository, never from an upstream.
    const reference = localImageReference(text, this.upstreams.local) ?? parseImageReference(text, this.upstreams.defaultHost);
    const route = this.routeOf(reference);
    const first: Reference = reference.digest ? { kind: 'digest', digest: reference.digest } : { kind: 'tag', tag: reference.tag! };
    const root = await this.fetch(route, first);
    const manifests: WalkedManifest[] = [root];
    const blobs = new Map<Digest, { digest: Digest; size: number; mediaType: string }>();
    const parsed = parseManifest(root.bytes, root.mediaType);
    const images = parsed.manifests.length > 0 ? [] : [parsed];
    if (parsed.manifests.length > 0) {
      const chosen = parsed.manifests.filter((m) => platformMatches(m.platform, platforms));
      if (chosen.length === 0) {
        throw new RegistryError(
          'MANIFEST_UNKNOWN',
          `${formatImageReference(reference)} has no manifest for ${platforms?.map((p) => `${p.os}/${p.architecture}${p.variant ? `/${p.variant}` : ''}`).join(', ')}`,
        );
      }
      for (const m of chosen) {
        const child = await this.fetch(route, { kind: 'digest', digest: m.digest });
        manifests.push(child);
        images.push(parseManifest(child.bytes, child.mediaType));
      }
    }
    for (const img of images) for (const b of img.blobs) blobs.set(b.digest, { digest: b.digest, size: b.size, mediaType: b.mediaType });
    const name = reference.host === LOCAL_UPSTREAM ? localImageName(reference) : formatImageReference(reference);
    return { reference, name, route, root, manifests, blobs: [...blobs.values()] };
  }

  private async fetch(route: Route, ref: Reference): Promise<WalkedManifest> {
    const m = await this.manifests.get(route, ref, DEFAULT_MANIFEST_ACCEPT, 'GET');
    if (!m.bytes) throw new RegistryError('INTERNAL', `manifest ${m.digest} came without its bytes`);
    return { digest: m.digest, mediaType: m.mediaType, size: m.size, bytes: m.bytes };
  }
}
