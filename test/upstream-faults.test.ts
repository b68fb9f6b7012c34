// Faults from outside berth (issue #5): an origin that sends wrong bytes, too few, too many, or lies in
// Content-Length; a damaged or locked SQLite index; a storage filesystem that fills up. Whatever happens,
// nothing unverified is cached, a client never receives a clean-looking wrong body (its response is cut or
// is an error), the next request tries the origin again, and berth recovers without a restart where it can.
// The misbehaving origin is a stand-in (docker-registry cannot be told to misbehave); everything else is
// real: docker-registry, skopeo, berth as a child process for start-up failures, a tmpfs for a full disk.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, open, rm } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import Database from 'better-sqlite3';
import { type InProcessBerth, startBerth } from './support/berth.ts';
import { type BerthChild, startBerthChild, tryServe } from './support/berth-child.ts';
import { describeRun, runBerth, unverifiedBlobFiles } from './support/berth-cli.ts';
import { buildImage, type Image, MediaTypes, pushImage, type Seeded, seedStandard } from './support/images.ts';
import { metricValue, upstreamTrafficSince, waitUntil } from './support/links.ts';
import { fillUp, mountTmpfs, unmountUnder } from './support/mounts.ts';
import { describeOutcome, fetchOutcome, type Outcome, sha256Of } from './support/outcome.ts';
import { assertPulledImage } from './support/pulled-image.ts';
import { skopeoCopy } from './support/skopeo.ts';
import { type OriginRequest, type Reply, respond, type StandInOrigin, sha256Digest, startStandInOrigin } from './support/stand-in-origin.ts';
import { hasBlobFile } from './support/storage.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const run = promisify(execFile);
const MB = 1_000_000;
/** How long a misbehaving origin waits before the last bytes of a body. */
const TAIL_DELAY_MS = 300;

let work: string;
const cleanups: Array<() => Promise<unknown>> = [];

before(async () => {
  work = await makeTempDir('upstream-faults');
});

after(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
  if (work) await removeTempDir(work);
});

/** A clean 2xx with the wrong bytes is the one thing a client must never get. */
function assertNotCleanBad(r: Outcome, digest: string, size: number, what: string): void {
  if (r.complete && r.status !== undefined && r.status < 300) {
    const right = r.body.length === size && sha256Of(r.body) === digest;
    assert.fail(
      `${what}: the client got a clean ${r.status} with ${right ? 'the right' : 'WRONG'} content (${r.body.length} bytes${right ? '' : `, hashing to ${sha256Of(r.body)}`}) although the origin misbehaved`,
    );
  }
  assert.ok(!r.complete || (r.status !== undefined && r.status >= 400), `${what}: ${describeOutcome(r)}`);
}

// ---------------------------------------------------------------------------------------------------
// A misbehaving origin

type Fault = 'good' | 'wrong-bytes' | 'too-few' | 'too-many' | 'short-content-length';

interface OriginBlob {
  bytes: Buffer;
  fault: Fault;
}

describe('an origin that sends bad blob bodies', () => {
  let origin: StandInOrigin;
  let b: InProcessBerth;
  const blobs = new Map<string, OriginBlob>();
  const manifests = new Map<string, { bytes: Buffer; mediaType: string }>();

  async function serveBlob(req: OriginRequest, reply: Reply, blob: OriginBlob): Promise<void> {
    const size = blob.bytes.length;
    let start = 0;
    let end = size - 1;
    let status = 200;
    const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
    if (range) {
      start = Number(range[1]);
      end = range[2] ? Math.min(Number(range[2]), size - 1) : size - 1;
      status = 206;
    }
    const slice = blob.bytes.subarray(start, end + 1);
    const head: Record<string, string | number> = { 'Content-Type': 'application/octet-stream', 'Docker-Content-Digest': sha256Digest(blob.bytes) };
    if (status === 206) head['Content-Range'] = `bytes ${start}-${end}/${size}`;
    if (req.method === 'HEAD') {
      reply.head(status, { ...head, 'Content-Length': slice.length });
      reply.end();
      return;
    }
    // The faulty bodies end the way slow links do: the last bytes come a moment after the rest. Any
    // client reading along has everything but those by then.
    const tail = async (body: Buffer, last: number): Promise<void> => {
      await reply.write(body.subarray(0, body.length - last));
      await sleep(TAIL_DELAY_MS);
      reply.end(body.subarray(body.length - last));
    };
    switch (blob.fault) {
      case 'good':
        reply.head(status, { ...head, 'Content-Length': slice.length });
        reply.end(slice);
        return;
      case 'wrong-bytes': {
        // Same length, a few bytes flipped at the start, the middle and the end.
        const bad = Buffer.from(slice);
        for (const i of [0, bad.length >> 1, bad.length - 1]) bad[i]! ^= 0xff;
        reply.head(status, { ...head, 'Content-Length': slice.length });
        await tail(bad, 1);
        return;
      }
      case 'too-few':
        // Promises every byte, sends half, then drops the connection (on every attempt, resumes included).
        reply.head(status, { ...head, 'Content-Length': slice.length });
        await reply.write(slice.subarray(0, slice.length >> 1));
        reply.destroy();
        return;
      case 'too-many':
        // The blob with 1000 bytes of junk after it, and a Content-Length that counts them.
        reply.head(status, { ...head, 'Content-Length': slice.length + 1000 });
        await tail(Buffer.concat([slice, randomBytes(1000)]), 1000);
        return;
      case 'short-content-length':
        // Content-Length 1000 bytes short of the blob; the whole blob follows anyway.
        reply.head(status, { ...head, 'Content-Length': slice.length - 1000 });
        await tail(slice, 1001);
        return;
    }
  }

  before(async () => {
    // Keep-alive, as registries do (an origin that closes every connection has a test of its own below).
    origin = await startStandInOrigin(
      async (req, reply) => {
        const p = req.path.split('?')[0]!;
        if (p === '/v2/' || p === '/v2') return respond(reply, 200, { 'Content-Type': 'application/json' }, '{}');
        const m = /^\/v2\/(.+)\/manifests\/([^/]+)$/.exec(p);
        if (m) {
          const man = manifests.get(`${m[1]}:${m[2]}`) ?? manifests.get(`${m[1]}@${m[2]}`);
          if (!man) return respond(reply, 404, { 'Content-Type': 'application/json' }, '{"errors":[{"code":"MANIFEST_UNKNOWN","message":"no"}]}');
          reply.head(200, { 'Content-Type': man.mediaType, 'Docker-Content-Digest': sha256Digest(man.bytes), 'Content-Length': man.bytes.length });
          reply.end(req.method === 'HEAD' ? undefined : man.bytes);
          return;
        }
        const bm = /^\/v2\/(.+)\/blobs\/(sha256:[a-f0-9]{64})$/.exec(p);
        const blob = bm ? blobs.get(bm[2]!) : undefined;
        if (!blob) return respond(reply, 404, { 'Content-Type': 'application/json' }, '{"errors":[{"code":"BLOB_UNKNOWN","message":"no"}]}');
        await serveBlob(req, reply, blob);
      },
      { keepAlive: true },
    );
    cleanups.push(() => origin.close());
    b = await startBerth({ upstreams: [{ host: origin.host, url: origin.url }], retries: { attempts: 2, backoff: '20ms' } });
    cleanups.push(() => b.stop());
  });

  /** A fresh 2 MB blob under `repo:1`, with a config and a manifest the origin serves correctly. */
  function addImage(repo: string, fault: Fault): { digest: string; size: number; blob: OriginBlob } {
    const layer = randomBytes(2 * MB);
    const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] }, nonce: repo + Math.random() }));
    const digest = sha256Digest(layer);
    const blob = { bytes: layer, fault };
    blobs.set(digest, blob);
    blobs.set(sha256Digest(config), { bytes: config, fault: 'good' });
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: MediaTypes.oci.manifest,
        config: { mediaType: MediaTypes.oci.config, digest: sha256Digest(config), size: config.length },
        layers: [{ mediaType: MediaTypes.oci.layer, digest, size: layer.length }],
      }),
    );
    manifests.set(`${repo}:1`, { bytes: manifest, mediaType: MediaTypes.oci.manifest });
    manifests.set(`${repo}@${sha256Digest(manifest)}`, { bytes: manifest, mediaType: MediaTypes.oci.manifest });
    return { digest, size: layer.length, blob };
  }

  const blobGets = (digest: string) => origin.requests.filter((r) => r.method === 'GET' && r.path.split('?')[0]!.endsWith(`/blobs/${digest}`)).length;

  const cases: Array<{ name: string; fault: Fault; manifestFirst: boolean }> = [
    { name: 'wrong bytes (same length), pulled after its manifest', fault: 'wrong-bytes', manifestFirst: true },
    { name: 'wrong bytes (same length), blob asked for directly', fault: 'wrong-bytes', manifestFirst: false },
    { name: 'too few bytes (connection dropped half-way, on every attempt)', fault: 'too-few', manifestFirst: true },
    { name: 'too many bytes (junk after the blob, counted in Content-Length), pulled after its manifest', fault: 'too-many', manifestFirst: true },
    { name: 'too many bytes (junk after the blob, counted in Content-Length), blob asked for directly', fault: 'too-many', manifestFirst: false },
    { name: 'a Content-Length 1000 bytes short of the blob, pulled after its manifest', fault: 'short-content-length', manifestFirst: true },
    { name: 'a Content-Length 1000 bytes short of the blob, blob asked for directly', fault: 'short-content-length', manifestFirst: false },
  ];

  for (const [i, c] of cases.entries()) {
    test(`origin sends ${c.name}: the client's download is cut, nothing is cached, and the next request goes to the origin again`, async () => {
      const repo = `faulty/case${i}`;
      const { digest, size, blob } = addImage(repo, c.fault);
      if (c.manifestFirst) {
        const m = await fetchOutcome(b.url, `/v2/${repo}/manifests/1`, { headers: { accept: MediaTypes.oci.manifest } });
        assert.equal(m.status, 200, describeOutcome(m));
      }
      const r = await fetchOutcome(b.url, `/v2/${repo}/blobs/${digest}`, { timeoutMs: 30_000 });
      assertNotCleanBad(r, digest, size, c.name);
      assert.ok(blobGets(digest) >= 1, 'berth asked the origin for the blob');

      await waitUntil('the failed fill to end', () => b.berth.fills.get(digest as never) === undefined, 15_000);
      assert.equal(await hasBlobFile(b.storage, digest), false, 'the bad blob must not be cached under blobs/');
      assert.deepEqual(await unverifiedBlobFiles(b.storage), [], 'a file under blobs/ does not hash to its name');

      // The origin is fixed: the next request must try it again and get the blob.
      const before = blobGets(digest);
      blob.fault = 'good';
      const again = await fetchOutcome(b.url, `/v2/${repo}/blobs/${digest}`, { timeoutMs: 30_000 });
      assert.ok(again.complete && again.status === 200, `the retry after the failure: ${describeOutcome(again)}`);
      assert.equal(sha256Of(again.body), digest, 'the retry got the right bytes');
      assert.ok(blobGets(digest) > before, 'the next request went to the origin again (the failure was not cached)');
      await waitUntil('the good blob committed', () => hasBlobFile(b.storage, digest), 10_000);
      assert.deepEqual(await unverifiedBlobFiles(b.storage), []);
    });
  }
});

describe('an origin that closes the connection after every response', () => {
  test('berth keeps running and serves every blob intact when the origin answers with Connection: close', async () => {
    const blobs = new Map<string, Buffer>();
    // A well-behaved origin except that it closes each connection after its response (HTTP/1.0 style
    // proxies and some CDNs do): nothing wrong with the bytes.
    const origin = await startStandInOrigin((req, reply) => {
      const p = req.path.split('?')[0]!;
      if (p === '/v2/' || p === '/v2') return respond(reply, 200, { 'Content-Type': 'application/json' }, '{}');
      const bytes = blobs.get(p.slice(p.lastIndexOf('/') + 1));
      if (!bytes) return respond(reply, 404, { 'Content-Type': 'application/json' }, '{"errors":[{"code":"BLOB_UNKNOWN","message":"no"}]}');
      reply.head(200, { 'Content-Type': 'application/octet-stream', 'Content-Length': bytes.length, 'Docker-Content-Digest': sha256Digest(bytes) });
      reply.end(req.method === 'HEAD' ? undefined : bytes);
    });
    cleanups.push(() => origin.close());
    const b = await startBerthChild({ upstreams: [{ host: origin.host, url: origin.url }] });
    cleanups.push(() => b.stop());
    const failures: string[] = [];
    for (let i = 0; i < 40 && b.process.running; i++) {
      const bytes = randomBytes(2 * MB);
      const digest = sha256Digest(bytes);
      blobs.set(digest, bytes);
      const r = await fetchOutcome(b.url, `/v2/lab/close/blobs/${digest}`, { timeoutMs: 30_000 });
      if (!(r.complete && r.status === 200 && sha256Of(r.body) === digest)) failures.push(`blob ${i}: ${describeOutcome(r)}`);
    }
    const crash = b
      .log()
      .split('\n')
      .filter((l) => /AssertionError|assert\(|Error:/.test(l))
      .slice(0, 6)
      .join('\n');
    assert.ok(b.process.running, `berth died while pulling from an origin that closes its connections:\n${crash}`);
    assert.deepEqual(failures, []);
  });
});

// ---------------------------------------------------------------------------------------------------
// The index and the storage filesystem

describe('a damaged, locked or full storage directory', () => {
  let up: Upstream;
  let seeded: Seeded;
  let full: Image;

  before(async () => {
    up = await startUpstream();
    cleanups.push(() => up.stop());
    seeded = await seedStandard(up, path.join(work, 'seed'));
    full = await buildImage({ format: 'oci', layers: [{ randomBytes: 30 * MB, dir: path.join(work, 'seed') }] });
    await pushImage(up, 'lab/full', '1', full);
  });

  async function childWithCache(name: string): Promise<BerthChild> {
    const b = await startBerthChild({ upstreams: [{ host: up.host, url: up.url }] });
    cleanups.push(() => b.stop());
    await skopeoCopy(`docker://${b.host}/lab/small:1`, `dir:${path.join(work, `${name}-small`)}`);
    await skopeoCopy(`docker://${b.host}/lab/small:v2s2`, `dir:${path.join(work, `${name}-v2s2`)}`);
    return b;
  }

  test('a damaged index stops berth serve with a message naming `berth index rebuild`; after the rebuild berth serves the cached images offline by tag', async () => {
    const b = await childWithCache('damaged');
    await b.kill('SIGTERM');
    const db = path.join(b.storage, 'berth.db');
    for (const suffix of ['-wal', '-shm']) await rm(`${db}${suffix}`, { force: true });
    const fh = await open(db, 'w');
    await fh.writeFile(randomBytes(64 * 1024));
    await fh.close();

    const started = await tryServe(b.configFile, b.url, { logFile: path.join(b.dir, 'damaged-serve.log') });
    if (started.kind === 'listening') {
      await started.process.stop('SIGKILL');
      assert.fail(`berth serve started on a damaged index:\n${started.output().slice(-2000)}`);
    }
    assert.notEqual(started.code, 0, `berth serve should fail on a damaged index:\n${started.output}`);
    assert.notEqual(started.code, null);
    assert.match(started.output, /berth index rebuild/, `the message should name the way out:\n${started.output}`);

    const args = ['index', 'rebuild', '--config', b.configFile, '--storage', b.storage];
    const rebuilt = await runBerth(args);
    assert.equal(rebuilt.code, 0, describeRun(args, rebuilt));
    assert.match(rebuilt.stdout, /restored 2 tags/, describeRun(args, rebuilt));

    const offline = await startBerthChild({ upstreams: [{ host: up.host, url: up.url }], storage: b.storage, offline: true });
    cleanups.push(() => offline.stop());
    const mark = up.logLineCount();
    const small = path.join(work, 'rebuilt-small');
    const v2s2 = path.join(work, 'rebuilt-v2s2');
    await skopeoCopy(`docker://${offline.host}/lab/small:1`, `dir:${small}`);
    await skopeoCopy(`docker://${offline.host}/lab/small:v2s2`, `dir:${v2s2}`);
    await assertPulledImage(small, seeded.small);
    await assertPulledImage(v2s2, seeded.v2s2);
    assert.deepEqual(await upstreamTrafficSince(up, mark), [], 'the offline berth contacted the upstream');
  });

  /** Holds the index with an open exclusive transaction in this process (another process than berth). */
  function holdIndex(file: string, lockingModeExclusive: boolean): () => void {
    const db = new Database(file, { timeout: 100 });
    if (lockingModeExclusive) db.pragma('locking_mode = EXCLUSIVE');
    db.exec('BEGIN EXCLUSIVE');
    return () => {
      db.exec('ROLLBACK');
      db.close();
    };
  }

  test('an index held exclusively by another process (locking_mode EXCLUSIVE) stops berth serve with a "locked" message', async () => {
    const b = await childWithCache('locked-x');
    await b.kill('SIGTERM');
    const release = holdIndex(path.join(b.storage, 'berth.db'), true);
    try {
      const started = await tryServe(b.configFile, b.url, { logFile: path.join(b.dir, 'locked-serve.log') });
      if (started.kind === 'listening') {
        await started.process.stop('SIGKILL');
        assert.fail(`berth serve started on an index another process holds exclusively:\n${started.output().slice(-2000)}`);
      }
      assert.ok(started.code !== 0 && started.code !== null, `exit code ${String(started.code)}`);
      assert.match(started.output, /locked/i, `the message should say the index is locked:\n${started.output}`);
    } finally {
      release();
    }
  });

  test('an index with another process in an open BEGIN EXCLUSIVE transaction gives a clear "locked" error (at start-up or on the pull that needs the index)', async () => {
    const b = await childWithCache('locked');
    await b.kill('SIGTERM');
    const release = holdIndex(path.join(b.storage, 'berth.db'), false);
    try {
      const started = await tryServe(b.configFile, b.url, { logFile: path.join(b.dir, 'locked-serve.log') });
      if (started.kind === 'exited') {
        assert.ok(started.code !== 0 && started.code !== null, `exit code ${String(started.code)}`);
        assert.match(started.output, /locked/i, `the message should say the index is locked:\n${started.output}`);
        return;
      }
      try {
        // berth came up (reads work under a write lock in WAL mode): a pull that must record something
        // in the index has to say why it cannot, not answer with an anonymous internal error.
        const r = await fetchOutcome(b.url, '/v2/lab/multi/manifests/1', { headers: { accept: MediaTypes.oci.index }, timeoutMs: 30_000 });
        const text = r.body.toString('utf8');
        assert.ok(r.status !== undefined && r.status !== 200, `a pull succeeded although the index could not be written: ${describeOutcome(r)}`);
        assert.notEqual(r.status, 500, `the pull failed with an internal error instead of a clear "locked" error: ${describeOutcome(r)}`);
        assert.match(text, /locked/i, `the error should say the index is locked: ${describeOutcome(r)}`);
      } finally {
        await started.process.stop('SIGKILL');
      }
    } finally {
      release();
    }
  });

  /** A 20 MB tmpfs, unmounted when the file ends. berth runs as a child: a crash must not take this test process along. */
  async function smallFilesystem(name: string): Promise<string> {
    const mnt = path.join(work, name);
    await mkdir(mnt);
    await mountTmpfs(mnt, '20m');
    cleanups.push(() => unmountUnder(mnt));
    return mnt;
  }

  test('storage fills up during a 30 MB pull: the client gets an error, nothing half-written is under blobs/, and once space returns the pull succeeds without restarting berth', async () => {
    const mnt = await smallFilesystem('small-fs');
    const storage = path.join(mnt, 'storage');
    const b = await startBerthChild({ upstreams: [{ host: up.host, url: up.url }], storage });
    cleanups.push(() => b.stop());
    const pid = b.process.pid;
    const layer = full.layers[0]!;

    const m = await fetchOutcome(b.url, '/v2/lab/full/manifests/1', { headers: { accept: MediaTypes.oci.manifest } });
    assert.equal(m.status, 200, describeOutcome(m));
    const r = await fetchOutcome(b.url, `/v2/lab/full/blobs/${layer.digest}`, { timeoutMs: 60_000 });
    assert.ok(!r.complete || r.status !== 200 || (r.body.length === layer.size && sha256Of(r.body) === layer.digest), `a clean wrong body on a full disk: ${describeOutcome(r)}`);
    assert.ok(!(r.complete && r.status === 200), `30 MB cannot fit into 20 MB, yet the client got a clean 200: ${describeOutcome(r)}`);
    await waitUntil('the failed fill to end', async () => (await metricValue(b.url, 'berth_fills_failed_total')) >= 1 && (await metricValue(b.url, 'berth_fills_active')) === 0, 20_000, 100);
    assert.equal(await hasBlobFile(storage, layer.digest), false, 'a layer that did not fit must not be under blobs/');
    assert.deepEqual(await unverifiedBlobFiles(storage), [], 'a half-written file under blobs/');

    await run('mount', ['-o', 'remount,size=200m', mnt]);
    const again = await fetchOutcome(b.url, `/v2/lab/full/blobs/${layer.digest}`, { timeoutMs: 60_000 });
    assert.ok(again.complete && again.status === 200, `after space returned: ${describeOutcome(again)}`);
    assert.equal(sha256Of(again.body), layer.digest);
    const dir = path.join(work, 'full-pull');
    await skopeoCopy(`docker://${b.host}/lab/full:1`, `dir:${dir}`);
    await assertPulledImage(dir, full);
    await waitUntil('the layer committed', () => hasBlobFile(storage, layer.digest), 10_000);
    assert.deepEqual(await unverifiedBlobFiles(storage), []);
    assert.ok(b.process.running && b.process.pid === pid, 'the same berth process served the pull after space returned');
  });

  test('berth keeps running and serving cached images while its storage stays full past the access-time flush (30 s)', async () => {
    const mnt = await smallFilesystem('full-fs');
    const b = await startBerthChild({ upstreams: [{ host: up.host, url: up.url }], storage: path.join(mnt, 'storage') });
    cleanups.push(() => b.stop());
    await skopeoCopy(`docker://${b.host}/lab/small:1`, `dir:${path.join(work, 'full-fs-warm')}`);
    // Something else fills the filesystem to the last byte.
    const filler = path.join(mnt, 'filler');
    await fillUp(filler);
    // Cached content is still served (and its access times are recorded, to be written later).
    const dir = path.join(work, 'full-fs-pull');
    await skopeoCopy(`docker://${b.host}/lab/small:1`, `dir:${dir}`);
    await assertPulledImage(dir, seeded.small);
    // berth writes access times every 30 s (src/server.ts): watch it through one flush on a full disk.
    const exit = await Promise.race([b.process.exited.then((code) => `exited (${String(code)})`), sleep(35_000, 'running')]);
    const crash = b
      .log()
      .split('\n')
      .filter((l) => /Error|SQLITE| {4}at /.test(l))
      .slice(0, 8)
      .join('\n');
    assert.equal(exit, 'running', `berth died while its storage was full:\n${crash}`);
    const again = path.join(work, 'full-fs-pull-2');
    await skopeoCopy(`docker://${b.host}/lab/small:1`, `dir:${again}`);
    await assertPulledImage(again, seeded.small);
    // Space comes back: uncached content is fetched again, without a restart.
    await rm(filler);
    const v2s2 = path.join(work, 'full-fs-v2s2');
    await skopeoCopy(`docker://${b.host}/lab/small:v2s2`, `dir:${v2s2}`);
    await assertPulledImage(v2s2, seeded.v2s2);
  });
});
