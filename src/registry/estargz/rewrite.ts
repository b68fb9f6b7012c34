import type { ConvertedLayer } from '../../estargz/types.ts';
import { manifestJson } from '../../oci/manifest.ts';
import { SOURCE_ANNOTATION, TOC_DIGEST_ANNOTATION, UNCOMPRESSED_SIZE_ANNOTATION } from './layers.ts';

/**
 * The JSON rewrites of a conversion. Each takes the source bytes and changes only the fields the
 * conversion changes: every other field keeps its value and its place (JSON.parse keeps key order), so the
 * output is a function of the input alone — the same source converts to the same digest.
 */

type Json = Record<string, unknown>;

/** A layer of the new manifest: converted (new descriptor, the two annotations) or passed through. */
export type NewLayer = { converted: ConvertedLayer; mediaType: string } | { passed: true; annotations?: Record<string, string> };

/** The config with `rootfs.diff_ids` replaced where a layer was converted. */
export function rewriteConfig(bytes: Buffer, layers: readonly NewLayer[]): Buffer {
  const config = JSON.parse(bytes.toString('utf8')) as Json;
  const rootfs = config.rootfs as { diff_ids?: unknown } | undefined;
  const diffIds = rootfs?.diff_ids;
  if (!Array.isArray(diffIds) || diffIds.length !== layers.length) {
    throw new Error(`its config lists ${Array.isArray(diffIds) ? diffIds.length : 'no'} diff_ids for ${layers.length} layers`);
  }
  rootfs!.diff_ids = layers.map((l, i) => ('converted' in l ? l.converted.diffId : diffIds[i]));
  return Buffer.from(JSON.stringify(config));
}

/** The image manifest pointing at the new config and layers, marked with the digest it was converted from. */
export function rewriteManifest(bytes: Buffer, source: string, config: { digest: string; size: number }, layers: readonly NewLayer[]): Buffer {
  const m = manifestJson(bytes);
  m.config = { ...(m.config as Json), digest: config.digest, size: config.size };
  const old = m.layers as Json[];
  m.layers = old.map((d, i) => {
    const l = layers[i]!;
    if (!('converted' in l)) return l.annotations ? { ...d, annotations: { ...((d.annotations as Json | undefined) ?? {}), ...l.annotations } } : d;
    const c = l.converted;
    const annotations = { ...((d.annotations as Json | undefined) ?? {}), [TOC_DIGEST_ANNOTATION]: c.tocDigest, [UNCOMPRESSED_SIZE_ANNOTATION]: String(c.uncompressedSize) };
    return { ...d, mediaType: l.mediaType, digest: c.digest, size: c.size, annotations };
  });
  m.annotations = { ...((m.annotations as Json | undefined) ?? {}), [SOURCE_ANNOTATION]: source };
  return Buffer.from(JSON.stringify(m));
}

/** The index listing the converted manifests (in the source's order), marked with its source. */
export function rewriteIndex(bytes: Buffer, source: string, children: ReadonlyArray<{ from: string; digest: string; size: number; mediaType: string }>): Buffer {
  const m = manifestJson(bytes);
  const old = m.manifests as Json[];
  const by = new Map(children.map((c) => [c.from, c]));
  m.manifests = old.flatMap((d) => {
    const c = by.get(d.digest as string);
    return c ? [{ ...d, mediaType: c.mediaType, digest: c.digest, size: c.size }] : [];
  });
  m.annotations = { ...((m.annotations as Json | undefined) ?? {}), [SOURCE_ANNOTATION]: source };
  return Buffer.from(JSON.stringify(m));
}

/** The source a converted manifest names, if it is one. */
export function sourceOf(bytes: Buffer): string | undefined {
  try {
    const a = manifestJson(bytes).annotations as Json | undefined;
    return typeof a?.[SOURCE_ANNOTATION] === 'string' ? a[SOURCE_ANNOTATION] : undefined;
  } catch {
    return undefined;
  }
}
