// A full disk (issue #8, item 5): a fill that runs out of space is cut, records only what is really on
// disk (never a hole that a later Range would serve as zeros), and removes its partial data (a partial that
// cannot be completed only holds space); GETs of digests the upstream does not have leave no files behind.
// Real docker-registry upstream, berth's storage on a small tmpfs (we are root), umounted in `after`.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, readdir, readFile, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { type InProcessBerth, startBerth } from './support/berth.ts';
import { buildImage, type Image, MediaTypes, pushImage } from './support/images.ts';
import { waitUntil } from './support/links.ts';
import { fillUp, mountTmpfs, unmountUnder } from './support/mounts.ts';
import { describeOutcome, fetchOutcome } from './support/outcome.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const run = promisify(execFile);
const MB = 1_000_000;

let up: Upstream;
let work: string;
let mnt: string;
let b: InProcessBerth;
let big: Image;
let small: Image;
const cleanups: Array<() => Promise<unknown>> = [];

before(async () => {
  work = await makeTempDir('disk-full');
  up = await startUpstream();
  big = await buildImage({ format: 'oci', layers: [{ randomBytes: 30 * MB, dir: work }] });
  await pushImage(up, 'lab/big', '1', big);
  small = await buildImage({ format: 'oci', layers: [{ randomBytes: 2 * MB, dir: work }] });
  await pushImage(up, 'lab/small', '1', small);
  mnt = path.join(work, 'fs');
  await mkdir(mnt);
  await mountTmpfs(mnt, '20m');
  cleanups.push(() => unmountUnder(mnt));
  b = await startBerth({ upstreams: [{ host: up.host, url: up.url }], storage: path.join(mnt, 'storage') });
  cleanups.push(() => b.stop());
});

after(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
  await up?.stop();
  if (work) await removeTempDir(work);
});

const ingestFiles = async () => readdir(path.join(b.storage, 'ingest')).catch(() => [] as string[]);

describe('a storage filesystem that fills up', () => {
  test('a fill that runs out of space is cut, claims no byte it does not hold, leaves no partial, and a later Range gets the right bytes', async () => {
    const layer = big.layers[0]!;
    const bytes = await readFile(layer.path!);
    const m = await fetchOutcome(b.url, '/v2/lab/big/manifests/1', { headers: { accept: MediaTypes.oci.manifest } });
    assert.equal(m.status, 200);
    const r = await fetchOutcome(b.url, `/v2/lab/big/blobs/${layer.digest}`, { timeoutMs: 60_000 });
    assert.ok(!(r.complete && r.status === 200), `30 MB cannot fit into 20 MB, yet: ${describeOutcome(r)}`);
    await waitUntil('the failed fill to end', () => b.berth.fills.all().length === 0, 20_000);
    // Whatever stays in ingest/ must not claim more than is there.
    for (const name of (await ingestFiles()).filter((n) => n.endsWith('.json'))) {
      const meta = JSON.parse(await readFile(path.join(b.storage, 'ingest', name), 'utf8')) as { extents: Array<[number, number]> };
      const data = await stat(path.join(b.storage, 'ingest', name.replace(/\.json$/, '.data')));
      for (const [, end] of meta.extents) assert.ok(end <= data.size, `the checkpoint claims bytes up to ${end}, the data file holds ${data.size}`);
    }
    const left = await waitUntil('the partial data to be removed', async () => ((await ingestFiles()).length === 0 ? [] : false), 5_000).catch(async () => ingestFiles());
    assert.deepEqual(left, [], 'a fill that failed for a full disk leaves its partial data behind');

    await run('mount', ['-o', 'remount,size=200m', mnt]);
    // Just below where the first attempt's disk ran out: bytes a wrong checkpoint would claim as there.
    const at = 19 * MB;
    const ranged = await fetchOutcome(b.url, `/v2/lab/big/blobs/${layer.digest}`, { headers: { range: `bytes=${at}-${at + 65535}` }, timeoutMs: 30_000 });
    assert.equal(ranged.status, 206, describeOutcome(ranged));
    assert.ok(ranged.body.equals(bytes.subarray(at, at + 65536)), "the Range after space returned has the blob's bytes");
    await run('mount', ['-o', 'remount,size=20m', mnt]).catch(() => undefined);
  });

  test('GETs of digests the upstream does not have leave no files under ingest/', async () => {
    for (let i = 0; i < 50; i++) {
      const digest = `sha256:${i.toString(16).padStart(4, '0')}${'0'.repeat(60)}`;
      const r = await fetchOutcome(b.url, `/v2/lab/big/blobs/${digest}`, { timeoutMs: 10_000 });
      assert.equal(r.status, 404, describeOutcome(r));
    }
    await waitUntil('the failed fills to end', () => b.berth.fills.all().length === 0, 10_000);
    const dataFiles = async () => (await ingestFiles()).filter((n) => n.endsWith('.data'));
    const left = await waitUntil('the empty data files to be removed', async () => ((await dataFiles()).length === 0 ? [] : false), 5_000).catch(dataFiles);
    assert.deepEqual(left, [], `${left.length} empty ingest files after 50 GETs of unknown digests`);
  });

  test('on a disk already full, a GET of an uncached blob is a 503 that says "disk full", before any header of a 200', async () => {
    const filler = path.join(mnt, 'filler');
    await fillUp(filler);
    try {
      const layer = small.layers[0]!;
      const r = await fetchOutcome(b.url, `/v2/lab/small/blobs/${layer.digest}`, { timeoutMs: 30_000 });
      assert.equal(r.status, 503, describeOutcome(r));
      assert.match(r.body.toString(), /disk full/);
      const ranged = await fetchOutcome(b.url, `/v2/lab/small/blobs/${layer.digest}`, { headers: { range: 'bytes=1000-1999' }, timeoutMs: 30_000 });
      assert.equal(ranged.status, 503, `a Range on a full disk: ${describeOutcome(ranged)}`);
    } finally {
      await rm(filler, { force: true });
    }
  });
});
