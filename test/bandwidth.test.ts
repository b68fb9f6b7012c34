// The bandwidth budget (issue #3, "metered links"): berth never reads from its upstreams faster than the
// configured limit — globally or per upstream — and bytes a client is waiting for go before background
// work, so a background completion that saturates the budget does not hold up a pull. These tests check
// behaviour (lower bounds, ordering), not speed.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { type BerthOptions, type InProcessBerth, startBerth } from './support/berth.ts';
import { type Blob, buildImage, type Image, MediaTypes, pushImage } from './support/images.ts';
import { httpRequest, metricValue, sha256, waitUntil } from './support/links.ts';
import { committed } from './support/storage.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const MiB = 1024 * 1024;
const LIMIT = 4 * MiB;

let up: Upstream;
let work: string;
let first: Image; // one 12 MiB layer
let second: Image; // another 12 MiB layer
let background: Image; // one 16 MiB layer
let small: Image; // a manifest and a 1 MiB layer a client waits for
const cleanups: Array<() => Promise<unknown>> = [];

before(async () => {
  work = await makeTempDir('bandwidth');
  up = await startUpstream();
  first = await buildImage({ format: 'oci', layers: [{ randomBytes: 12 * MiB, dir: work }] });
  second = await buildImage({ format: 'oci', layers: [{ randomBytes: 12 * MiB, dir: work }] });
  background = await buildImage({ format: 'oci', layers: [{ randomBytes: 16 * MiB, dir: work }] });
  small = await buildImage({ format: 'oci', layers: [{ randomBytes: 1 * MiB, dir: work }] });
  await pushImage(up, 'lab/first', '1', first);
  await pushImage(up, 'lab/second', '1', second);
  await pushImage(up, 'lab/background', '1', background);
  await pushImage(up, 'lab/small', '1', small);
});

after(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
  await up?.stop();
  if (work) await removeTempDir(work);
});

async function berthWith(o: BerthOptions): Promise<InProcessBerth> {
  const b = await startBerth(o);
  cleanups.push(() => b.stop());
  return b;
}

const layerOf = (img: Image): Blob => img.layers[0]!;

/**
 * The least time a token bucket at `rate` can pass `size` bytes in: it starts full (a burst of rate/20, at
 * least 64 KiB) and may overdraw by one chunk read from the socket.
 */
function minimumMs(size: number, rate: number): number {
  const burst = Math.max(64 * 1024, rate / 20);
  return ((size - burst - 256 * 1024) / rate) * 1000;
}

async function getWhole(b: InProcessBerth, pathPrefix: string, blob: Blob): Promise<number> {
  const res = await httpRequest(b.url, `/v2/${pathPrefix}/blobs/${blob.digest}`);
  assert.equal(res.status, 200);
  assert.equal(sha256(res.body), blob.digest);
  return res.totalMs;
}

describe('bandwidth budget', () => {
  test('with a global limit of 4 MiB/s a 12 MiB layer takes at least size/limit to arrive', async () => {
    const blob = layerOf(first);
    const berth = await berthWith({ bandwidth: { limit: '4MiB/s' }, upstreams: [{ host: up.host, url: up.url }] });
    const ms = await getWhole(berth, 'lab/first', blob);
    assert.ok(ms >= minimumMs(blob.size, LIMIT), `${blob.size} bytes arrived in ${Math.round(ms)} ms; the limit allows no less than ${Math.round(minimumMs(blob.size, LIMIT))} ms`);
    assert.equal(await metricValue(berth.url, 'berth_upstream_bytes_total', { priority: 'foreground' }), blob.size, 'a client waited for every byte: all foreground');
  });

  test('a per-upstream limit holds that upstream to its rate and leaves the other upstream unlimited', async () => {
    // the same registry twice, under two names: 127.0.0.1:PORT (limited) and localhost:PORT (unlimited)
    const other = `localhost:${up.port}`;
    const berth = await berthWith({
      upstreams: [
        { host: up.host, url: up.url, bandwidth: '4MiB/s' },
        { host: other, url: up.url },
      ],
    });
    const limited = layerOf(first);
    const free = layerOf(second);
    const limitedMs = await getWhole(berth, `${up.host}/lab/first`, limited);
    assert.ok(limitedMs >= minimumMs(limited.size, LIMIT), `limited upstream: ${Math.round(limitedMs)} ms for ${limited.size} bytes`);
    const freeMs = await getWhole(berth, `${other}/lab/second`, free);
    assert.ok(freeMs < minimumMs(free.size, LIMIT) / 2, `the other upstream is not held to that limit (${Math.round(freeMs)} ms for ${free.size} bytes)`);
  });

  test('while a background completion saturates the budget, a manifest and a layer a client waits for are served before it finishes, and /metrics tells the two priorities apart', async () => {
    const berth = await berthWith({ bandwidth: { limit: '2MiB/s' }, upstreams: [{ host: up.host, url: up.url }] });
    const bg = layerOf(background);
    // a lazy read of the first KiB: berth completes the 16 MiB blob in the background (8 s at this limit)
    const m = await httpRequest(berth.url, '/v2/lab/background/manifests/1', { headers: { accept: MediaTypes.oci.manifest } });
    assert.equal(m.status, 200);
    const lazy = await httpRequest(berth.url, `/v2/lab/background/blobs/${bg.digest}`, { headers: { range: 'bytes=0-1023' } });
    assert.equal(lazy.status, 206);
    await waitUntil('the background completion to use the budget', async () => (await metricValue(berth.url, 'berth_upstream_bytes_total', { priority: 'background' })) > 256 * 1024, 15_000, 50);

    const manifest = await httpRequest(berth.url, '/v2/lab/small/manifests/1', { headers: { accept: MediaTypes.oci.manifest } });
    assert.equal(manifest.status, 200);
    assert.equal(sha256(manifest.body), small.manifestDigest);
    assert.equal(committed(berth, bg.digest), false, 'the manifest was answered while the background fill was still running');

    const bgBefore = await metricValue(berth.url, 'berth_upstream_bytes_total', { priority: 'background' });
    const layer = layerOf(small);
    await getWhole(berth, 'lab/small', layer);
    const bgDuring = (await metricValue(berth.url, 'berth_upstream_bytes_total', { priority: 'background' })) - bgBefore;
    assert.equal(committed(berth, bg.digest), false, 'the layer the client waited for arrived before the background fill finished');
    const fg = await metricValue(berth.url, 'berth_upstream_bytes_total', { priority: 'foreground' });
    assert.ok(fg >= layer.size, `/metrics counts the client's layer as foreground (${fg})`);
    assert.ok(bgDuring < layer.size / 2, `the background fill got ${bgDuring} bytes of budget while the client's ${layer.size}-byte layer was waiting`);
  });
});
