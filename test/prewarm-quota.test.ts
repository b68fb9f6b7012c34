// The quota against the content it is meant to keep (issue #8 items 10 and 5): a prewarm must not report
// "ok" for an image the quota already took back, an image that cannot fit beside what is pinned is named
// and the exit code says so, a layer bigger than the whole quota is kept (with a loud warning) rather than
// evicted the moment it committed, and partial downloads under ingest/ count against storage.maxSize, the
// stale ones (no running fill owns them) removed when over it.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Writable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import pino from 'pino';
import type { UpstreamSpec } from './support/berth.ts';
import { describeRun, lsJson, runBerth, storedDigests, writeCliConfig } from './support/berth-cli.ts';
import { blobsOf, buildImage, type Image, pushImage } from './support/images.ts';
import { waitUntil } from './support/links.ts';
import { mountTmpfs, unmountUnder } from './support/mounts.ts';
import { fetchOutcome } from './support/outcome.ts';
import { committedPath } from './support/storage.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const _exec = promisify(execFile);

import { ConfigSchema } from '../src/config/schema.ts';
import { type Berth, createBerth } from '../src/server.ts';

const MiB = 1024 * 1024;

describe('prewarm and pulls under a quota too small for everything', () => {
  let up: Upstream;
  let work: string;
  let upstreams: UpstreamSpec[];
  /** lab/fit1..5:1, one 8 MiB layer each. */
  const fit: Image[] = [];
  /** lab/huge:1: one 30 MiB layer, bigger than the 20 MiB quota by itself. */
  let huge: Image;

  before(async () => {
    work = await makeTempDir('prewarm-quota');
    up = await startUpstream();
    upstreams = [{ host: 'docker.io', url: up.url }];
    for (let i = 1; i <= 5; i++) {
      const img = await buildImage({ format: 'oci', layers: [{ randomBytes: 8 * MiB, dir: work }] });
      await pushImage(up, `lab/fit${i}`, '1', img);
      fit.push(img);
    }
    huge = await buildImage({ format: 'oci', layers: [{ randomBytes: 30 * MiB, dir: work }] });
    await pushImage(up, 'lab/huge', '1', huge);
  });

  after(async () => {
    await up?.stop();
    if (work) await removeTempDir(work);
  });

  test('5 images of 8 MiB with maxSize 20MiB: each one reported ok is complete on disk, the rest are named and the exit is 1', async () => {
    const storage = path.join(work, 'five');
    const config = await writeCliConfig(path.join(work, 'five.yaml'), { storage, upstreams, maxSize: '20MiB' });
    const refs = fit.map((_, i) => `docker.io/lab/fit${i + 1}:1`);
    const args = ['prewarm', ...refs, '--config', config];
    const r = await runBerth(args);
    assert.equal(r.code, 1, `a prewarm that cannot fit everything must fail: ${describeRun(args, r)}`);
    const okCount = Number(/prewarmed (\d+) of 5/.exec(r.stdout)?.[1]);
    assert.equal(okCount, 2, describeRun(args, r));
    const failedLines = r.stdout.split('\n').filter((l) => l.startsWith('FAILED'));
    assert.equal(failedLines.length, 3, describeRun(args, r));
    for (const l of failedLines) assert.match(l, /maxSize/, `the failure says why: ${l}`);
    const stored = await storedDigests(storage);
    const rows = await lsJson(config);
    for (let i = 0; i < 5; i++) {
      const reported = !failedLines.some((l) => l.includes(`lab/fit${i + 1}:1`));
      const complete = blobsOf(fit[i]!).every((b) => stored.has(b.digest));
      if (reported) {
        assert.ok(complete, `lab/fit${i + 1}:1 was reported ok but is not all on disk`);
        assert.equal(rows.find((row) => row.reference === `docker.io/lab/fit${i + 1}:1`)?.pinned, true);
      }
    }
  });

  test('one image bigger than the whole quota is refused before anything is fetched, not reported ok with 0 bytes', async () => {
    const storage = path.join(work, 'huge');
    const config = await writeCliConfig(path.join(work, 'huge.yaml'), { storage, upstreams, maxSize: '20MiB' });
    const mark = up.logLineCount();
    const args = ['prewarm', 'docker.io/lab/huge:1', '--config', config];
    const r = await runBerth(args);
    assert.equal(r.code, 1, describeRun(args, r));
    assert.match(r.stdout, /FAILED docker\.io\/lab\/huge:1: .*maxSize/, describeRun(args, r));
    const layerGets = (await up.accessLogSince(mark)).filter((e) => e.method === 'GET' && e.path.includes(huge.layers[0]!.digest));
    assert.equal(layerGets.length, 0, 'the layer that cannot fit was not downloaded');
  });

  test('a pulled layer bigger than maxSize stays on disk with a warning, instead of being evicted the moment it commits', async () => {
    const storage = path.join(work, 'tiny-quota');
    const lines: string[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _enc, done) {
        lines.push(...chunk.toString('utf8').split('\n').filter(Boolean));
        done();
      },
    });
    const config = ConfigSchema.parse({ listen: '127.0.0.1:0', storage: { path: storage, maxSize: '4MiB' }, upstreams });
    const berth: Berth = await createBerth({ ...config, defaultUpstream: 'docker.io' }, pino({ level: 'info' }, sink));
    try {
      const base = `http://127.0.0.1:${(await berth.listen()).port}`;
      const layer = fit[0]!.layers[0]!;
      const got = await fetchOutcome(base, `/v2/lab/fit1/blobs/${layer.digest}`);
      assert.ok(got.complete && got.status === 200);
      const file = committedPath({ storage }, layer.digest);
      await waitUntil('the layer to be committed', () => existsSync(file), 10_000);
      await berth.quota.enforce();
      assert.ok(existsSync(file), 'the newest blob was evicted at once');
      const warn = lines.map((l) => JSON.parse(l) as { level: number; msg: string }).find((l) => l.level >= 40 && /maxSize/.test(l.msg));
      assert.ok(warn, `a warning names maxSize: ${lines.join('\n')}`);
    } finally {
      await berth.close();
    }
  });
});

describe('partial downloads and the quota', () => {
  let up: Upstream;
  let work: string;
  let img: Image;

  before(async () => {
    work = await makeTempDir('ingest-quota');
    up = await startUpstream();
    img = await buildImage({ format: 'oci', layers: [{ randomBytes: 8 * MiB, dir: work }] });
    await pushImage(up, 'lab/ingest', '1', img);
  });

  after(async () => {
    await up?.stop();
    if (work) await removeTempDir(work);
  });

  test('a stale 16 MiB partial under ingest/ counts against maxSize and is removed when a pull goes over it', async () => {
    const storage = path.join(work, 'storage');
    await mkdir(path.join(storage, 'ingest'), { recursive: true });
    const staleHex = randomBytes(32).toString('hex');
    const staleData = path.join(storage, 'ingest', `${staleHex}.data`);
    const staleMeta = path.join(storage, 'ingest', `${staleHex}.json`);
    await writeFile(staleData, randomBytes(16 * MiB));
    await writeFile(staleMeta, JSON.stringify({ size: 32 * MiB, extents: [[0, 16 * MiB - 1]] }));
    const config = ConfigSchema.parse({ listen: '127.0.0.1:0', storage: { path: storage, maxSize: '20MiB' }, upstreams: [{ host: 'docker.io', url: up.url }] });
    const berth = await createBerth({ ...config, defaultUpstream: 'docker.io' }, pino({ level: 'silent' }));
    try {
      const base = `http://127.0.0.1:${(await berth.listen()).port}`;
      for (const b of blobsOf(img)) {
        const r = await fetchOutcome(base, `/v2/lab/ingest/blobs/${b.digest}`);
        assert.ok(r.complete && r.status === 200);
      }
      const layerFile = committedPath({ storage }, img.layers[0]!.digest);
      await waitUntil('the layer to be committed', () => existsSync(layerFile), 10_000);
      await berth.quota.enforce();
      assert.ok(!existsSync(staleData) && !existsSync(staleMeta), 'the stale partial nobody owns was removed');
      assert.ok(existsSync(layerFile), 'the layer just pulled was kept');
    } finally {
      await berth.close();
    }
  });

  test('no maxSize, a full disk: the stale partials go, and the pull that hit ENOSPC succeeds when tried again', async () => {
    const mnt = path.join(work, 'small-fs');
    await mkdir(mnt);
    await mountTmpfs(mnt, '20m');
    try {
      const storage = path.join(mnt, 'storage');
      await mkdir(path.join(storage, 'ingest'), { recursive: true });
      const staleData = path.join(storage, 'ingest', `${randomBytes(32).toString('hex')}.data`);
      await writeFile(staleData, randomBytes(14 * MiB));
      const config = ConfigSchema.parse({ listen: '127.0.0.1:0', storage: { path: storage }, retries: { attempts: 1, backoff: '10ms' }, upstreams: [{ host: 'docker.io', url: up.url }] });
      const berth = await createBerth({ ...config, defaultUpstream: 'docker.io' }, pino({ level: 'silent' }));
      try {
        const base = `http://127.0.0.1:${(await berth.listen()).port}`;
        const layer = img.layers[0]!;
        const first = await fetchOutcome(base, `/v2/lab/ingest/blobs/${layer.digest}`);
        assert.ok(!(first.complete && first.status === 200 && first.body.length !== layer.size), 'never a clean short body');
        await waitUntil('the stale partial to be removed', () => !existsSync(staleData), 15_000, 100);
        const again = await waitUntil(
          'a pull to succeed once space was freed',
          async () => {
            const r = await fetchOutcome(base, `/v2/lab/ingest/blobs/${layer.digest}`);
            return r.complete && r.status === 200 ? r : undefined;
          },
          15_000,
          200,
        );
        assert.equal(again.body.length, layer.size);
      } finally {
        await berth.close();
      }
    } finally {
      await unmountUnder(mnt);
    }
  });
});
