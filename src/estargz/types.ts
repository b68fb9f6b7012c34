/**
 * The contract between the layer converter (src/estargz/) and the image conversion around it
 * (src/registry/estargz/). The converter knows tar, gzip and the eStargz layout; it knows nothing of
 * registries, manifests or where bytes are stored. Image conversion knows nothing of tar.
 *
 * eStargz (stargz-snapshotter docs/estargz.md): a gzip layer that is still a valid tar.gz, made of one gzip
 * member per file (and per `chunkSize` of a large file), ending with the TOC (`stargz.index.json`, a JSON
 * list of every entry with the offset of its member and each chunk's digest) as the last tar entry in its own
 * member, and a 51-byte footer (an empty gzip member whose extra field names the TOC's offset). Files read at
 * start-up come first, followed by `.prefetch.landmark`; with none known, `.no.prefetch.landmark` comes first.
 */

/** How one layer is converted; part of the key under which a result is kept. */
export interface LayerConversion {
  /** Uncompressed bytes per gzip member of a regular file larger than this. */
  chunkSize: number;
  /**
   * Files the container reads at start-up, in that order (tar names without a leading `./` or `/`): they
   * are written first, then `.prefetch.landmark`. Empty: `.no.prefetch.landmark` first, then the layer in
   * its own order.
   */
  prioritizedFiles: readonly string[];
}

/** What converting one layer produced. */
export interface ConvertedLayer {
  /** `sha256:<hex>` of the eStargz blob (what the sink received), and its size. */
  digest: string;
  size: number;
  /** `sha256:<hex>` of the uncompressed tar: the new config's `rootfs.diff_ids` entry. */
  diffId: string;
  /** Annotation `containerd.io/snapshot/stargz/toc.digest`: `sha256:<hex>` of the TOC JSON. */
  tocDigest: string;
  /** Annotation `io.containers.estargz.uncompressed-size`: bytes of the uncompressed tar. */
  uncompressedSize: number;
}

/** The source layer's compression, from its media type. */
export type SourceCompression = 'gzip' | 'none';

/**
 * Converts one layer. `source` is the stored blob's bytes as they are (gzip or an uncompressed tar);
 * `sink` receives the eStargz bytes in order and its promise is the backpressure. Memory stays bounded by
 * the chunk size whatever the layer's size. Throws ConversionError on input that is not a valid layer
 * (bad gzip, bad tar, an absurd header, a `..` path): nothing the sink received may then be kept.
 * Deterministic: the same source and options give the same bytes.
 */
export interface LayerConverter {
  convert(source: AsyncIterable<Buffer>, compression: SourceCompression, options: LayerConversion, sink: (chunk: Buffer) => Promise<void>, signal?: AbortSignal): Promise<ConvertedLayer>;
}

/** One entry of the TOC, the fields berth reads back (learning the start-up set, tests). */
export interface TocEntry {
  name: string;
  type: 'dir' | 'reg' | 'symlink' | 'hardlink' | 'char' | 'block' | 'fifo' | 'chunk';
  size?: number;
  /** Offset in the blob of the gzip member holding this entry (or chunk). */
  offset?: number;
  chunkOffset?: number;
  chunkSize?: number;
  chunkDigest?: string;
  digest?: string;
  linkName?: string;
  /** Further fields of the estargz TOC (readToc keeps them; berth's converter writes them all). */
  modtime?: string;
  mode?: number;
  uid?: number;
  gid?: number;
  userName?: string;
  groupName?: string;
  devMajor?: number;
  devMinor?: number;
  /** Extended attributes, values base64 (Go's []byte in JSON). */
  xattrs?: Record<string, string>;
}

/** Why a layer cannot be converted; the message is for the operator's log and the client's error. */
export class ConversionError extends Error {
  override name = 'ConversionError';
}
