import { createHash } from 'node:crypto';
import type { Digest } from '../../oci/digest.ts';
import { RegistryError } from '../../oci/errors.ts';
import { MAX_MANIFEST_BYTES, parseManifest } from '../../oci/manifest.ts';
import type { AsyncRegistryIndex } from '../../store/async-index-roles.ts';
import type { BlobIngester, BlobReader } from '../../store/roles.ts';
import type { Route } from '../upstreams.ts';
import type { WrittenManifest } from './images.ts';
import type { LayerConversions } from './layer-conversions.ts';
import { planLayer, TOC_DIGEST_ANNOTATION } from './layers.ts';
import type { Plan } from './options.ts';
import { type NewLayer, rewriteConfig, rewriteManifest } from './rewrite.ts';

export interface ConvertManifestInput {
  route: Route;
  /** The source image manifest's digest and bytes. */
  source: Digest;
  bytes: Buffer;
  plan: Plan;
  layers: LayerConversions;
  store: BlobReader & BlobIngester;
  index: AsyncRegistryIndex;
  blobs: { warm(route: Route, d: Digest): Promise<unknown> };
}

const IMAGE_MANIFESTS = new Set(['application/vnd.oci.image.manifest.v1+json', 'application/vnd.docker.distribution.manifest.v2+json']);
const IMAGE_CONFIGS = new Set(['application/vnd.oci.image.config.v1+json', 'application/vnd.docker.container.image.v1+json']);

const sha256 = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}` as Digest;

/**
 * One image manifest to eStargz: each convertible layer through LayerConversions (all at once: the pool
 * bounds how many run), the others passed through; then the config with the new diff_ids and the new
 * manifest, stored (not yet recorded: the caller records them under the requesting repository). A failure
 * anywhere leaves no manifest: converted layers already stored are kept (under their own key) for the
 * next attempt, but nothing names them.
 */
export async function convertManifest(i: ConvertManifestInput): Promise<WrittenManifest> {
  const parsed = parseManifest(i.bytes);
  const [config, ...layers] = parsed.blobs;
  if (!IMAGE_MANIFESTS.has(parsed.mediaType) || !config || !IMAGE_CONFIGS.has(config.mediaType)) {
    throw new RegistryError(
      'MANIFEST_UNKNOWN',
      `${i.source} is no container image (${parsed.mediaType}, config ${config?.mediaType ?? 'none'}): only OCI and Docker schema 2 images convert to eStargz`,
    );
  }
  if (!config) throw new RegistryError('UPSTREAM_ERROR', `manifest ${i.source} has no config to convert`);
  if (config.size > MAX_MANIFEST_BYTES) throw new RegistryError('UPSTREAM_ERROR', `manifest ${i.source}: its config is ${config.size} bytes, too big to rewrite`);
  const configBytes = await blobBytes(i, config.digest);
  const planned = layers.map((l) => ({ layer: l, plan: planLayer(l) }));
  const converted: NewLayer[] = await Promise.all(
    planned.map(async ({ layer, plan }): Promise<NewLayer> => {
      if (plan.kind === 'pass') return { passed: true };
      // eStargz already, without the annotation (built by a tool that does not add it): kept, annotated.
      const toc = plan.compression === 'gzip' ? await i.layers.estargzToc(i.route, layer.digest) : undefined;
      if (toc) return { passed: true, annotations: { [TOC_DIGEST_ANNOTATION]: toc } };
      const c = await i.layers.convert(i.route, layer.digest, plan.compression, i.plan.chunkSize, i.plan.prioritized(layer.digest));
      return { converted: c, mediaType: plan.mediaType };
    }),
  );
  let newConfig: Buffer;
  try {
    newConfig = rewriteConfig(configBytes, converted);
  } catch (err) {
    throw new RegistryError('UPSTREAM_ERROR', `manifest ${i.source} cannot be converted: ${(err as Error).message}`);
  }
  const configDigest = sha256(newConfig);
  await i.store.putBytes(configDigest, newConfig);
  await i.index.putBlob(configDigest, newConfig.length, null);
  const out = rewriteManifest(i.bytes, i.source, { digest: configDigest, size: newConfig.length }, converted);
  const digest = sha256(out);
  await i.store.putBytes(digest, out);
  const children = parseManifest(out).blobs.map((b) => ({ digest: b.digest, size: b.size, mediaType: b.mediaType }));
  return { digest, size: out.length, mediaType: parsed.mediaType, children };
}

async function blobBytes(i: ConvertManifestInput, d: Digest): Promise<Buffer> {
  try {
    await i.blobs.warm(i.route, d);
  } catch (err) {
    throw new RegistryError('UPSTREAM_ERROR', `config ${d} could not be fetched: ${(err as Error).message}`);
  }
  const bytes = await i.store.readBytes(d);
  if (!bytes) throw new RegistryError('UNAVAILABLE', `config ${d} vanished from the cache while converting`);
  return bytes;
}
