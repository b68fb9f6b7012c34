/** Media types from the OCI image spec and Docker's schema2, the ones a pull-through cache must know. */
export const MediaType = {
  OciManifest: 'application/vnd.oci.image.manifest.v1+json',
  OciIndex: 'application/vnd.oci.image.index.v1+json',
  DockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  DockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  DockerManifestV1Signed: 'application/vnd.docker.distribution.manifest.v1+prettyjws',
  DockerManifestV1: 'application/vnd.docker.distribution.manifest.v1+json',
  OctetStream: 'application/octet-stream',
} as const;

export const MANIFEST_MEDIA_TYPES: readonly string[] = [MediaType.OciManifest, MediaType.OciIndex, MediaType.DockerManifest, MediaType.DockerManifestList];

/** What berth asks the upstream for when the client sent no Accept header of its own. */
export const DEFAULT_MANIFEST_ACCEPT = [...MANIFEST_MEDIA_TYPES, MediaType.DockerManifestV1Signed].join(', ');

export function isIndexMediaType(mt: string): boolean {
  return mt === MediaType.OciIndex || mt === MediaType.DockerManifestList;
}

export function isManifestMediaType(mt: string): boolean {
  return MANIFEST_MEDIA_TYPES.includes(mt) || mt === MediaType.DockerManifestV1Signed || mt === MediaType.DockerManifestV1;
}

/** Strips parameters and whitespace: `application/json; charset=utf-8` → `application/json`. */
export function bareMediaType(contentType: string | undefined): string {
  return (contentType ?? '').split(';')[0]!.trim().toLowerCase();
}
