// Amplification (issue #8, item 14): what one client can make berth ask of the upstream. 500 concurrent
// HEADs of one uncached blob are one upstream HEAD (or a few); one request of 256 ranges on a cold blob is
// a few upstream GETs, not one (or two) per range; a Range whose last byte lies past the end is clamped to
// the end (RFC 9110 §14.1.1), however many digits it has. Upstream requests are counted in its access log.
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { after, before, describe, test } from 'node:test';
import { type InProcessBerth, startBerth } from './support/berth.ts';
import { buildImage, type Image, MediaTypes, pushImage } from './support/images.ts';
import { parseByteranges } from './support/links.ts';
import { describeOutcome, fetchOutcome } from './support/outcome.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const MB = 1_000_000;

let up: Upstream;
let b: InProcessBerth;
let work: string;
const images: Record<string, Image> = {};
const cleanups: Array<() => Promise<unknown>> = [];

before(async () => {
  work = await makeTempDir('range-amplification');
  up = await startUpstream();
  for (const repo of ['lab/heads', 'lab/ranges', 'lab/clamp']) {
    images[repo] = await buildImage({ format: 'oci', layers: [{ randomBytes: 8 * MB, dir: work }] });
    await pushImage(up, repo, '1', images[repo]!);
  }
  // on-demand: nothing but what the clients ask for reaches the upstream
  b = await startBerth({ upstreams: [{ host: up.host, url: up.url }], lazyFill: 'on-demand' });
  cleanups.push(() => b.stop());
});

after(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
  await up?.stop();
  if (work) await removeTempDir(work);
});

const layer = (repo: string) => images[repo]!.layers[0]!;
const blobRequests = (mark: number, method: string, digest: string) => up.accessLogSince(mark).filter((e) => e.method === method && e.path.split('?')[0]!.endsWith(`/blobs/${digest}`));

describe('what one client can make berth ask of the upstream', () => {
  test('500 concurrent HEADs of one uncached blob make one upstream HEAD (or a few), and all answer its size', async () => {
    const { digest, size } = layer('lab/heads');
    const mark = up.logLineCount();
    const all = await Promise.all(Array.from({ length: 500 }, () => fetchOutcome(b.url, `/v2/lab/heads/blobs/${digest}`, { method: 'HEAD', timeoutMs: 30_000 })));
    for (const r of all) {
      assert.equal(r.status, 200, describeOutcome(r));
      assert.equal(Number(r.headers!['content-length']), size);
    }
    await up.waitForAccess((e) => e.some((x) => x.method === 'HEAD'), { since: mark });
    await new Promise((ok) => setTimeout(ok, 300)); // the registry logs a line after each response
    const heads = blobRequests(mark, 'HEAD', digest).length;
    assert.ok(heads <= 3, `500 HEADs made ${heads} upstream HEADs`);
  });

  test('one request of 256 ranges on a cold blob makes a few upstream GETs and answers every range right', async () => {
    const blob = layer('lab/ranges');
    const bytes = await readFile(blob.path!);
    const m = await fetchOutcome(b.url, '/v2/lab/ranges/manifests/1', { headers: { accept: MediaTypes.oci.manifest } });
    assert.equal(m.status, 200);
    const ranges: Array<[number, number]> = [];
    for (let i = 0; i < 256; i++) {
      const start = i * 30_000;
      ranges.push([start, start + 99]);
    }
    const mark = up.logLineCount();
    const r = await fetchOutcome(b.url, `/v2/lab/ranges/blobs/${blob.digest}`, { headers: { range: `bytes=${ranges.map(([s, e]) => `${s}-${e}`).join(',')}` }, timeoutMs: 60_000 });
    assert.equal(r.status, 206, describeOutcome(r));
    const parts = parseByteranges(String(r.headers!['content-type']), r.body);
    assert.equal(parts.length, 256);
    for (const [i, p] of parts.entries()) assert.ok(p.body.equals(bytes.subarray(ranges[i]![0], ranges[i]![1] + 1)), `part ${i} has the blob's bytes`);
    await new Promise((ok) => setTimeout(ok, 300));
    const gets = blobRequests(mark, 'GET', blob.digest).length;
    assert.ok(gets >= 1 && gets <= 16, `one 256-range request made ${gets} upstream GETs`);
  });

  test('a last byte past the end, with more digits than a safe integer, is clamped to the end', async () => {
    const blob = layer('lab/clamp');
    const bytes = await readFile(blob.path!);
    for (const [range, start] of [
      ['bytes=4999999-99999999999999999', 4_999_999],
      ['bytes=7000000-999999999999999999999999999999', 7_000_000],
      ['bytes=-99999999999999999999', 0],
    ] as const) {
      const r = await fetchOutcome(b.url, `/v2/lab/clamp/blobs/${blob.digest}`, { headers: { range }, timeoutMs: 30_000 });
      if (start === 0) {
        // a suffix longer than the blob is the whole blob, as a 206 of every byte
        assert.ok(r.status === 206 || r.status === 200, `${range}: ${describeOutcome(r)}`);
      } else {
        assert.equal(r.status, 206, `${range}: ${describeOutcome(r)}`);
        assert.equal(r.headers!['content-range'], `bytes ${start}-${blob.size - 1}/${blob.size}`);
      }
      assert.ok(r.body.equals(bytes.subarray(start)), `${range}: the bytes from ${start} to the end`);
    }
    const huge = await fetchOutcome(b.url, `/v2/lab/clamp/blobs/${blob.digest}`, { headers: { range: 'bytes=99999999999999999999-' } });
    assert.ok(huge.status === 400 || huge.status === 416, `a first byte past 2^53 is a 4xx: ${describeOutcome(huge)}`);
  });
});
