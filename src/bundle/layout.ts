/**
 * The OCI image layout (image-spec `image-layout.md`) that export writes and import reads:
 *   oci-layout            {"imageLayoutVersion": "1.0.0"}
 *   index.json            an image index; each entry names an image by its full reference
 *   blobs/sha256/<hex>    manifests, configs and layers, byte-exact
 */
export const LAYOUT_VERSION = '{"imageLayoutVersion":"1.0.0"}';
export const REF_NAME = 'org.opencontainers.image.ref.name';
/** containerd's `ctr export` names images here; reading it lets berth import those archives too. */
export const CONTAINERD_NAME = 'io.containerd.image.name';

export function blobEntryName(digest: string): string {
  const [alg, hex] = digest.split(':');
  return `blobs/${alg}/${hex}`;
}

/** `blobs/sha256/<hex>` → `sha256:<hex>`, or undefined for any other entry. */
export function digestOfEntry(name: string): string | undefined {
  const m = /^(?:\.\/)?blobs\/sha256\/([a-f0-9]{64})$/.exec(name);
  return m ? `sha256:${m[1]}` : undefined;
}
/**
 * berth's own mark on an index entry of a local repository's image (issue #10): the name alone
 * (`site/app:1`) reads as a Docker Hub name elsewhere, so import knows it by this, whatever its config.
 */
export const LOCAL_MARK = 'io.berth.local-repository';
