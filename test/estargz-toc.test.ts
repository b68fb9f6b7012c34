// The eStargz footer, reading a TOC back by ranges (src/estargz/toc.ts), and mapping Range requests to the
// files they read: the exact footer bytes of the spec, nonsense refused with a ConversionError, and
// filesInRanges on real converted blobs and on hand-made TOCs.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import zlib from 'node:zlib';
import { convertLayer, isEstargzFooter, parseFooter } from '../src/estargz/convert-layer.ts';
import { footerBytes } from '../src/estargz/gzip-member.ts';
import { filesInRanges, prefetchSize, readToc } from '../src/estargz/toc.ts';
import { ConversionError, type TocEntry } from '../src/estargz/types.ts';
import { fileEntry, rawHeader, tarOf } from './support/layers.ts';

const isConversionError = (re: RegExp) => (err: Error) => err instanceof ConversionError && re.test(err.message);
const ranged = (blob: Buffer) => async (s: number, e: number) => blob.subarray(s, e);

async function convert(tar: Buffer, prioritizedFiles: string[] = []): Promise<Buffer> {
  const parts: Buffer[] = [];
  await convertLayer(
    (async function* () {
      yield tar;
    })(),
    'none',
    { chunkSize: 4096, prioritizedFiles },
    async (b) => {
      parts.push(b);
    },
  );
  return Buffer.concat(parts);
}

/** A blob with `json` as its TOC (in a gzip'd tar entry named `name`) at some offset, and a footer naming it. */
function blobWithToc(json: string, opts: { name?: string; offset?: number; prefix?: Buffer } = {}): Buffer {
  const prefix = opts.prefix ?? zlib.gzipSync(tarOf(fileEntry('a', 'a')).subarray(0, 1024));
  const body = Buffer.from(json);
  const toc = zlib.gzipSync(Buffer.concat([rawHeader({ name: opts.name ?? 'stargz.index.json', size: body.length }), body, Buffer.alloc((512 - (body.length % 512)) % 512), Buffer.alloc(1024)]));
  return Buffer.concat([prefix, toc, footerBytes(opts.offset ?? prefix.length)]);
}

test('the footer is the 51 bytes of estargz: an empty gzip member with an SG extra field naming the TOC offset', () => {
  const f = footerBytes(0x1234abcd);
  assert.equal(f.length, 51);
  assert.equal(f.toString('hex'), `1f8b08040000000000ff1a00534716${'00'}${Buffer.from('000000001234abcdSTARGZ').toString('hex')}010000ffff0000000000000000`);
  assert.equal(zlib.gunzipSync(f).length, 0, 'a valid, empty gzip member');
  assert.ok(isEstargzFooter(f));
  assert.deepEqual(parseFooter(f), { tocOffset: 0x1234abcd });
  const legacy = Buffer.concat([f.subarray(0, 10), Buffer.from([22, 0]), f.subarray(16, 38), f.subarray(38)]); // stargz's 47-byte form
  for (const [what, bytes] of [
    ['a plain gzip tail', zlib.gzipSync(Buffer.alloc(100)).subarray(-51)],
    ['47-byte legacy footer', legacy],
    ['wrong magic', Buffer.from(f.toString('latin1').replace('STARGZ', 'STARGX'), 'latin1')],
    ['upper-case hex', Buffer.from(f.toString('latin1').replace('abcd', 'ABCD'), 'latin1')],
    ['another flag', Buffer.concat([f.subarray(0, 3), Buffer.from([0x0c]), f.subarray(4)])],
  ] as const) {
    assert.ok(!isEstargzFooter(bytes as Buffer), what);
    assert.throws(() => parseFooter(bytes as Buffer), ConversionError, what);
  }
});

test('readToc reads back what the converter wrote, by ranges, end-exclusive or end-inclusive', async () => {
  const blob = await convert(tarOf(fileEntry('etc/hostname', 'berth\n'), fileEntry('big', Buffer.alloc(10_000, 7))));
  const exclusive = await readToc(ranged(blob), blob.length);
  const inclusive = await readToc(async (s, e) => blob.subarray(s, e + 1), blob.length);
  assert.deepEqual(inclusive, exclusive);
  assert.deepEqual(
    exclusive.entries.map((e) => [e.name, e.type, e.chunkOffset ?? 0]),
    [
      ['.no.prefetch.landmark', 'reg', 0],
      ['etc/hostname', 'reg', 0],
      ['big', 'reg', 0],
      ['big', 'chunk', 4096],
      ['big', 'chunk', 8192],
    ],
  );
  assert.equal(parseFooter(blob.subarray(-51)).tocOffset, exclusive.tocOffset);
});

test('readToc refuses nonsense with a ConversionError', async () => {
  const good = blobWithToc(JSON.stringify({ version: 1, entries: [{ name: 'a', type: 'reg', size: 1, offset: 5 }] }));
  assert.equal((await readToc(ranged(good), good.length)).entries.length, 1);
  const cases: Array<[string, Buffer, RegExp]> = [
    ['too small', Buffer.alloc(40), /cannot be eStargz/],
    ['no footer', zlib.gzipSync(Buffer.from(Array.from({ length: 5000 }, (_, i) => (i * 2654435761) >>> 24))), /not an eStargz footer/],
    ['TOC offset past the end', blobWithToc('{}', { offset: 1e9 }), /past the end/],
    ['TOC member not gzip', Buffer.concat([Buffer.alloc(100, 1), footerBytes(10)]), /not valid gzip/],
    ['another entry name', blobWithToc('{"version":1,"entries":[]}', { name: 'evil.json' }), /does not hold stargz.index.json/],
    ['not JSON', blobWithToc('{"version":1,"entries":['), /not a valid TOC/],
    ['entries not a list', blobWithToc('{"version":1,"entries":{}}'), /not a valid TOC/],
    ['unknown type', blobWithToc('{"version":1,"entries":[{"name":"a","type":"socket"}]}'), /not a valid TOC/],
    ['negative offset', blobWithToc('{"version":1,"entries":[{"name":"a","type":"reg","offset":-1}]}'), /not a valid TOC/],
    ['offset past the TOC', blobWithToc('{"version":1,"entries":[{"name":"a","type":"reg","size":1,"offset":999999}]}'), /past the TOC/],
  ];
  for (const [what, blob, re] of cases) await assert.rejects(readToc(ranged(blob), blob.length), isConversionError(re), what);
  await assert.rejects(
    readToc(async () => Buffer.alloc(3), good.length),
    isConversionError(/gave 3 bytes/),
    'short reads',
  );
});

test('filesInRanges: the regular files whose members overlap the ranges, in blob order, once each', () => {
  const entries: TocEntry[] = [
    { name: '.no.prefetch.landmark', type: 'reg', size: 1, offset: 10 },
    { name: 'dir', type: 'dir' },
    { name: 'a', type: 'reg', size: 5, offset: 100 },
    { name: 'empty', type: 'reg', size: 0 },
    { name: 'b', type: 'reg', size: 5, offset: 200 },
    { name: 'big', type: 'reg', size: 30, offset: 300, chunkSize: 10 },
    { name: 'big', type: 'chunk', offset: 400, chunkOffset: 10, chunkSize: 10 },
    { name: 'big', type: 'chunk', offset: 500, chunkOffset: 20 },
    { name: 'hard', type: 'hardlink', linkName: 'a' },
    { name: 'd', type: 'reg', size: 5, offset: 600 },
  ];
  assert.deepEqual(filesInRanges(entries, [[150, 160]]), ['a']);
  assert.deepEqual(filesInRanges(entries, [[199, 200]]), ['a'], 'end exclusive');
  assert.deepEqual(filesInRanges(entries, [[200, 201]]), ['b']);
  assert.deepEqual(
    filesInRanges(entries, [
      [450, 460],
      [120, 130],
    ]),
    ['a', 'big'],
    'blob order, not range order',
  );
  assert.deepEqual(
    filesInRanges(entries, [
      [300, 310],
      [410, 420],
      [510, 520],
    ]),
    ['big'],
    'once',
  );
  assert.deepEqual(filesInRanges(entries, [[0, 99]]), [], 'the landmark is not a file');
  assert.deepEqual(filesInRanges(entries, [[0, 1000]]), ['a', 'b', 'big', 'd']);
  assert.deepEqual(filesInRanges(entries, [[650, 700]]), [], 'past the last member start, without dataEnd: the TOC');
  assert.deepEqual(filesInRanges(entries, [[650, 700]], 800), ['d']);
  assert.deepEqual(filesInRanges(entries, [[900, 1000]], 800), [], 'the TOC and footer');
  assert.deepEqual(filesInRanges(entries, [[150, 150]]), [], 'empty range');
  assert.deepEqual(filesInRanges([], [[0, 10]]), []);
});

test('prefetchSize is the prefetch landmark payload offset: one request covers the start-up set', async () => {
  const tar = tarOf(fileEntry('a', 'a'.repeat(3000)), fileEntry('b', 'b'), fileEntry('c', Buffer.alloc(9000, 1)));
  const plain = await convert(tar);
  assert.equal(prefetchSize((await readToc(ranged(plain), plain.length)).entries), 0);
  const blob = await convert(tar, ['c', 'b']);
  const { entries, tocOffset } = await readToc(ranged(blob), blob.length);
  const size = prefetchSize(entries);
  const landmark = entries.find((e) => e.name === '.prefetch.landmark')!;
  assert.equal(size, landmark.offset);
  assert.deepEqual(
    entries.slice(0, entries.indexOf(landmark) + 1).map((e) => e.name),
    ['c', 'c', 'c', 'b', '.prefetch.landmark'],
  );
  assert.deepEqual(filesInRanges(entries, [[0, size]], tocOffset), ['c', 'b']);
  const a = entries.find((e) => e.name === 'a')!;
  assert.ok(a.offset! > size);
  assert.deepEqual(filesInRanges(entries, [[a.offset!, a.offset! + 1]], tocOffset), ['a']);
  // What a reader of that one request gets: every member before the landmark, whole.
  const prefetched = zlib.gunzipSync(blob.subarray(0, size));
  assert.ok(prefetched.includes(Buffer.alloc(9000, 1)));
});

test('an eStargz blob converted again gives the same blob; trailing bytes that are not gzip are refused', async () => {
  const tar = tarOf(fileEntry('a', 'hello'), fileEntry('b', Buffer.alloc(10_000, 3)));
  const first = await convert(tar);
  const parts: Buffer[] = [];
  const again = await convertLayer(
    (async function* () {
      yield first;
    })(),
    'gzip',
    { chunkSize: 4096, prioritizedFiles: [] },
    async (b) => {
      parts.push(b);
    },
  );
  assert.deepEqual(Buffer.concat(parts), first, 'the old landmark and TOC are dropped, new ones written');
  assert.equal(again.size, first.length);
  const gz = zlib.gzipSync(tar);
  const tryGzip = (bytes: Buffer) =>
    convertLayer(
      (async function* () {
        yield bytes;
      })(),
      'gzip',
      { chunkSize: 4096, prioritizedFiles: [] },
      async () => {},
    );
  await assert.rejects(tryGzip(Buffer.concat([gz, Buffer.from('garbage!')])), isConversionError(/not a valid gzip stream/));
  const members = await tryGzip(Buffer.concat([zlib.gzipSync(tar.subarray(0, 1000)), zlib.gzipSync(tar.subarray(1000))]));
  assert.equal(members.diffId, (await tryGzip(gz)).diffId, 'a multi-member gzip is one stream');
});

test('header forms: a ustar prefix joins the name, a PAX global header is kept but not applied, GNU long names win', async () => {
  const prefixed = rawHeader({ name: 'file.txt', size: 2 });
  prefixed.write('some/deep/dir', 345, 'latin1');
  prefixed.write('        ', 148, 'latin1');
  let sum = 0;
  for (const b of prefixed) sum += b;
  prefixed.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  const globalBody = Buffer.from('18 path=evil/name\n');
  const global = Buffer.concat([rawHeader({ name: 'pax_global_header', type: 'g', size: globalBody.length }), globalBody, Buffer.alloc(512 - globalBody.length)]);
  const longName = `${'n'.repeat(150)}/x`;
  const longBody = Buffer.from(`${longName}\0`);
  const gnuLong = Buffer.concat([rawHeader({ name: '././@LongLink', type: 'L', size: longBody.length }), longBody, Buffer.alloc(512 - longBody.length)]);
  const tar = tarOf(global, prefixed, Buffer.from('ok'.padEnd(512, '\0')), gnuLong, fileEntry('truncated-name', 'y'));
  const blob = await convert(tar);
  const { entries } = await readToc(ranged(blob), blob.length);
  assert.deepEqual(
    entries.map((e) => e.name),
    ['.no.prefetch.landmark', 'some/deep/dir/file.txt', longName],
  );
  const plain = zlib.gunzipSync(blob);
  assert.ok(plain.includes(globalBody), 'the global header is still in the layer');
});

test('a failing conversion stops reading its source and closes it', async () => {
  let pulled = 0;
  let closed = false;
  async function* source() {
    try {
      yield tarOf(fileEntry('../escape', 'x'));
      for (;;) {
        pulled++;
        yield Buffer.alloc(512);
      }
    } finally {
      closed = true;
    }
  }
  await assert.rejects(
    convertLayer(source(), 'none', { chunkSize: 4096, prioritizedFiles: [] }, async () => {}),
    ConversionError,
  );
  assert.ok(closed);
  assert.equal(pulled, 0);
  const gz = zlib.gzipSync(tarOf(fileEntry('../escape', 'x')));
  closed = false;
  async function* gzSource() {
    try {
      yield gz;
      for (;;) yield zlib.gzipSync(Buffer.alloc(512));
    } finally {
      closed = true;
    }
  }
  await assert.rejects(
    convertLayer(gzSource(), 'gzip', { chunkSize: 4096, prioritizedFiles: [] }, async () => {}),
    ConversionError,
  );
  assert.ok(closed);
});
