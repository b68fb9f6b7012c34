// Range requests (RFC 9110 §14, as stargz-snapshotter and resuming clients send them) on a cached blob
// and on a blob whose fill is still in flight over a slow link. Every byte is compared with the source.
// Issue #2.
import assert from 'node:assert/strict';
import { open } from 'node:fs/promises';
import type http from 'node:http';
import { after, before, describe, test } from 'node:test';
import { type InProcessBerth, startBerth } from './support/berth.ts';
import { hashedGet, type RawResponse, request } from './support/http.ts';
import { type Blob, type Seeded, seedStandard } from './support/images.ts';
import { waitUntil } from './support/links.ts';
import { type Relay, startRelay } from './support/relay.ts';
import { committedPath, exists } from './support/storage.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const BIG_BYTES = 24 * 1024 * 1024;
/** The fill of the big layer takes about 3 s over this link: long enough to ask it for ranges meanwhile. */
const SLOW_RATE = 8 * 1024 * 1024;

/** GET of a whole URL on a fresh connection, the body collected. */
const get = (url: string, headers: http.OutgoingHttpHeaders = {}): Promise<RawResponse> => {
  const u = new URL(url);
  return request(url, `${u.pathname}${u.search}`, { headers });
};

interface Part {
  contentType: string | undefined;
  contentRange: string | undefined;
  body: Buffer;
}

/**
 * Parses a multipart/byteranges body (RFC 9110 §14.6): each part's length is taken from its own
 * Content-Range, so binary content that happens to look like a delimiter cannot confuse the parser.
 */
function parseByteranges(body: Buffer, boundary: string): Part[] {
  const parts: Part[] = [];
  const delimiter = `--${boundary}`;
  let pos = body.indexOf(delimiter);
  assert.ok(pos >= 0, 'no boundary in the multipart body');
  for (;;) {
    pos += delimiter.length;
    if (body.subarray(pos, pos + 2).toString('latin1') === '--') break; // close delimiter
    assert.equal(body.subarray(pos, pos + 2).toString('latin1'), '\r\n', 'boundary line not ended by CRLF');
    pos += 2;
    const headerEnd = body.indexOf('\r\n\r\n', pos);
    assert.ok(headerEnd > 0, 'part headers not terminated');
    const headers = new Map<string, string>();
    for (const line of body.subarray(pos, headerEnd).toString('latin1').split('\r\n')) {
      const colon = line.indexOf(':');
      headers.set(line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim());
    }
    const contentRange = headers.get('content-range');
    const m = /^bytes (\d+)-(\d+)\/\d+$/.exec(contentRange ?? '');
    assert.ok(m, `part without a usable Content-Range: ${contentRange}`);
    const length = Number(m[2]) - Number(m[1]) + 1;
    const start = headerEnd + 4;
    parts.push({ contentType: headers.get('content-type'), contentRange, body: body.subarray(start, start + length) });
    pos = start + length;
    assert.equal(body.subarray(pos, pos + 2).toString('latin1'), '\r\n', 'part body not followed by CRLF');
    pos += 2;
    assert.equal(body.subarray(pos, pos + delimiter.length).toString('latin1'), delimiter, 'part not followed by a boundary');
  }
  return parts;
}

type Source = (start: number, end: number) => Promise<Buffer>;

/**
 * Every Range form against one blob; `source` gives the true bytes [start, end] (inclusive). Each range
 * asked is small, so on a blob still being filled the answers come before the fill ends; `wholeToo` adds
 * the forms that select the whole blob.
 */
async function assertEveryRangeForm(url: string, digest: string, size: number, source: Source, wholeToo: boolean): Promise<void> {
  const single = async (range: string, start: number, end: number): Promise<void> => {
    const res = await get(url, { range });
    assert.equal(res.status, 206, `${range}: ${res.body.toString('utf8').slice(0, 200)}`);
    assert.equal(res.headers['content-range'], `bytes ${start}-${end}/${size}`, range);
    assert.equal(res.headers['content-length'], String(end - start + 1), range);
    assert.equal(res.headers['docker-content-digest'], digest, range);
    assert.equal(res.headers['accept-ranges'], 'bytes', range);
    assert.ok(res.body.equals(await source(start, end)), `${range}: bytes differ from the source`);
  };
  const mid = Math.floor(size / 2);
  await single(`bytes=100-1099`, 100, 1099); // a-b
  await single(`bytes=${mid}-${mid}`, mid, mid); // one byte, far from the start
  await single(`bytes=${size - 5000}-`, size - 5000, size - 1); // N-
  await single(`bytes=-1500`, size - 1500, size - 1); // -N
  if (wholeToo) {
    await single(`bytes=-${size + 10}`, 0, size - 1); // a suffix longer than the blob is the whole blob
    await single('bytes=0-', 0, size - 1);
  }
  await single(`bytes=${size - 10}-${size + 100}`, size - 10, size - 1); // end past the blob is clamped

  // Several ranges: multipart/byteranges, parts in the order asked.
  const asked: Array<[number, number]> = [
    [0, 99],
    [mid, mid + 999],
    [size - 50, size - 1],
  ];
  const multi = await get(url, { range: `bytes=0-99, ${mid}-${mid + 999}, -50` });
  assert.equal(multi.status, 206, multi.body.toString('utf8').slice(0, 200));
  const ct = multi.headers['content-type'] ?? '';
  const boundary = /^multipart\/byteranges;\s*boundary=("?)([^";]+)\1$/.exec(ct)?.[2];
  assert.ok(boundary, `Content-Type of a multi-range answer: ${ct}`);
  assert.equal(multi.headers['content-length'], String(multi.body.length));
  assert.equal(multi.headers['content-range'], undefined, 'a multipart answer has Content-Range per part only');
  const parts = parseByteranges(multi.body, boundary);
  assert.equal(parts.length, asked.length);
  for (const [i, [start, end]] of asked.entries()) {
    assert.equal(parts[i]!.contentRange, `bytes ${start}-${end}/${size}`);
    assert.equal(parts[i]!.contentType, 'application/octet-stream');
    assert.ok(parts[i]!.body.equals(await source(start, end)), `part ${i} (${start}-${end}) differs from the source`);
  }

  // Nothing of the blob asked for: 416 with the size, in the error envelope.
  for (const range of [`bytes=${size}-`, `bytes=${size + 1000}-${size + 2000}`]) {
    const res = await get(url, { range });
    assert.equal(res.status, 416, range);
    assert.equal(res.headers['content-range'], `bytes */${size}`, range);
    const body = JSON.parse(res.body.toString('utf8')) as { errors: Array<{ code: string }> };
    assert.equal(body.errors[0]?.code, 'RANGE_NOT_SATISFIABLE', range);
  }
}

describe('Range requests', () => {
  let up: Upstream;
  let seeded: Seeded;
  let seedDir: string;
  let relay: Relay;
  let b: InProcessBerth;

  before(async () => {
    seedDir = await makeTempDir('seed-ranges');
    up = await startUpstream();
    seeded = await seedStandard(up, seedDir, { bigBytes: BIG_BYTES });
    relay = await startRelay({ target: { host: '127.0.0.1', port: up.port } });
    b = await startBerth({ upstreams: [{ host: 'docker.io', url: relay.url() }] });
  });

  after(async () => {
    await b?.stop();
    await relay?.close();
    await up?.stop();
    await removeTempDir(seedDir);
  });

  test('every Range form on a cached layer answers exactly the bytes asked for', async () => {
    const layer: Blob = seeded.small.layers[2]!; // the one with a MiB of random data
    const bytes = layer.bytes!;
    const url = `${b.url}/v2/lab/small/blobs/${layer.digest}`;
    const whole = await get(url);
    assert.equal(whole.status, 200);
    assert.ok(whole.body.equals(bytes));
    await waitUntil('the layer to be committed', () => exists(committedPath(b, layer.digest)), 10_000);
    await assertEveryRangeForm(url, layer.digest, layer.size, async (s, e) => bytes.subarray(s, e + 1), true);
  });

  test('every Range form on a layer still being filled over a slow link answers at once with the right bytes', async () => {
    const layer: Blob = seeded.big!.layers[0]!;
    const fh = await open(layer.path!, 'r');
    const source: Source = async (start, end) => {
      const buf = Buffer.alloc(end - start + 1);
      const { bytesRead } = await fh.read(buf, 0, buf.length, start);
      assert.equal(bytesRead, buf.length);
      return buf;
    };
    const url = `${b.url}/v2/lab/big/blobs/${layer.digest}`;
    relay.setRate(SLOW_RATE);
    try {
      const pull = hashedGet(url); // a client pulling the whole layer starts the fill
      await waitUntil('the fill to start', async () => relay.bytesDown > 0, 10_000);
      await assertEveryRangeForm(url, layer.digest, layer.size, source, false);
      assert.equal(await exists(committedPath(b, layer.digest)), false, 'the fill finished before the ranges were answered; the test proves nothing');
      const whole = await pull;
      assert.equal(whole.status, 200);
      assert.equal(whole.bytes, layer.size);
      assert.equal(whole.digest, layer.digest);
    } finally {
      relay.setRate(undefined);
      await fh.close();
    }
    // And once committed, the same forms from disk.
    await waitUntil('the layer to be committed', () => exists(committedPath(b, layer.digest)), 30_000);
    const again = await open(layer.path!, 'r');
    try {
      const fromFile: Source = async (start, end) => {
        const buf = Buffer.alloc(end - start + 1);
        await again.read(buf, 0, buf.length, start);
        return buf;
      };
      await assertEveryRangeForm(url, layer.digest, layer.size, fromFile, true);
    } finally {
      await again.close();
    }
  });
});
