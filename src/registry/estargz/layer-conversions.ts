import { createHash, randomBytes } from 'node:crypto';
import { open, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { isEstargzFooter } from '../../estargz/convert-layer.ts';
import { readTocJson } from '../../estargz/toc.ts';
import { ConversionError, type ConvertedLayer, type LayerConverter, type SourceCompression } from '../../estargz/types.ts';
import type { Digest } from '../../oci/digest.ts';
import { RegistryError } from '../../oci/errors.ts';
import { SingleFlight } from '../../single-flight.ts';
import type { AsyncRegistryIndex } from '../../store/async-index-roles.ts';
import type { StoragePaths } from '../../store/paths.ts';
import type { Quota } from '../../store/quota.ts';
import type { BlobIngester, BlobReader } from '../../store/roles.ts';
import type { Blobs } from '../blobs.ts';
import type { Route } from '../upstreams.ts';
import { layerOptionsKey } from './options.ts';
import { readRange } from './read-range.ts';

/** The eStargz footer's size (an empty gzip member whose extra field names the TOC's offset). */
const FOOTER_SIZE = 51;

export interface LayerConversionsOptions {
  converter: LayerConverter;
  store: BlobReader & BlobIngester & { readonly paths: StoragePaths };
  index: AsyncRegistryIndex;
  blobs: Pick<Blobs, 'warm'>;
  quota: Pick<Quota, 'protect' | 'enforce'>;
  log: Logger;
  /** Aborted when berth shuts down: conversions in progress stop and leave nothing behind. */
  signal: AbortSignal;
  /** Called once per layer actually converted (not for one found in the index): tests and metrics count them. */
  onConverted?: (source: Digest, result: ConvertedLayer) => void;
}

/**
 * Converts single layers, once: one conversion per (source layer, options) at a time, and a result kept
 * in the index (EstargzIndex.layer) is used as long as its blob is in the store. The source is fetched
 * through the ordinary blob path first (Blobs.warm: background priority, no client's fill slot) and read
 * from the store; the eStargz bytes go to a temp file, hashed as they are written, and enter blobs/ only
 * through the store's verified commit once the converter finished without error.
 */
export class LayerConversions {
  private readonly flights = new SingleFlight<ConvertedLayer>();

  constructor(private readonly o: LayerConversionsOptions) {}

  /**
   * Removes the temp files of conversions a killed process left (`tmp/esgz.*.tmp`, up to a layer's size each).
   * Only for the process that holds the storage lock: no other process converts into this storage.
   */
  async sweepLeftovers(): Promise<number> {
    const tmp = this.o.store.paths.tmp;
    const names = await readdir(tmp).catch(() => [] as string[]);
    const left = names.filter((f) => /^esgz\.[0-9a-f]{16}\.tmp$/.test(f));
    await Promise.all(left.map((f) => rm(join(tmp, f), { force: true })));
    return left.length;
  }

  convert(route: Route, source: Digest, compression: SourceCompression, chunkSize: number, prioritizedFiles: readonly string[]): Promise<ConvertedLayer> {
    const options = layerOptionsKey({ chunkSize, prioritizedFiles });
    return this.flights.run(`${source} ${options}`, async () => {
      const known = await this.o.index.estargz.layer(source, options);
      if (known && (await this.o.store.stat(known.digest))?.size === known.size) return known;
      await this.fetchSource(route, source);
      const release = this.o.quota.protect([source]);
      try {
        const result = await this.run(source, compression, { chunkSize, prioritizedFiles });
        await this.o.index.estargz.putLayer({ source, options, ...result } as Parameters<AsyncRegistryIndex['estargz']['putLayer']>[0]);
        this.o.onConverted?.(source, result);
        return result;
      } finally {
        release();
      }
    });
  }

  /**
   * The TOC digest of a gzip source layer that already is eStargz without saying so (no annotation, found
   * by its footer), else undefined. Fetches the layer (it is converted next otherwise).
   */
  async estargzToc(route: Route, source: Digest): Promise<string | undefined> {
    await this.fetchSource(route, source);
    const size = (await this.o.store.stat(source))?.size ?? 0;
    if (size < FOOTER_SIZE) return undefined;
    const read = (start: number, end: number) => readRange(this.o.store, source, start, end);
    if (!isEstargzFooter(await read(size - FOOTER_SIZE, size))) return undefined;
    try {
      // The TOC as the snapshotter finds it (footer, member, stargz.index.json), not parsed: it checks the
      // entries itself, as it does those of a layer annotated upstream, which berth passes through unread.
      return (await readTocJson(read, size)).tocDigest;
    } catch {
      // A footer but no TOC member: not eStargz after all; converting it tells what is wrong.
      return undefined;
    }
  }

  /** The source layer on disk; a layer the upstream does not have (or sends wrong) is the upstream's problem. */
  private async fetchSource(route: Route, source: Digest): Promise<void> {
    try {
      await this.o.blobs.warm(route, source);
    } catch (err) {
      if (err instanceof RegistryError && (err.code === 'UNAVAILABLE' || err.code === 'UPSTREAM_ERROR')) throw err;
      throw new RegistryError('UPSTREAM_ERROR', `layer ${source} could not be fetched: ${(err as Error).message}`);
    }
  }

  private async run(source: Digest, compression: SourceCompression, options: { chunkSize: number; prioritizedFiles: readonly string[] }): Promise<ConvertedLayer> {
    const { store, index, converter, signal } = this.o;
    const file = join(store.paths.tmp, `esgz.${randomBytes(8).toString('hex')}.tmp`);
    const fh = await open(file, 'wx');
    const hash = createHash('sha256');
    let size = 0;
    let committed = false;
    try {
      const sink = async (chunk: Buffer) => {
        hash.update(chunk);
        for (let off = 0; off < chunk.length; ) {
          const { bytesWritten } = await fh.write(chunk, off, chunk.length - off);
          off += bytesWritten;
        }
        size += chunk.length;
      };
      let result: ConvertedLayer;
      try {
        result = await converter.convert(store.read(source), compression, { chunkSize: options.chunkSize, prioritizedFiles: [...options.prioritizedFiles] }, sink, signal);
      } catch (err) {
        if (err instanceof ConversionError) throw new RegistryError('UPSTREAM_ERROR', `layer ${source} cannot be converted to eStargz: ${err.message}`);
        throw err;
      }
      await fh.close();
      const digest = `sha256:${hash.digest('hex')}` as Digest;
      if (digest !== result.digest || size !== result.size) {
        throw new Error(`converter of ${source} reported ${result.digest} (${result.size} bytes) but wrote ${digest} (${size} bytes)`);
      }
      await store.commitFile(digest, file, { digest, size });
      committed = true;
      await index.putBlob(digest, size, null);
      void this.o.quota.enforce().catch((err: Error) => this.o.log.error({ err }, 'quota pass failed'));
      return result;
    } finally {
      await fh.close().catch(() => undefined);
      if (!committed) await rm(file, { force: true });
    }
  }
}
