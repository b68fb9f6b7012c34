// Crash recovery (issue #5): berth dies by SIGKILL — a power cut, an OOM kill — at each point of a fill
// (src/failpoints.ts): when the upstream's headers arrived, half-way through the body, after the digest
// was verified but before the rename into blobs/, and after the rename but before the index row. After a
// restart without the failpoint nothing corrupt or short is ever served: every file under blobs/ hashes to
// its name, a GET returns exactly the upstream's bytes, the fill resumes (or restarts) and skopeo pulls the
// image with the upstream's digests. DESIGN.md "Storage" invariants.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { type BerthChild, startBerthChild } from './support/berth-child.ts';
import { unverifiedBlobFiles } from './support/berth-cli.ts';
import { type Blob, buildImage, type Image, pushImage } from './support/images.ts';
import { upstreamTrafficSince, waitUntil } from './support/links.ts';
import { describeOutcome, fetchOutcome, sha256Of } from './support/outcome.ts';
import { assertPulledImage } from './support/pulled-image.ts';
import { skopeoCopy } from './support/skopeo.ts';
import { hasBlobFile } from './support/storage.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const MB = 1_000_000;
const MiB = 1024 * 1024;

let up: Upstream;
let work: string;
/** One ~70 MB layer (so that a 32 MiB checkpoint lands before the middle) and a small one. */
let image: Image;
let layer: Blob;
const children: BerthChild[] = [];

before(async () => {
  work = await makeTempDir('crash-recovery');
  up = await startUpstream();
  image = await buildImage({ format: 'oci', layers: [{ randomBytes: 70 * MB, dir: work }, { files: { 'etc/crash.txt': `crash ${Date.now()}\n` } }] });
  layer = image.layers[0]!;
  await pushImage(up, 'lab/crash', '1', image);
});

after(async () => {
  for (const c of children) await c.stop().catch(() => undefined);
  await up?.stop();
  if (work) await removeTempDir(work);
});

async function waitForExit(b: BerthChild, timeoutMs: number): Promise<number | null | 'running'> {
  return Promise.race([b.process.exited, sleep(timeoutMs, 'running' as const)]);
}

/** GETs of the big layer the upstream answered since `mark`, with their status and bytes. */
async function layerGets(mark: number) {
  return (await upstreamTrafficSince(up, mark)).filter((e) => e.method === 'GET' && e.path.split('?')[0]!.endsWith(`/blobs/${layer.digest}`));
}

async function assertBlobsVerified(storage: string, when: string): Promise<void> {
  assert.deepEqual(await unverifiedBlobFiles(storage), [], `${when}: a file under blobs/ does not hash to its name`);
}

/**
 * Starts berth with the failpoint armed, asks for the layer, and checks that berth killed itself there and
 * that the client never got a clean-looking wrong body. Returns the child, now dead.
 */
async function crashAt(failpoint: string): Promise<{ b: BerthChild; clientGotWholeBlob: boolean }> {
  const b = await startBerthChild({ upstreams: [{ host: up.host, url: up.url }] }, { env: { BERTH_FAILPOINTS: failpoint } });
  children.push(b);
  const r = await fetchOutcome(b.url, `/v2/lab/crash/blobs/${layer.digest}`, { timeoutMs: 60_000 });
  const code = await waitForExit(b, 15_000);
  assert.equal(code, null, `berth should have killed itself at ${failpoint} (exit: ${String(code)}); client saw ${describeOutcome(r)}`);
  if (r.complete) {
    // Only possible once every byte was on disk: then it must be the whole, right blob.
    assert.equal(r.status, 200, describeOutcome(r));
    assert.equal(r.body.length, layer.size, `a clean response with a short body: ${describeOutcome(r)}`);
    assert.equal(sha256Of(r.body), layer.digest, 'a clean response with wrong bytes');
  }
  return { b, clientGotWholeBlob: r.complete };
}

/** After the restart: the layer comes back byte for byte and nothing under blobs/ is unverified. */
async function assertServedIntact(b: BerthChild): Promise<void> {
  const r = await fetchOutcome(b.url, `/v2/lab/crash/blobs/${layer.digest}`, { timeoutMs: 60_000 });
  assert.ok(r.complete, `after the restart the layer download was cut: ${describeOutcome(r)}`);
  assert.equal(r.status, 200, describeOutcome(r));
  assert.equal(r.body.length, layer.size, 'the restarted berth served a short layer');
  assert.equal(sha256Of(r.body), layer.digest, 'the restarted berth served wrong bytes');
  // The last byte reaches the client just before the commit: poll for it.
  await waitUntil('the layer committed under blobs/ after a complete fill', () => hasBlobFile(b.storage, layer.digest), 10_000);
  await assertBlobsVerified(b.storage, 'after the restart');
}

async function assertSkopeoPulls(b: BerthChild, name: string): Promise<void> {
  const dir = path.join(work, `pull-${name}`);
  await skopeoCopy(`docker://${b.host}/lab/crash:1`, `dir:${dir}`);
  await assertPulledImage(dir, image);
  await removeTempDir(dir);
}

describe('berth killed (SIGKILL) in the middle of a fill', () => {
  test('killed when the upstream headers arrive: the client sees a cut connection, and after a restart the fill starts over and the pull succeeds', async () => {
    const { b, clientGotWholeBlob } = await crashAt('fill.headers');
    assert.equal(clientGotWholeBlob, false, 'no byte can have been served before the upstream body started');
    await assertBlobsVerified(b.storage, 'after the kill');
    assert.equal(await hasBlobFile(b.storage, layer.digest), false, 'nothing of the layer may be under blobs/');

    await b.restart();
    const mark = up.logLineCount();
    await assertServedIntact(b);
    const gets = await layerGets(mark);
    assert.ok(gets.length >= 1, 'the restarted berth fetched the layer from the upstream');
    await assertSkopeoPulls(b, 'headers');
  });

  test('killed half-way through the body: the client download is cut, and after a restart the fill resumes from its checkpoint with a Range request', async () => {
    const { b, clientGotWholeBlob } = await crashAt('fill.mid-body');
    assert.equal(clientGotWholeBlob, false, 'half a blob cannot have been served as a complete response');
    await assertBlobsVerified(b.storage, 'after the kill');
    assert.equal(await hasBlobFile(b.storage, layer.digest), false, 'a half-filled layer must not be under blobs/');
    assert.ok(existsSync(path.join(b.storage, 'ingest', `${layer.digest.slice(7)}.${encodeURIComponent(up.host)}.json`)), 'the 32 MiB checkpoint before the middle is on disk');

    await b.restart();
    const mark = up.logLineCount();
    await assertServedIntact(b);
    const gets = await layerGets(mark);
    assert.ok(
      gets.some((e) => e.status === 206),
      `the restarted fill resumed with Range; upstream saw ${gets.map((e) => `${e.status}/${e.bytes}`).join(', ')}`,
    );
    const fetched = gets.reduce((n, e) => n + e.bytes, 0);
    assert.ok(fetched <= layer.size - 32 * MiB + 2 * MB, `after the restart the upstream sent ${fetched} bytes; the checkpoint held the first 32 MiB of ${layer.size}`);
    await assertSkopeoPulls(b, 'mid-body');
  });

  test('killed after the digest was verified but before the rename: nothing is under blobs/, and after a restart the layer is fetched, verified and served whole', async () => {
    const { b } = await crashAt('fill.before-rename');
    await assertBlobsVerified(b.storage, 'after the kill');
    assert.equal(await hasBlobFile(b.storage, layer.digest), false, 'the rename never happened: the layer must not be under blobs/');

    await b.restart();
    const mark = up.logLineCount();
    await assertServedIntact(b);
    const gets = await layerGets(mark);
    const fetched = gets.reduce((n, e) => n + e.bytes, 0);
    assert.ok(gets.length >= 1, 'the restarted berth completed the layer from the upstream');
    assert.ok(fetched < layer.size, `the restarted fill resumed from its checkpoint (${fetched} of ${layer.size} bytes fetched again)`);
    await assertSkopeoPulls(b, 'before-rename');
  });

  test('killed after the rename but before the index row: after a restart the verified file is served from disk without asking the upstream', async () => {
    const { b } = await crashAt('fill.index-write');
    await assertBlobsVerified(b.storage, 'after the kill');
    assert.ok(await hasBlobFile(b.storage, layer.digest), 'the rename into blobs/ happened before the kill');

    await b.restart();
    const mark = up.logLineCount();
    await assertServedIntact(b);
    const gets = await layerGets(mark);
    assert.equal(gets.length, 0, `a blob already under blobs/ must not be fetched again; upstream saw ${gets.length} GETs`);
    await assertSkopeoPulls(b, 'index-write');
  });
});
