import { RegistryError } from '../../oci/errors.ts';
import { type Descriptor, MEDIA_TYPE, manifestJson, type ParsedManifest, parseManifest } from '../../oci/manifest.ts';
import { bareMediaType, isIndexMediaType, MANIFEST_MEDIA_TYPES, MediaType } from '../../oci/media-types.ts';

/**
 * A pushed manifest, checked strictly (a pull is lenient: an upstream's odd image must still pull; what
 * the site stores as its own must be well formed). The Content-Type must be one of the four manifest
 * types berth serves and equal the body's own media type (distribution spec "Pushing Manifests": a client
 * MUST send the manifest's `mediaType` as its Content-Type), so the type served back is the bytes' type.
 * Artifact manifests (image spec v1.1) are OCI image manifests with an `artifactType`. Docker schema 1 is
 * refused: it is deprecated and cannot be served to current clients.
 */
export function checkPushedManifest(bytes: Buffer, contentType: string | undefined): ParsedManifest {
  const declared = bareMediaType(contentType);
  if (declared === MediaType.DockerManifestV1 || declared === MediaType.DockerManifestV1Signed) {
    throw new RegistryError('MANIFEST_INVALID', 'Docker schema 1 manifests are not accepted: push schema 2 or OCI (skopeo copy --format oci, or v2s2)');
  }
  if (!MANIFEST_MEDIA_TYPES.includes(declared)) {
    throw new RegistryError(
      'MANIFEST_INVALID',
      `Content-Type ${JSON.stringify(declared.slice(0, 100) || '(none)')} is not a manifest media type; send the manifest's own mediaType (${MANIFEST_MEDIA_TYPES.join(', ')})`,
    );
  }
  const json = manifestJson(bytes);
  if (json.schemaVersion !== 2) throw new RegistryError('MANIFEST_INVALID', 'manifest must have schemaVersion 2');
  const m = parseManifest(bytes);
  if (m.mediaType !== declared) {
    const own = typeof json.mediaType === 'string' ? `its mediaType is ${m.mediaType}` : `it has no mediaType field and reads as ${m.mediaType}`;
    throw new RegistryError('MANIFEST_INVALID', `Content-Type is ${declared} but ${own}: they must be the same`);
  }
  if (isIndexMediaType(m.mediaType)) {
    if (json.layers !== undefined || json.config !== undefined) throw new RegistryError('MANIFEST_INVALID', 'an index has manifests, not config or layers');
  } else {
    if (json.manifests !== undefined) throw new RegistryError('MANIFEST_INVALID', 'an image manifest has config and layers, not manifests');
    if (json.config === undefined) throw new RegistryError('MANIFEST_INVALID', 'image manifest has no config descriptor');
    if (!Array.isArray(json.layers)) throw new RegistryError('MANIFEST_INVALID', 'image manifest has no layers array');
  }
  const raw = isIndexMediaType(m.mediaType) ? (json.manifests as unknown[]) : [json.config, ...(json.layers as unknown[])];
  [...m.manifests, ...m.blobs].forEach((d, i) => {
    checkDescriptor(d, raw[i], isIndexMediaType(m.mediaType) ? `manifests[${i}]` : i === 0 ? 'config' : `layers[${i - 1}]`);
  });
  if (json.subject !== undefined) {
    if (!m.subject) throw new RegistryError('MANIFEST_INVALID', 'subject is not a descriptor (mediaType, digest, size)');
    checkDescriptor(m.subject, json.subject, 'subject');
  }
  if (json.artifactType !== undefined && (typeof json.artifactType !== 'string' || !MEDIA_TYPE.test(json.artifactType))) {
    throw new RegistryError('MANIFEST_INVALID', 'artifactType must be a media type (type/subtype)');
  }
  checkAnnotations(json.annotations, 'annotations');
  return m;
}

function checkDescriptor(d: Descriptor, raw: unknown, where: string): void {
  if (!MEDIA_TYPE.test(d.mediaType)) throw new RegistryError('MANIFEST_INVALID', `${where} has no valid mediaType`);
  checkAnnotations((raw as { annotations?: unknown }).annotations, `${where}.annotations`);
}

function checkAnnotations(a: unknown, where: string): void {
  if (a === undefined) return;
  if (!a || typeof a !== 'object' || Array.isArray(a) || !Object.values(a).every((v) => typeof v === 'string')) {
    throw new RegistryError('MANIFEST_INVALID', `${where} must be an object of strings`);
  }
}
