import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import type { Digest } from '../../oci/digest.ts';
import { RegistryError } from '../../oci/errors.ts';
import { isManifestMediaType } from '../../oci/media-types.ts';
import { isTag, type Reference } from '../../oci/reference.ts';
import type { AsyncRegistryIndex } from '../../store/async-index-roles.ts';
import type { BlobIngester } from '../../store/roles.ts';
import { LOCAL_UPSTREAM } from '../local-names.ts';
import type { Route } from '../upstreams.ts';
import { checkPushedManifest } from './pushed-manifest.ts';

export interface PushedManifest {
  digest: Digest;
  mediaType: string;
  /** The manifest's subject, answered as `OCI-Subject`. */
  subject?: Digest;
}

export interface LocalRegistryOptions {
  index: AsyncRegistryIndex;
  store: Pick<BlobIngester, 'putBytes'>;
  /** `delete.enabled`: DELETE of manifests, tags and blobs; else 405 UNSUPPORTED. */
  deleteEnabled: boolean;
  log: Logger;
}

/**
 * The write side of the local registry (issue #10): manifest pushes and deletes of repositories under
 * `local.prefixes`, over the same store and index as cached content. A blob or manifest is "in" a local
 * repository when the index has a reference row (LOCAL_UPSTREAM, repository, digest) and still knows the
 * blob: an upload or mount adds the row for a blob, a manifest push for the manifest and everything it
 * names, a DELETE removes it (the bytes go at `berth gc`, once nothing reaches them).
 */
export class LocalRegistry {
  constructor(private readonly o: LocalRegistryOptions) {}

  /** Whether the local repository holds `d` (reference row and a known blob). */
  async holds(route: Route, d: Digest): Promise<boolean> {
    if (!(await this.o.index.getBlob(d))) return false;
    return (await this.o.index.refsOf(d)).some((r) => r.upstream === LOCAL_UPSTREAM && r.repository === route.repository);
  }

  /**
   * PUT /v2/<name>/manifests/<reference>: checked (pushed-manifest.ts), every blob and child manifest it
   * names already in the repository, stored byte for byte, indexed with its subject, artifactType and
   * annotations. A tag moves to it at once (a local tag is its own truth: no negotiation, no TTL). The
   * `subject` need not exist: the spec lets a referrer arrive before its subject.
   */
  async putManifest(route: Route, reference: string, contentType: string | undefined, bytes: Buffer): Promise<PushedManifest> {
    const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}` as Digest;
    const byDigest = reference.includes(':');
    if (byDigest && reference !== digest) {
      throw new RegistryError('DIGEST_INVALID', `the manifest hashes to ${digest}, not to ${reference.slice(0, 80)}`);
    }
    if (!byDigest && !isTag(reference)) {
      throw new RegistryError('MANIFEST_INVALID', `invalid tag "${reference.slice(0, 80)}": up to 128 characters of [A-Za-z0-9_.-], not starting with . or -`);
    }
    const m = checkPushedManifest(bytes, contentType);
    const children = [...m.manifests, ...m.blobs];
    const missing: typeof children = [];
    for (const c of children) if (!(await this.holds(route, c.digest))) missing.push(c);
    if (missing.length > 0) {
      const names = [...new Set(missing.map((c) => c.digest))];
      throw new RegistryError(
        'MANIFEST_BLOB_UNKNOWN',
        `${names.length === 1 ? 'blob' : `${names.length} blobs`} not in ${route.repository}: ${names.slice(0, 5).join(', ')}${names.length > 5 ? ', …' : ''} (push ${names.length === 1 ? 'it' : 'them'} first)`,
        names.map((d) => ({ digest: d })),
      );
    }
    const { index } = this.o;
    await this.o.store.putBytes(digest, bytes);
    const subject = m.subject?.digest;
    await index.recordManifest({
      upstream: LOCAL_UPSTREAM,
      repository: route.repository,
      digest,
      size: bytes.length,
      mediaType: m.mediaType,
      children,
      ...(subject ? { subject } : {}),
      ...(m.artifactType ? { artifactType: m.artifactType } : {}),
      ...(m.annotations ? { annotations: m.annotations } : {}),
    });
    if (!byDigest) {
      await index.putTag({ upstream: LOCAL_UPSTREAM, repository: route.repository, tag: reference, digest, mediaType: m.mediaType, size: bytes.length, accept: '*', checkedAt: Date.now() });
    }
    this.o.log.info({ repository: route.repository, reference, digest, mediaType: m.mediaType, ...(subject ? { subject } : {}) }, 'manifest pushed');
    return { digest, mediaType: m.mediaType, ...(subject ? { subject } : {}) };
  }

  /**
   * DELETE /v2/<name>/manifests/<reference>. By tag: the tag goes (spec "Deleting tags"). By digest: the
   * manifest leaves the repository, with every tag of the repository that names it; what it named stays
   * in the repository (as distribution: blobs are deleted on their own) until gc finds nothing reaches it.
   */
  async deleteManifest(route: Route, ref: Reference): Promise<void> {
    this.ensureDeletes();
    const { index } = this.o;
    if (ref.kind === 'tag') {
      if ((await index.tagRows(LOCAL_UPSTREAM, route.repository, ref.tag)).length === 0) {
        throw new RegistryError('MANIFEST_UNKNOWN', `${route.repository} has no tag ${ref.tag}`);
      }
      await index.deleteTag(LOCAL_UPSTREAM, route.repository, ref.tag);
      this.o.log.info({ repository: route.repository, tag: ref.tag }, 'tag deleted');
      return;
    }
    const mediaType = (await index.getBlob(ref.digest))?.mediaType;
    if (!(await this.holds(route, ref.digest)) || !mediaType || !isManifestMediaType(mediaType)) {
      throw new RegistryError('MANIFEST_UNKNOWN', `manifest ${ref.digest} is not in ${route.repository}`);
    }
    const tags = await index.deleteTagsOf(LOCAL_UPSTREAM, route.repository, ref.digest);
    await index.deleteRef(LOCAL_UPSTREAM, route.repository, ref.digest);
    this.o.log.info({ repository: route.repository, digest: ref.digest, tags }, 'manifest deleted');
  }

  /** DELETE /v2/<name>/blobs/<digest>: the blob leaves the repository; its bytes go at gc. */
  async deleteBlob(route: Route, d: Digest): Promise<void> {
    this.ensureDeletes();
    const { index } = this.o;
    if (!(await this.holds(route, d))) throw new RegistryError('BLOB_UNKNOWN', `blob ${d} is not in ${route.repository}`);
    const mediaType = (await index.getBlob(d))?.mediaType;
    if (mediaType && isManifestMediaType(mediaType)) {
      // One reference row stands for both: deleting it here would leave the repository's tags dangling.
      throw new RegistryError('UNSUPPORTED', `${d} is a manifest of ${route.repository}: delete it with DELETE /v2/${route.repository}/manifests/${d}`);
    }
    await index.deleteRef(LOCAL_UPSTREAM, route.repository, d);
    this.o.log.info({ repository: route.repository, digest: d }, 'blob deleted');
  }

  private ensureDeletes(): void {
    if (!this.o.deleteEnabled) throw new RegistryError('UNSUPPORTED', 'deletes are disabled on this berth (delete.enabled: false)');
  }
}
