// The layer converter the eStargz image tests run (test/estargz-*.test.ts): berth's own.
import { convertLayer } from '../../src/estargz/convert-layer.ts';
import type { LayerConverter } from '../../src/estargz/types.ts';

export async function makeConverter(): Promise<{ converter: LayerConverter; close(): Promise<void> }> {
  return { converter: { convert: convertLayer }, close: async () => {} };
}
