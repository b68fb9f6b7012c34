// `Range: bytes=-1024` on the uncached 200 MB blob through a fresh cache: time to the last byte, the
// status, and how much the upstream sent to answer it.
import { open, readFile } from 'node:fs/promises';
import path from 'node:path';
import type { BenchContext, CacheName } from '../context.ts';
import { blobUrl, curl, upstreamBlobBytes } from '../measure.ts';
import { bytesText, num, type Row } from '../row.ts';

const TAIL = 1024;

export async function coldRange(ctx: BenchContext): Promise<Row[]> {
  const img = ctx.bed.big;
  const size = img.layer.size;
  const dir = await ctx.scratch('range');
  const expected = await tailOf(path.join(ctx.bed.www, 'v2', img.repository, 'blobs', img.layer.digest), size);
  const time: Record<string, number> = {};
  const status: Record<string, number> = {};
  const upBytes: Record<string, number> = {};
  const bodyOk: Record<string, boolean> = {};
  const notes: string[] = [];
  for (const name of ['berth', 'registry'] as CacheName[]) {
    const cache = await ctx.cold(name);
    try {
      const mark = ctx.bed.up.logLineCount();
      const relayBefore = ctx.bed.relay.bytesDown;
      const out = path.join(dir, `${name}.body`);
      const r = await curl(blobUrl(cache, img.repository, img.layer.digest), { headers: { Range: `bytes=-${TAIL}` }, output: out, maxTimeSec: 600 });
      const relayBytes = ctx.bed.relay.bytesDown - relayBefore;
      // Short settle: berth starts completing the blob in the background 1 s after a Range miss; that is
      // not what answering this request cost, and its log line would only come at the end anyway.
      const up = await upstreamBlobBytes(ctx.bed.up, mark, img.layer.digest, 300);
      time[name] = r.seconds;
      status[name] = r.status;
      upBytes[name] = up.bytes;
      const body = await readFile(out);
      const correct = r.status === 206 ? body.equals(expected) : r.status === 200 && body.length === size;
      bodyOk[name] = correct;
      notes.push(
        `${name}: ${r.status}, ${bytesText(r.bytes)} body${correct ? '' : ' (WRONG BODY)'}; upstream ${up.requests} GETs, ${bytesText(up.bytes)} of body (relay saw ${bytesText(relayBytes)} incl. headers when the response ended)`,
      );
      ctx.log(`range ${name}: ${r.status} in ${num(r.seconds)} s, upstream ${bytesText(up.bytes)}`);
    } finally {
      await cache.stop();
    }
  }
  const cell = (n: string): string => (time[n] === undefined ? '—' : `${num(time[n])} (${status[n]})`);
  const up = (n: string): string => (upBytes[n] === undefined ? '—' : bytesText(upBytes[n]!));
  return [
    {
      figure: 'range',
      label: `cold Range bytes=-${TAIL}: time to last byte (s) (status)`,
      cells: { berth: cell('berth'), registry: cell('registry') },
      target: '≤ 0.1 s, 206',
      pass: time.berth !== undefined && time.berth <= 0.1 && status.berth === 206 && bodyOk.berth === true,
      notes,
    },
    {
      figure: 'range',
      label: `cold Range bytes=-${TAIL}: fetched upstream`,
      cells: { berth: up('berth'), registry: up('registry') },
      target: '≤ 64 KiB',
      // Body bytes of the upstream's completed GETs of this blob. The relay's count (in the notes) also holds
      // berth's background completion when the response took longer than its 1 s lazy-fill delay.
      pass: upBytes.berth !== undefined && upBytes.berth <= 64 * 1024,
    },
  ];
}

async function tailOf(file: string, size: number): Promise<Buffer> {
  const fh = await open(file, 'r');
  try {
    const buf = Buffer.alloc(Math.min(TAIL, size));
    await fh.read(buf, 0, buf.length, size - buf.length);
    return buf;
  } finally {
    await fh.close();
  }
}
