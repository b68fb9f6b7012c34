/**
 * One layer to eStargz, in one pass over the source: gunzip (for a gzip layer) → tar reader (every header
 * block kept) → eStargz writer → sink. Single-threaded: the pool (pool.ts) runs it in a worker thread.
 *
 * Names: the TOC names entries without a leading `/` or `./` (as the estargz reader cleans them); the tar
 * headers are copied unchanged, so the uncompressed layer stays the original file for file. A `..` that
 * leaves the root, in a name or a hardlink target, refuses the layer. Entries named like berth's own
 * additions (`stargz.index.json`, the landmarks) are dropped from the source, as estargz does.
 */
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import zlib from 'node:zlib';
import { ByteReader } from './byte-reader.ts';
import { EstargzWriter } from './estargz-writer.ts';
import { type Deflate, deflateAsync } from './gzip-member.ts';
import { writeReordered } from './reorder.ts';
import { readTar, type TarEntry } from './tar-reader.ts';
import { NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, TOC_TAR_NAME } from './toc-json.ts';
import { ConversionError, type ConvertedLayer, type LayerConversion, type LayerConverter, type SourceCompression } from './types.ts';

export { isEstargzFooter, parseFooter } from './gzip-member.ts';

const RESERVED = new Set([TOC_TAR_NAME, PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK]);
const MAX_CHUNK = 256 << 20;

/** The source's entries minus berth's reserved names (their payload read and dropped). */
async function* layerEntries(reader: ByteReader): AsyncGenerator<TarEntry> {
  for await (const e of readTar(reader)) {
    if (!RESERVED.has(e.name)) {
      yield e;
      continue;
    }
    for (let left = e.size; left > 0; ) left -= (await reader.readSome(left, 'a reserved entry')).length;
  }
}

/** zlib's errors are the layer's fault; anything else (the source's I/O, an abort) is passed on as it is. */
function gzipError(err: unknown): unknown {
  const code = (err as { code?: unknown })?.code;
  if (typeof code === 'string' && code.startsWith('Z_')) return new ConversionError(`not a valid gzip stream: ${(err as Error).message}`);
  return err;
}

async function* counted(source: AsyncIterable<Buffer>, seen: { bytes: number }): AsyncGenerator<Buffer> {
  for await (const b of source) {
    seen.bytes += b.length;
    yield b;
  }
}

export async function convertLayerWith(
  source: AsyncIterable<Buffer>,
  compression: SourceCompression,
  options: LayerConversion,
  sink: (chunk: Buffer) => Promise<void>,
  signal: AbortSignal | undefined,
  deflate: Deflate,
  /** Where prioritised conversions spool the layer's entries (default os.tmpdir()). */
  spoolDir?: string,
): Promise<ConvertedLayer> {
  const { chunkSize, prioritizedFiles } = options;
  if (!Number.isSafeInteger(chunkSize) || chunkSize < 1 || chunkSize > MAX_CHUNK) throw new RangeError(`chunkSize ${chunkSize} is not between 1 and ${MAX_CHUNK}`);
  signal?.throwIfAborted();
  const blob = createHash('sha256');
  let size = 0;
  const writer = new EstargzWriter(chunkSize, deflate, async (member) => {
    signal?.throwIfAborted();
    blob.update(member);
    size += member.length;
    await sink(member);
  });
  const seen = { bytes: 0 };
  const run = async (tar: AsyncIterator<Buffer>) => {
    const reader = new ByteReader(tar);
    const entries = layerEntries(reader);
    if (prioritizedFiles.length === 0) {
      await writer.addLandmark(NO_PREFETCH_LANDMARK);
      for await (const e of entries) {
        signal?.throwIfAborted();
        await writer.add(e, (max) => reader.readSome(max, `the payload of ${JSON.stringify(e.name)}`));
      }
    } else {
      await writeReordered(entries, reader, writer, prioritizedFiles, signal, spoolDir);
    }
    await reader.drain();
    if (seen.bytes === 0) throw new ConversionError('the layer is empty (0 bytes)');
  };
  const input = counted(source, seen);
  if (compression === 'gzip') {
    try {
      await pipeline(Readable.from(input, { objectMode: false }), zlib.createGunzip(), async (gz: AsyncIterable<Buffer>) => run(gz[Symbol.asyncIterator]()), { signal });
    } catch (err) {
      throw gzipError(err);
    }
  } else {
    const it = input[Symbol.asyncIterator]();
    try {
      await run(it);
    } finally {
      await it.return(undefined); // on failure too: stop reading (and close) the source
    }
  }
  const r = await writer.finish();
  return { digest: `sha256:${blob.digest('hex')}`, size, diffId: r.diffId, tocDigest: r.tocDigest, uncompressedSize: r.uncompressedSize };
}

/** convertLayer on the calling thread, compressing on libuv's pool (zlib's async API). */
export const convertLayer: LayerConverter['convert'] = (source, compression, options, sink, signal) => convertLayerWith(source, compression, options, sink, signal, deflateAsync);
