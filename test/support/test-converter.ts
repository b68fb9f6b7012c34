// The layer converter the eStargz image tests run (test/estargz-*.test.ts).
import { createHash } from 'node:crypto';
import zlib from 'node:zlib';
import { ConversionError, type ConvertedLayer, type LayerConverter } from '../../src/estargz/types.ts';

/**
 * Until src/estargz/pool.ts lands: a stand-in that re-gzips the tar as one member (a valid tar.gz, no TOC)
 * and reports a TOC digest of its own making. Bad gzip is a ConversionError, as from the real one.
 */
export async function makeConverter(): Promise<{ converter: LayerConverter; close(): Promise<void> }> {
  const converter: LayerConverter = {
    async convert(source, compression, _options, sink): Promise<ConvertedLayer> {
      const parts: Buffer[] = [];
      for await (const c of source) parts.push(c);
      let tar: Buffer;
      try {
        tar = compression === 'gzip' ? zlib.gunzipSync(Buffer.concat(parts)) : Buffer.concat(parts);
      } catch (err) {
        throw new ConversionError(`not gzip: ${(err as Error).message}`);
      }
      const out = zlib.gzipSync(tar, { level: 1 });
      await sink(out);
      const sha = (b: Buffer | string) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
      return { digest: sha(out), size: out.length, diffId: sha(tar), tocDigest: sha(`toc ${sha(tar)}`), uncompressedSize: tar.length };
    },
  };
  return { converter, close: async () => {} };
}
