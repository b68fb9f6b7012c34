// `node --import tsx bench/estargz-convert-child.ts SOURCE.tar.gz OUT CHUNK_SIZE`: berth's layer converter
// (src/estargz/convert-layer.ts) on one gzip layer file, the eStargz bytes written to OUT, and the result
// printed as JSON. Its own process so that GNU time measures exactly the conversion's CPU and peak RSS.
// With SOURCE `-` it converts nothing: the baseline of node + tsx + the converter's modules.
import { createReadStream } from 'node:fs';
import { open } from 'node:fs/promises';
import { convertLayer } from '../src/estargz/convert-layer.ts';

async function main(): Promise<void> {
  const [source, out, chunk] = process.argv.slice(2);
  if (source === undefined || out === undefined || chunk === undefined) throw new Error('usage: estargz-convert-child SOURCE OUT CHUNK_SIZE');
  if (source === '-') {
    console.log(JSON.stringify({ baseline: true }));
    return;
  }
  const fh = await open(out, 'w');
  try {
    const result = await convertLayer(createReadStream(source, { highWaterMark: 1 << 20 }), 'gzip', { chunkSize: Number(chunk), prioritizedFiles: [] }, async (b) => {
      await fh.write(b);
    });
    console.log(JSON.stringify(result));
  } finally {
    await fh.close();
  }
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? (err.stack ?? err.message) : String(err));
  process.exit(1);
});
