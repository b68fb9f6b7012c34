// One upstream read however many clients pull at once, and a fill that outlives the client that started
// it (DESIGN.md "Fills"). Issue #2.
import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, describe, test } from 'node:test';
import { blobBytesServed } from './support/accesslog.ts';
import { type InProcessBerth, startBerth } from './support/berth.ts';
import { hashedGet } from './support/http.ts';
import { type Blob, digestOfFile, type Seeded, seedStandard } from './support/images.ts';
import { upstreamTrafficSince, waitUntil } from './support/links.ts';
import { type Relay, startRelay } from './support/relay.ts';
import { committedPath, exists } from './support/storage.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { type AccessEntry, startUpstream, type Upstream } from './support/upstream.ts';

const BIG_BYTES = 100 * 1024 * 1024;
const CLIENTS = 8;
/** The slow link for the disconnect test: the 100 MiB fill takes a few seconds. */
const SLOW_RATE = 40 * 1024 * 1024;

/** GETs the blob and hangs up after `bytes` of its body have arrived. */
function getThenDisconnect(url: string, bytes: number): Promise<{ status: number; received: number }> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { agent: false }, (res) => {
      let received = 0;
      res.on('data', (c: Buffer) => {
        received += c.length;
        if (received >= bytes) {
          req.destroy();
          resolve({ status: res.statusCode ?? 0, received });
        }
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, received }));
    });
    req.on('error', (err) => (req.destroyed ? undefined : reject(err)));
  });
}

const isGetOf = (digest: string) => (e: AccessEntry) => e.method === 'GET' && e.path.split('?')[0]!.endsWith(`/blobs/${digest}`);

describe('many clients, one upstream read', () => {
  let up: Upstream;
  let seeded: Seeded;
  let big: Blob;
  let seedDir: string;
  let relay: Relay;
  let fast: InProcessBerth;
  let slow: InProcessBerth;

  before(async () => {
    seedDir = await makeTempDir('seed-coalescing');
    up = await startUpstream();
    seeded = await seedStandard(up, seedDir, { bigBytes: BIG_BYTES });
    big = seeded.big!.layers[0]!;
    relay = await startRelay({ target: { host: '127.0.0.1', port: up.port }, rateBytesPerSec: SLOW_RATE });
    fast = await startBerth({ upstreams: [{ host: 'docker.io', url: up.url }] });
    slow = await startBerth({ upstreams: [{ host: 'docker.io', url: relay.url() }] });
  });

  after(async () => {
    await fast?.stop();
    await slow?.stop();
    await relay?.close();
    await up?.stop();
    await removeTempDir(seedDir);
  });

  test('8 clients pulling the same cold 100 MB layer at once make berth read it from the upstream once', async () => {
    const mark = up.logLineCount();
    const url = `${fast.url}/v2/lab/big/blobs/${big.digest}`;
    const results = await Promise.all(Array.from({ length: CLIENTS }, () => hashedGet(url)));
    for (const r of results) {
      assert.equal(r.status, 200);
      assert.equal(r.contentLength, String(big.size));
      assert.equal(r.bytes, big.size);
      assert.equal(r.digest, big.digest);
    }
    // The clients really were concurrent: every one had its headers before the first had its whole body.
    const firstDone = Math.min(...results.map((r) => r.doneAt));
    assert.ok(
      results.every((r) => r.headersAt < firstDone),
      'the GETs did not overlap; the test proves nothing',
    );

    const traffic = await upstreamTrafficSince(up, mark);
    const gets = traffic.filter(isGetOf(big.digest));
    assert.equal(gets.length, 1, `upstream GETs of the layer: ${gets.map((e) => `${e.status} ${e.bytes}`).join(', ')}`);
    const served = blobBytesServed(traffic, big.digest);
    assert.ok(served >= big.size && served <= big.size * 1.01, `upstream sent ${served} bytes for a ${big.size}-byte layer`);
  });

  test('a client that hangs up mid-layer does not stop the fill: the layer is cached and the next pull is a pure hit', async () => {
    const mark = up.logLineCount();
    const url = `${slow.url}/v2/lab/big/blobs/${big.digest}`;
    const { status, received } = await getThenDisconnect(url, 1024 * 1024);
    assert.equal(status, 200);
    assert.ok(received < big.size, 'the whole layer arrived before the hang-up');
    assert.equal(await exists(committedPath(slow, big.digest)), false, 'the layer was committed before the hang-up; the test proves nothing');

    await waitUntil('the layer to be committed', () => exists(committedPath(slow, big.digest)), 60_000, 50);
    assert.equal(await digestOfFile(committedPath(slow, big.digest)), big.digest);
    const fill = await upstreamTrafficSince(up, mark);
    const gets = fill.filter(isGetOf(big.digest));
    assert.ok(gets.length >= 1, 'no upstream GET of the layer');
    assert.equal(blobBytesServed(fill, big.digest), big.size, 'the fill read more or less than the layer once');

    const relayBytes = relay.bytesDown;
    const again = up.logLineCount();
    const hit = await hashedGet(url);
    assert.equal(hit.status, 200);
    assert.equal(hit.digest, big.digest);
    assert.deepEqual(await upstreamTrafficSince(up, again), [], 'the second pull reached the upstream');
    assert.equal(relay.bytesDown, relayBytes, 'bytes crossed the slow link for a cached layer');
  });
});
