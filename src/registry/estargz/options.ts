import { createHash } from 'node:crypto';
import type { LayerConversion } from '../../estargz/types.ts';

/**
 * The key under which a conversion is kept: everything that changes its bytes. The prioritised files are
 * hashed (a learned list can be long); the empty list is spelled out so that keys read in the index.
 */
export function layerOptionsKey(o: LayerConversion): string {
  const files = o.prioritizedFiles.length === 0 ? 'none' : createHash('sha256').update(JSON.stringify(o.prioritizedFiles)).digest('hex').slice(0, 32);
  return `chunk=${o.chunkSize};files=${files}`;
}

/** An image's key: its layers' options and which platforms of an index are kept. */
export function imageOptionsKey(o: LayerConversion, platforms: readonly string[]): string {
  return `${layerOptionsKey(o)};platforms=${platforms.length === 0 ? 'all' : [...platforms].sort().join(',')}`;
}
