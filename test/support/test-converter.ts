// The layer converter the eStargz image tests run (test/estargz-*.test.ts): berth's own worker pool.
import { ConversionPool } from '../../src/estargz/pool.ts';
import type { LayerConverter } from '../../src/estargz/types.ts';

export async function makeConverter(): Promise<{ converter: LayerConverter; close(): Promise<void> }> {
  const pool = new ConversionPool({ concurrency: 1 });
  return { converter: pool, close: () => pool.close() };
}
