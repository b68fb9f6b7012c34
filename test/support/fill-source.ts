import { Readable } from 'node:stream';
import { setImmediate as nextTurn } from 'node:timers/promises';
import type { BlobSource } from '../../src/registry/fill/fill-options.ts';

/**
 * A stand-in upstream for unit tests of fills (src/registry/fill/): it sends `bytes` whole, in 64 KiB
 * chunks; `paced`: one chunk per event-loop turn, so readers catch up with the fill and wait for bytes.
 */
export function wholeBlobSource(bytes: Buffer, opts: { paced?: boolean } = {}): BlobSource {
  return {
    async open() {
      async function* chunks(): AsyncGenerator<Buffer> {
        for (let i = 0; i < bytes.length; i += 65_536) {
          if (opts.paced) await nextTurn();
          yield bytes.subarray(i, i + 65_536);
        }
      }
      return { partial: false, start: 0, size: bytes.length, body: Readable.from(chunks(), { objectMode: false }) };
    },
  };
}
