// What parseManifest reads for the referrers API (OCI image spec v1.1): `subject`, `artifactType`
// (an image manifest without one reports its config's media type) and top-level annotations. Lenient:
// an upstream image with malformed fields of these kinds still parses, without them.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseManifest } from '../src/oci/manifest.ts';

const d = (n: number) => `sha256:${String(n).repeat(64).slice(0, 64)}`;
const subject = { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: d(1), size: 100 };

test('an artifact manifest: subject, its own artifactType, annotations', () => {
  const m = parseManifest(
    Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        artifactType: 'application/vnd.dev.cosign.artifact.sig.v1+json',
        config: { mediaType: 'application/vnd.oci.empty.v1+json', digest: d(2), size: 2 },
        layers: [{ mediaType: 'application/octet-stream', digest: d(3), size: 10 }],
        subject,
        annotations: { 'org.opencontainers.image.created': '2026-12-01T00:00:00Z' },
      }),
    ),
  );
  assert.deepEqual(m.subject, subject);
  assert.equal(m.artifactType, 'application/vnd.dev.cosign.artifact.sig.v1+json');
  assert.deepEqual(m.annotations, { 'org.opencontainers.image.created': '2026-12-01T00:00:00Z' });
});

test("an image manifest without artifactType reports its config's media type; an index its own field only", () => {
  const image = parseManifest(
    Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: { mediaType: 'application/vnd.example.sbom.config+json', digest: d(2), size: 2 },
        layers: [],
        subject,
      }),
    ),
  );
  assert.equal(image.artifactType, 'application/vnd.example.sbom.config+json');
  const index = parseManifest(Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests: [] })));
  assert.equal(index.artifactType, undefined);
  assert.equal(index.subject, undefined);
});

test('malformed subject, artifactType or annotations are left out, not fatal', () => {
  const m = parseManifest(
    Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        artifactType: 'not a type',
        config: { mediaType: '', digest: d(2), size: 2 },
        layers: [],
        subject: { digest: 'nope' },
        annotations: { a: 1 },
      }),
    ),
  );
  assert.equal(m.subject, undefined);
  assert.equal(m.artifactType, undefined);
  assert.equal(m.annotations, undefined);
  assert.equal(m.blobs.length, 1);
});
