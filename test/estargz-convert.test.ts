// The eStargz layer converter (src/estargz/convert-layer.ts) on real layers archived by GNU tar: the
// result is the same tar file for file, every TOC digest matches the bytes a reader decompresses at the
// TOC's offset, the footer points at the TOC, the same input gives the same bytes, prioritised files come
// first, and hostile layers fail with a ConversionError, promptly.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, open, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import zlib from 'node:zlib';
import { convertLayer, isEstargzFooter, parseFooter } from '../src/estargz/convert-layer.ts';
import { filesInRanges, prefetchSize, readToc } from '../src/estargz/toc.ts';
import { ConversionError, type ConvertedLayer, type TocEntry } from '../src/estargz/types.ts';
import { type BuiltLayer, buildTree, type EntrySummary, fileEntry, paxHeader, rawHeader, summariseTar, tarOf, tarTree } from './support/layers.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';

const CHUNK = 4 << 20;
const BIG = 150 << 20;
const ADDED = new Set(['.no.prefetch.landmark', '.prefetch.landmark', 'stargz.index.json']);

let dir: string;
let bigLayer: BuiltLayer; // posix (pax) format, bare names, gzip, with the 150 MiB file
let gnuTar: BuiltLayer; // gnu format, ./ names, uncompressed, no big file
let gnuGz: BuiltLayer;

interface Converted extends ConvertedLayer {
  file: string;
}

async function convertToFile(layer: BuiltLayer, name: string, prioritizedFiles: string[] = []): Promise<Converted> {
  const file = path.join(dir, name);
  const out = createWriteStream(file);
  const r = await convertLayer(
    createReadStream(layer.path, { highWaterMark: 256 << 10 }),
    layer.compression,
    { chunkSize: CHUNK, prioritizedFiles },
    (b) => new Promise<void>((resolve, reject) => out.write(b, (err) => (err ? reject(err) : resolve()))),
  );
  await new Promise<void>((resolve) => out.end(resolve));
  return { ...r, file };
}

const fileRange = (file: string) => async (start: number, end: number) => {
  const fh = await open(file, 'r');
  try {
    const b = Buffer.alloc(end - start);
    await fh.read(b, 0, b.length, start);
    return b;
  } finally {
    await fh.close();
  }
};

const sha256 = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const summary = (file: string, gzip: boolean) => summariseTar(gzip ? createReadStream(file).pipe(zlib.createGunzip()) : createReadStream(file));
const withoutAdded = (s: EntrySummary[]) => s.filter((e) => !ADDED.has(e.name));

/** Every chunk's bytes, decompressed from a gunzip started at its member's offset, against the TOC. */
async function verifyChunks(file: string, entries: TocEntry[], tocOffset: number): Promise<number> {
  const read = fileRange(file);
  const data = entries.filter((e) => e.offset !== undefined);
  const fileHashes = new Map<string, ReturnType<typeof createHash>>();
  let checked = 0;
  for (const [i, e] of data.entries()) {
    const next = i + 1 < data.length ? data[i + 1]!.offset! : tocOffset;
    const reg = e.type === 'reg' ? e : entries.find((x) => x.name === e.name && x.type === 'reg')!;
    const length = e.chunkSize || reg.size! - (e.chunkOffset ?? 0);
    // gunzipSync of [offset, next) decompresses the chunk's member and any header members after it.
    const bytes = zlib.gunzipSync(await read(e.offset!, next)).subarray(0, length);
    assert.equal(bytes.length, length, `${e.name}@${e.chunkOffset ?? 0}: short member`);
    assert.equal(sha256(bytes), e.chunkDigest, `${e.name}@${e.chunkOffset ?? 0}: chunkDigest`);
    if (e.type === 'reg') fileHashes.set(e.name, createHash('sha256'));
    fileHashes.get(e.name)!.update(bytes);
    checked++;
  }
  for (const [name, h] of fileHashes) assert.equal(`sha256:${h.digest('hex')}`, entries.find((x) => x.name === name && x.type === 'reg')!.digest, `${name}: digest`);
  return checked;
}

before(async () => {
  dir = await makeTempDir('estargz-convert');
  await buildTree(path.join(dir, 'big'), { smallFiles: 3000, bigFileBytes: BIG });
  bigLayer = await tarTree(path.join(dir, 'big'), path.join(dir, 'big.tar.gz'), { gzip: true, format: 'posix' });
  await buildTree(path.join(dir, 'small'), { smallFiles: 300 });
  gnuGz = await tarTree(path.join(dir, 'small'), path.join(dir, 'small.tar.gz'), { gzip: true, format: 'gnu' });
  // The same tar uncompressed (GNU tar's own output differs run to run in the gnu format's atime fields).
  const tarFile = path.join(dir, 'small.tar');
  await writeFile(tarFile, zlib.gunzipSync(await readFile(gnuGz.path)));
  gnuTar = { path: tarFile, compression: 'none', digest: gnuGz.diffId, diffId: gnuGz.diffId, size: (await stat(tarFile)).size };
});

after(async () => {
  if (dir) await removeTempDir(dir);
});

describe('a gzip layer of 3000 small files, links, devices, xattrs and a 150 MiB file', () => {
  let r: Converted;
  let toc: Awaited<ReturnType<typeof readToc>>;
  before(async () => {
    const t = Date.now();
    const cpu = process.cpuUsage();
    r = await convertToFile(bigLayer, 'big.esgz');
    const used = process.cpuUsage(cpu);
    const seconds = (used.user + used.system) / 1e6;
    console.log(
      `converted ${(bigLayer.size / 1e6).toFixed(1)} MB gzip (${(r.uncompressedSize / 1e6).toFixed(1)} MB tar) in ${(Date.now() - t) / 1000}s wall, ${seconds.toFixed(1)}s CPU: ` +
        `${(bigLayer.size / 1e6 / seconds).toFixed(1)} MB/s of source per core, ${(r.uncompressedSize / 1e6 / seconds).toFixed(1)} MB/s uncompressed`,
    );
    toc = await readToc(fileRange(r.file), r.size);
  });

  test('the gunzipped output is the original tar file for file, plus the landmark and the TOC', async () => {
    const [orig, conv] = await Promise.all([summary(bigLayer.path, true), summary(r.file, true)]);
    assert.equal(conv[0]!.name, '.no.prefetch.landmark');
    assert.equal(conv.at(-1)!.name, 'stargz.index.json');
    assert.equal(conv.length, orig.length + 2);
    assert.deepEqual(withoutAdded(conv), orig);
    const names = new Set(orig.map((e) => e.name));
    for (const n of ['wh/.wh.removed', 'wh/opaque/.wh..wh..opq', 'links/hard2', 'odd/null', 'odd/fifo', 'big/blob.bin']) assert.ok(names.has(n), n);
    assert.ok(orig.some((e) => e.name.length > 100));
    assert.ok(orig.find((e) => e.name === 'odd/ping')!.xattrs['SCHILY.xattr.user.berth']);
  });

  test('diffId and uncompressedSize are those of the gunzipped output; digest and size those of the bytes', async () => {
    const h = createHash('sha256');
    let n = 0;
    for await (const b of createReadStream(r.file).pipe(zlib.createGunzip())) {
      h.update(b as Buffer);
      n += (b as Buffer).length;
    }
    assert.equal(r.diffId, `sha256:${h.digest('hex')}`);
    assert.equal(r.uncompressedSize, n);
    assert.equal(r.size, (await stat(r.file)).size);
    assert.equal(r.digest, sha256(await readFile(r.file)));
  });

  test('the footer is 51 bytes naming the TOC member, which holds stargz.index.json with the tocDigest', async () => {
    const footer = await fileRange(r.file)(r.size - 51, r.size);
    assert.ok(isEstargzFooter(footer));
    assert.equal(footer.toString('latin1', 16, 38), `${toc.tocOffset.toString(16).padStart(16, '0')}STARGZ`);
    assert.equal(parseFooter(footer).tocOffset, toc.tocOffset);
    const tocTar = zlib.gunzipSync(await fileRange(r.file)(toc.tocOffset, r.size - 51));
    assert.equal(tocTar.toString('latin1', 0, 17), 'stargz.index.json');
    const json = tocTar.subarray(512, 512 + Number.parseInt(tocTar.toString('latin1', 124, 135), 8));
    assert.equal(sha256(json), r.tocDigest);
    assert.equal(toc.tocDigest, r.tocDigest);
    assert.equal(JSON.parse(json.toString()).version, 1);
    assert.ok(!isEstargzFooter(await fileRange(bigLayer.path)(bigLayer.size - 51, bigLayer.size)), 'a plain gzip layer has no footer');
  });

  test('every chunkDigest and digest in the TOC matches the bytes decompressed at its offset', async () => {
    const checked = await verifyChunks(r.file, toc.entries, toc.tocOffset);
    const big = toc.entries.filter((e) => e.name === 'big/blob.bin');
    assert.equal(big.length, Math.ceil(BIG / CHUNK));
    assert.deepEqual(
      big.map((e) => e.type),
      ['reg', ...Array(big.length - 1).fill('chunk')],
    );
    assert.ok(checked > 3000, `${checked} members checked`);
  });

  test('the TOC carries each entry as the tar has it (type, mode, owner, link, devices, xattrs)', async () => {
    const orig = await summary(bigLayer.path, true);
    const byName = new Map(toc.entries.filter((e) => e.type !== 'chunk').map((e) => [e.name, e]));
    for (const o of orig) {
      const e = byName.get(o.name.replace(/\/$/, ''));
      assert.ok(e, o.name);
      assert.equal(e.mode ?? 0, o.mode, `${o.name} mode`);
      assert.equal(e.uid ?? 0, o.uid, `${o.name} uid`);
      assert.equal(e.gid ?? 0, o.gid, `${o.name} gid`);
      if (o.type === 'file') assert.equal(e.size ?? 0, o.size);
    }
    assert.equal(byName.get('links/hard2')!.type, 'hardlink');
    assert.equal(byName.get('links/hard2')!.linkName, 'links/hard1');
    assert.equal(byName.get('links/sym-up')!.linkName, '../etc/passwd');
    assert.deepEqual([byName.get('odd/loop9')!.type, byName.get('odd/loop9')!.devMajor, byName.get('odd/loop9')!.devMinor], ['block', 7, 9]);
    assert.equal(byName.get('odd/fifo')!.type, 'fifo');
    assert.equal(byName.get('odd/owned')!.uid, 1000);
    assert.equal(byName.get('odd/sticky')!.mode, 0o1777);
    assert.equal(byName.get('odd/setuid')!.mode, 0o4755);
    const xattrs = byName.get('odd/ping')!.xattrs!;
    assert.equal(Buffer.from(xattrs['security.capability']!, 'base64').toString('hex'), '0100000200200000000000000000000000000000');
    assert.deepEqual(Buffer.from(xattrs['user.berth']!, 'base64'), Buffer.from('v\0al'));
    assert.equal(toc.entries[0]!.name, '.no.prefetch.landmark');
    assert.equal(prefetchSize(toc.entries), 0);
    const landmark = zlib.gunzipSync(await fileRange(r.file)(toc.entries[0]!.offset!, toc.entries[1]!.offset ?? toc.entries.find((e, i) => i > 0 && e.offset)!.offset!));
    assert.equal(landmark[0], 0x0f);
  });
});

describe('a GNU-format layer with ./ names', () => {
  test('uncompressed: converts file for file, TOC names cleaned, the long name kept', async () => {
    const r = await convertToFile(gnuTar, 'gnu.esgz');
    const [orig, conv] = await Promise.all([summary(gnuTar.path, false), summary(r.file, true)]);
    assert.deepEqual(withoutAdded(conv), orig);
    assert.ok(orig.every((e) => e.name.startsWith('./')));
    const toc = await readToc(fileRange(r.file), r.size);
    assert.ok(toc.entries.every((e) => !e.name.startsWith('./') && !e.name.startsWith('/')));
    assert.ok(toc.entries.some((e) => e.name.endsWith('a-file-whose-full-path-is-well-over-one-hundred-characters-long.txt') && e.name.length > 100));
    await verifyChunks(r.file, toc.entries, toc.tocOffset);
  });

  test('converting twice gives the same bytes; gzip and uncompressed sources give the same layer', async () => {
    const [a, b, c] = [await convertToFile(gnuGz, 'd1.esgz'), await convertToFile(gnuGz, 'd2.esgz'), await convertToFile(gnuTar, 'd3.esgz')];
    assert.equal(a.digest, b.digest);
    assert.deepEqual(await readFile(a.file), await readFile(b.file));
    assert.equal(a.digest, c.digest);
    assert.equal(a.diffId, c.diffId);
  });

  test('prioritised files come first in the given order, with their directories and hardlink targets, then .prefetch.landmark', async () => {
    const wanted = ['odd/ping', 'links/hard2', './usr/share/small/d01/f0150.txt', 'not/in/this/layer'];
    const r = await convertToFile(gnuGz, 'prio.esgz', wanted);
    const toc = await readToc(fileRange(r.file), r.size);
    const names = toc.entries.filter((e) => e.type !== 'chunk').map((e) => e.name);
    const landmark = names.indexOf('.prefetch.landmark');
    assert.deepEqual(names.slice(0, landmark + 1), [
      '',
      'odd',
      'odd/ping',
      'links',
      'links/hard1',
      'links/hard2',
      'usr',
      'usr/share',
      'usr/share/small',
      'usr/share/small/d01',
      'usr/share/small/d01/f0150.txt',
      '.prefetch.landmark',
    ]);
    assert.ok(!names.includes('.no.prefetch.landmark'));
    const size = prefetchSize(toc.entries);
    assert.equal(size, toc.entries.find((e) => e.name === '.prefetch.landmark')!.offset);
    assert.deepEqual(filesInRanges(toc.entries, [[0, size]], toc.tocOffset), ['odd/ping', 'links/hard1', 'usr/share/small/d01/f0150.txt']);
    // The same entries (in another order), every digest right, and GNU tar extracts it (hardlink after its target).
    const [orig, conv] = await Promise.all([summary(gnuGz.path, true), summary(r.file, true)]);
    const byName = (a: EntrySummary, b: EntrySummary) => (a.name < b.name ? -1 : 1);
    assert.deepEqual(withoutAdded(conv).sort(byName), orig.sort(byName));
    await verifyChunks(r.file, toc.entries, toc.tocOffset);
    const x = path.join(dir, 'extract');
    await mkdir(x);
    execFileSync('tar', ['-xzf', r.file, '-C', x]);
    assert.equal((await stat(path.join(x, 'links/hard2'))).ino, (await stat(path.join(x, 'links/hard1'))).ino);
    const again = await convertToFile(gnuGz, 'prio2.esgz', wanted);
    assert.equal(again.digest, r.digest);
  });
});

describe('hostile layers fail with a ConversionError, promptly', () => {
  const expectFailure = async (what: string, bytes: Buffer, compression: 'gzip' | 'none', message: RegExp) => {
    const t = Date.now();
    await assert.rejects(
      convertLayer(
        (async function* () {
          yield bytes;
        })(),
        compression,
        { chunkSize: CHUNK, prioritizedFiles: [] },
        async () => {},
      ),
      (err: Error) => {
        assert.ok(err instanceof ConversionError, `${what}: ${err}`);
        assert.match(err.message, message, what);
        return true;
      },
    );
    assert.ok(Date.now() - t < 5000, `${what} took ${Date.now() - t} ms`);
  };
  const gz = (b: Buffer) => zlib.gzipSync(b);

  test('bytes that are not gzip, and not tar', async () => {
    const random = Buffer.alloc(100_000);
    for (let i = 0; i < random.length; i++) random[i] = (i * 2654435761) >>> 24;
    await expectFailure('random as gzip', random, 'gzip', /not a valid gzip stream/);
    await expectFailure('random as tar', random, 'none', /not a tar stream/);
    await expectFailure('gzip of random', gz(random), 'gzip', /not a tar stream/);
    await expectFailure('empty', Buffer.alloc(0), 'gzip', /empty|gzip/);
  });

  test('a truncated gzip and a corrupted one', async () => {
    const whole = await readFile(gnuGz.path);
    await expectFailure('truncated', whole.subarray(0, Math.floor(whole.length / 2)), 'gzip', /not a valid gzip stream|ends inside/);
    await expectFailure('truncated at the trailer', whole.subarray(0, whole.length - 4), 'gzip', /not a valid gzip stream/);
    const corrupt = Buffer.from(whole);
    for (let i = 1000; i < 1100; i++) corrupt[i] = corrupt[i]! ^ 0x55;
    await expectFailure('corrupted', corrupt, 'gzip', /not a valid gzip stream|not a tar|ends inside/);
  });

  test('absurd header fields', async () => {
    await expectFailure('size garbage', gz(tarOf(rawHeader({ name: 'f', sizeField: Buffer.from('zzzzzzzzzzz\0') }))), 'gzip', /size is not a number/);
    const huge = Buffer.alloc(12);
    huge[0] = 0x80;
    huge.writeUInt32BE(0xffffffff, 4);
    huge.writeUInt32BE(0xffffffff, 8);
    await expectFailure('size past 2^53', tarOf(rawHeader({ name: 'f', sizeField: huge })), 'none', /out of range/);
    const negative = Buffer.alloc(12, 0xff);
    await expectFailure('negative size', tarOf(rawHeader({ name: 'f', sizeField: negative })), 'none', /negative/);
    await expectFailure('size past the end', tarOf(rawHeader({ name: 'f', size: 1 << 30 })), 'none', /ends inside/);
    await expectFailure('PAX path with a NUL', tarOf(paxHeader({ path: 'etc/pass\0wd' }), fileEntry('x', 'x')), 'none', /NUL/);
    await expectFailure('PAX size garbage', tarOf(paxHeader({ size: '12abc' }), fileEntry('x', 'x')), 'none', /PAX size/);
    await expectFailure('sparse', tarOf(rawHeader({ name: 's', type: 'S' })), 'none', /sparse/);
  });

  test('names and hardlinks that climb out of the root', async () => {
    await expectFailure('../etc/passwd', gz(tarOf(fileEntry('../etc/passwd', 'root::0:0::/:/bin/sh\n'))), 'gzip', /escapes the layer's root/);
    await expectFailure('a/../../x', tarOf(fileEntry('a/../../x', 'x')), 'none', /escapes/);
    await expectFailure('hardlink to ../x', tarOf(fileEntry('x', 'x'), rawHeader({ name: 'h', type: '1', linkname: '../x' })), 'none', /hardlink target .* escapes/);
    await expectFailure('PAX path ..', tarOf(paxHeader({ path: '../../root/.ssh/authorized_keys' }), fileEntry('ok', 'k')), 'none', /escapes/);
  });

  test('absolute and ./ names are taken relative to the root', async () => {
    const chunks: Buffer[] = [];
    const r = await convertLayer(
      (async function* () {
        yield tarOf(fileEntry('/etc/hostname', 'h\n'), fileEntry('./a/./b', 'b'));
      })(),
      'none',
      { chunkSize: CHUNK, prioritizedFiles: [] },
      async (b) => {
        chunks.push(b);
      },
    );
    const blob = Buffer.concat(chunks);
    const toc = await readToc(async (s, e) => blob.subarray(s, e), r.size);
    assert.deepEqual(
      toc.entries.map((e) => e.name),
      ['.no.prefetch.landmark', 'etc/hostname', 'a/b'],
    );
  });

  test('an abort stops the conversion promptly', async () => {
    const ac = new AbortController();
    let sent = 0;
    const t = Date.now();
    await assert.rejects(
      convertLayer(
        createReadStream(bigLayer.path),
        'gzip',
        { chunkSize: CHUNK, prioritizedFiles: [] },
        async (b) => {
          sent += b.length;
          if (sent > 5e6) ac.abort();
        },
        ac.signal,
      ),
      (err: Error) => err.name === 'AbortError',
    );
    assert.ok(Date.now() - t < 10_000);
    assert.ok(sent < 30e6, `${sent} bytes sent after the abort`);
  });
});
