// Resumable fills (issue #3, "constrained links"): an edge link that drops connections, adds latency or
// hangs. Between berth and a real docker-registry a fault-injecting relay cuts and stalls the upstream
// connection; the client's download still completes with the right bytes, and berth picks up where it
// stopped with `Range: bytes=N-` (the registry answers those with 206) instead of starting over — also
// after berth itself is killed mid-fill and restarted. An origin that ignores Range is restarted from zero
// and still verified.
import assert from 'node:assert/strict';
import { createReadStream, existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { type BerthOptions, type InProcessBerth, startBerth, startBerthProcess } from './support/berth.ts';
import { type Blob, buildImage, type Image, pushImage } from './support/images.ts';
import { httpRequest, sha256, upstreamTrafficSince, waitUntil } from './support/links.ts';
import { type Relay, type RelayOptions, startRelay } from './support/relay.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const MB = 1_000_000;
const MiB = 1024 * 1024;

let up: Upstream;
let work: string;
let medium: Image; // one ~30 MB layer
let large: Image; // one ~80 MB layer
const cleanups: Array<() => Promise<unknown>> = [];

before(async () => {
  work = await makeTempDir('resumable-fill');
  up = await startUpstream();
  medium = await buildImage({ format: 'oci', layers: [{ randomBytes: 30 * MB, dir: work }] });
  large = await buildImage({ format: 'oci', layers: [{ randomBytes: 80 * MB, dir: work }] });
  await pushImage(up, 'lab/medium', '1', medium);
  await pushImage(up, 'lab/large', '1', large);
});

after(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
  await up?.stop();
  if (work) await removeTempDir(work);
});

async function relayTo(port: number, o: Omit<RelayOptions, 'target'> = {}): Promise<Relay> {
  const relay = await startRelay({ target: { host: '127.0.0.1', port }, ...o });
  cleanups.push(() => relay.close());
  return relay;
}

async function berthVia(relay: Relay, extra: Partial<BerthOptions['upstreams'][number]> = {}): Promise<InProcessBerth> {
  const b = await startBerth({ upstreams: [{ host: relay.host, url: relay.url(), ...extra }] });
  cleanups.push(() => b.stop());
  return b;
}

const layerOf = (img: Image): Blob => img.layers[0]!;

/** The client's whole-blob GET through berth; asserts that every byte is right. */
async function getBlobIntact(berthUrl: string, repo: string, blob: Blob): Promise<number> {
  const res = await httpRequest(berthUrl, `/v2/${repo}/blobs/${blob.digest}`);
  assert.equal(res.status, 200, res.body.subarray(0, 300).toString());
  assert.equal(res.body.length, blob.size, 'the client got the whole blob');
  assert.equal(sha256(res.body), blob.digest, 'the client got the right bytes');
  return res.totalMs;
}

/** The upstream's log lines for GETs of one blob since `mark`. */
async function blobGets(mark: number, digest: string) {
  return (await upstreamTrafficSince(up, mark)).filter((e) => e.method === 'GET' && e.path.split('?')[0]!.endsWith(`/blobs/${digest}`));
}

describe('fills over an unreliable upstream link', () => {
  test('a blob download survives the upstream connection being cut three times: berth resumes with Range and sends every byte right', async () => {
    const blob = layerOf(medium);
    const relay = await relayTo(up.port, { plan: { connections: [{ cutAfterBytes: 4 * MB }, { cutAfterBytes: 9 * MB }, { cutAfterBytes: 6 * MB }] } });
    const berth = await berthVia(relay);
    const mark = up.logLineCount();
    await getBlobIntact(berth.url, 'lab/medium', blob);
    const gets = await blobGets(mark, blob.digest);
    assert.equal(gets[0]?.status, 200, 'the first request asks for the whole blob');
    assert.ok(gets.filter((e) => e.status === 206).length >= 3, `each cut is followed by a Range resume (206); upstream saw ${gets.map((e) => e.status).join(',')}`);
    assert.ok(relay.connections >= 4);
    assert.ok(relay.bytesDown < blob.size + 3 * MB, `the upstream sent ${relay.bytesDown} bytes for a ${blob.size}-byte blob: resumed, not restarted`);
  });

  test('a high-latency link that also drops connections still delivers the blob intact', async () => {
    const blob = layerOf(medium);
    const relay = await relayTo(up.port, { latencyMs: 20, plan: { connections: [{ cutAfterBytes: 5 * MB }, { cutAfterBytes: 5 * MB }] } });
    const berth = await berthVia(relay);
    const mark = up.logLineCount();
    await getBlobIntact(berth.url, 'lab/medium', blob);
    const gets = await blobGets(mark, blob.digest);
    assert.ok(gets.filter((e) => e.status === 206).length >= 2, `resumed with Range after each cut; upstream saw ${gets.map((e) => e.status).join(',')}`);
    assert.ok(relay.bytesDown < blob.size + 3 * MB, `upstream sent ${relay.bytesDown} bytes for ${blob.size}`);
  });

  test('an upstream that stops sending without closing is dropped after the idle timeout and the fill resumes', async () => {
    const blob = layerOf(medium);
    const relay = await relayTo(up.port, { plan: { connections: [{ stallAfterBytes: 6 * MB }] } });
    const berth = await berthVia(relay, { timeouts: { idle: '2s' } });
    const mark = up.logLineCount();
    const ms = await getBlobIntact(berth.url, 'lab/medium', blob);
    assert.ok(ms >= 1_900, `the download waited out the idle timeout (${Math.round(ms)} ms)`);
    assert.ok(ms < 20_000, `…and then went on instead of hanging (${Math.round(ms)} ms)`);
    const gets = await blobGets(mark, blob.digest);
    assert.ok(
      gets.some((e) => e.status === 206),
      `the fill resumed with Range; upstream saw ${gets.map((e) => e.status).join(',')}`,
    );
    assert.ok(relay.bytesDown < blob.size + 3 * MB, `upstream sent ${relay.bytesDown} bytes for ${blob.size}`);
  });

  test('a fill interrupted by killing berth resumes from its checkpoint after the restart', async () => {
    const blob = layerOf(large);
    // the relay holds the link to 25 MB/s so that berth can be killed part-way
    const relay = await relayTo(up.port, { rateBytesPerSec: 25 * MB });
    const berth = await startBerthProcess({ upstreams: [{ host: relay.host, url: relay.url() }] });
    cleanups.push(() => berth.stop());
    const hex = blob.digest.slice('sha256:'.length);
    // one ingest file per (digest, upstream): storage/ingest/<hex>.<upstream host, URI-encoded>.json
    const checkpoint = path.join(berth.storage, 'ingest', `${hex}.${encodeURIComponent(relay.host)}.json`);

    const mark = up.logLineCount();
    const first = httpRequest(berth.url, `/v2/lab/large/blobs/${blob.digest}`).then(
      () => 'completed',
      () => 'cut',
    );
    await waitUntil('40 MB through the link and a checkpoint on disk', () => relay.bytesDown >= 40 * MB && existsSync(checkpoint), 30_000, 10);
    await berth.kill('SIGKILL');
    const atKill = relay.bytesDown;
    assert.equal(await first, 'cut', 'the client saw its download cut, not a clean short body');
    const saved = JSON.parse(await readFile(checkpoint, 'utf8')) as { size: number; extents: Array<[number, number]> };
    assert.equal(saved.size, blob.size);
    const kept = saved.extents.reduce((n, [a, b]) => (a === 0 ? b : n), 0);
    assert.ok(kept >= 32 * MiB, `the checkpoint keeps the first ${kept} bytes`);

    relay.setRate(undefined);
    await berth.restart();
    await getBlobIntact(berth.url, 'lab/large', blob);
    const total = relay.bytesDown;
    assert.ok(total < 2 * blob.size, `the upstream sent ${total} bytes in all for a ${blob.size}-byte blob`);
    assert.ok(total - atKill <= blob.size - kept + 2 * MB, `after the restart the upstream sent ${total - atKill} bytes; only the ${blob.size - kept} bytes after the checkpoint were missing`);
    const gets = await blobGets(mark, blob.digest);
    assert.ok(
      gets.some((e) => e.status === 206),
      `the restarted fill asked for the rest with Range; upstream saw ${gets.map((e) => e.status).join(',')}`,
    );
  });

  test('an origin that ignores Range is fetched again from byte zero and the blob is still verified', async () => {
    const blob = layerOf(medium);
    const origin = await startRangeIgnoringOrigin(blob);
    cleanups.push(() => origin.close());
    // the link is cut once mid-body; it is slow enough that the client is well ahead of the restarted fill
    const relay = await relayTo(origin.port, { rateBytesPerSec: 40 * MB, plan: { connections: [{ cutAfterBytes: 8 * MB }] } });
    const berth = await berthVia(relay);
    await getBlobIntact(berth.url, 'lab/medium', blob);
    const gets = origin.requests.filter((r) => r.method === 'GET');
    assert.ok(gets.length >= 2, 'berth asked again after the cut');
    assert.equal(gets[0]!.range, undefined, 'the first request asks for the whole blob');
    assert.match(gets[1]!.range ?? '', /^bytes=[1-9]\d*-(\d+)?$/, 'berth first tries to resume from where the cut left it (Range: bytes=N-)');
    assert.ok(relay.bytesDown >= blob.size + 7 * MB, `the whole blob came again after the cut (${relay.bytesDown} bytes)`);
    assert.ok(
      gets.length <= 4,
      `berth asked a Range-ignoring origin ${gets.length} times for one blob (ranges: ${gets
        .slice(0, 8)
        .map((g) => g.range)
        .join(' ')} …)`,
    );
  });
});

interface OriginRequest {
  method: string;
  url: string;
  range: string | undefined;
}

/**
 * A minimal origin for one blob that ignores Range (like `python3 -m http.server`): always 200 and the
 * whole file. docker-registry honours Range, so it cannot stand in for this case.
 */
async function startRangeIgnoringOrigin(blob: Blob): Promise<{ port: number; requests: OriginRequest[]; close(): Promise<void> }> {
  const requests: OriginRequest[] = [];
  const server = http.createServer((req, res) => {
    requests.push({ method: req.method ?? '', url: req.url ?? '', range: req.headers.range });
    if (req.url === '/v2/' || req.url === '/v2') {
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
      return;
    }
    if (!(req.url ?? '').endsWith(`/blobs/${blob.digest}`)) {
      res.writeHead(404, { 'content-type': 'application/json' }).end('{"errors":[{"code":"BLOB_UNKNOWN","message":"no"}]}');
      return;
    }
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(blob.size), 'docker-content-digest': blob.digest });
    if (req.method === 'HEAD') {
      res.end();
      return;
    }
    const file = createReadStream(blob.path!);
    file.pipe(res);
    res.on('close', () => file.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    requests,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
