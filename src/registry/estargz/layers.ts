import type { SourceCompression } from '../../estargz/types.ts';
import type { Descriptor } from '../../oci/manifest.ts';

/** The layer annotations stargz-snapshotter reads (stargz-snapshotter docs/estargz.md). */
export const TOC_DIGEST_ANNOTATION = 'containerd.io/snapshot/stargz/toc.digest';
export const UNCOMPRESSED_SIZE_ANNOTATION = 'io.containers.estargz.uncompressed-size';
/** berth's own annotation on a converted manifest or index: the digest it was converted from. */
export const SOURCE_ANNOTATION = 'dev.berth.estargz.source';

/** Layer media types berth converts, and what the converted layer's media type is (always gzip). */
const CONVERTIBLE: Record<string, { compression: SourceCompression; converted: string }> = {
  'application/vnd.oci.image.layer.v1.tar+gzip': { compression: 'gzip', converted: 'application/vnd.oci.image.layer.v1.tar+gzip' },
  'application/vnd.docker.image.rootfs.diff.tar.gzip': { compression: 'gzip', converted: 'application/vnd.docker.image.rootfs.diff.tar.gzip' },
  'application/vnd.oci.image.layer.v1.tar': { compression: 'none', converted: 'application/vnd.oci.image.layer.v1.tar+gzip' },
  'application/vnd.docker.image.rootfs.diff.tar': { compression: 'none', converted: 'application/vnd.docker.image.rootfs.diff.tar.gzip' },
};

export type LayerPlan = { kind: 'convert'; compression: SourceCompression; mediaType: string } | { kind: 'pass'; why: string };

/**
 * What to do with one layer. Converted: gzip and uncompressed tars. Passed through unchanged: zstd layers
 * (eStargz is gzip), foreign / non-distributable layers (their bytes are not berth's to rewrite, and often
 * not fetchable), and layers that already carry a TOC digest (eStargz upstream). A gzip layer that is
 * eStargz without the annotation is found by its footer before conversion (layer-conversions.ts).
 */
export function planLayer(layer: Descriptor): LayerPlan {
  if (layer.annotations?.[TOC_DIGEST_ANNOTATION]) return { kind: 'pass', why: 'already eStargz' };
  const c = CONVERTIBLE[layer.mediaType];
  if (!c) return { kind: 'pass', why: `media type ${layer.mediaType || '(none)'}` };
  return { kind: 'convert', compression: c.compression, mediaType: c.converted };
}
