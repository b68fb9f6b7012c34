import { type ImageReference, parseImageReference } from '../../oci/image-reference.ts';
import { LOCAL_UPSTREAM, type LocalNames } from '../local-names.ts';

/**
 * An operator's reference to a local image (`site/app:1`, `site/app@sha256:…`): no registry host, and a
 * name under `local.prefixes`. Parsed with LOCAL_UPSTREAM as the "default host", which no written host can
 * equal, so a reference that names a host is never local. Undefined for every other reference.
 */
export function localImageReference(text: string, local: Pick<LocalNames, 'owns'>): ImageReference | undefined {
  let ref: ImageReference;
  try {
    ref = parseImageReference(text, LOCAL_UPSTREAM);
  } catch {
    return undefined;
  }
  return ref.host === LOCAL_UPSTREAM && local.owns(ref.repository) ? ref : undefined;
}

/** How a local image is written (no host: clients pull it by that name from berth). */
export function localImageName(ref: ImageReference): string {
  return `${ref.repository}${ref.tag ? `:${ref.tag}` : ''}${ref.digest ? `@${ref.digest}` : ''}`;
}
