import { createHash } from 'node:crypto';
import type { Config } from '../../config/schema.ts';
import type { LayerConversion } from '../../estargz/types.ts';
import type { Digest } from '../../oci/digest.ts';
import type { StartupFile } from '../../store/index-roles.ts';

const hash = (v: unknown) => createHash('sha256').update(JSON.stringify(v)).digest('hex').slice(0, 32);

/**
 * The key under which a layer conversion is kept: everything that changes its bytes. The prioritised
 * files are hashed (a learned list can be long); the empty list is spelled out so that keys read in the index.
 */
export function layerOptionsKey(o: LayerConversion): string {
  return `chunk=${o.chunkSize};files=${o.prioritizedFiles.length === 0 ? 'none' : hash(o.prioritizedFiles)}`;
}

/** How an image is converted: its key, the chunk size, and each source layer's start-up files. */
export interface Plan {
  options: string;
  chunkSize: number;
  learned: boolean;
  prioritized(sourceLayer: Digest): readonly string[];
}

/** The plain conversion, or (with a learned start-up set) the one with each layer's start-up files first. */
export function planOf(config: Pick<Config['estargz'], 'chunkSize' | 'platforms'>, learned: readonly StartupFile[] | undefined): Plan {
  const platforms = config.platforms.length === 0 ? 'all' : [...config.platforms].sort().join(',');
  const base = `chunk=${config.chunkSize};platforms=${platforms}`;
  if (!learned || learned.length === 0) return { options: `${base};files=none`, chunkSize: config.chunkSize, learned: false, prioritized: () => [] };
  const byLayer = new Map<string, string[]>();
  for (const f of learned) byLayer.set(f.layer, [...(byLayer.get(f.layer) ?? []), f.name]);
  return { options: `${base};learned=${hash(learned)}`, chunkSize: config.chunkSize, learned: true, prioritized: (d) => byLayer.get(d) ?? [] };
}
