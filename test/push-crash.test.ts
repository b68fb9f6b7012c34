// Crash recovery of pushes (issue #10): berth as its own process, killed by SIGKILL (a power cut, an OOM
// kill) while a chunk of an upload is being written, and at the failpoint `upload.before-rename` (the
// session's bytes verified against the digest, the file not yet renamed into blobs/). Either way nothing
// half-written is under blobs/, and after a restart the session is still there at what it holds, takes the
// rest and commits with the right digest.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { stat } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { type BerthChild, startBerthChild } from './support/berth-child.ts';
import { unverifiedBlobFiles } from './support/berth-cli.ts';
import { waitUntil } from './support/links.ts';
import { hasBlobFile } from './support/storage.ts';

const MiB = 1024 * 1024;
const children: BerthChild[] = [];

after(async () => {
  for (const c of children) await c.stop().catch(() => undefined);
});

function sha(bytes: Buffer): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

/** A berth with a local prefix. The upstream is a closed loopback port: nothing here is ever pulled. */
async function start(env: Record<string, string> = {}): Promise<BerthChild> {
  const b = await startBerthChild({ upstreams: [{ host: '127.0.0.1:9', url: 'http://127.0.0.1:9' }], local: { prefixes: ['site/'], allowAnonymousPush: true } }, { env });
  children.push(b);
  return b;
}

async function call(b: BerthChild, method: string, url: string, body?: Buffer, headers: Record<string, string> = {}): Promise<{ status: number; headers: Headers; text: string }> {
  const res = await fetch(`${b.url}${url}`, { method, body: body as BodyInit | undefined, headers });
  return { status: res.status, headers: res.headers, text: await res.text() };
}

async function openSession(b: BerthChild, repo: string): Promise<{ loc: string; data: string }> {
  const r = await call(b, 'POST', `/v2/${repo}/blobs/uploads/`);
  assert.equal(r.status, 202, r.text);
  const loc = r.headers.get('location')!;
  return { loc, data: path.join(b.storage, 'uploads', `${loc.split('/').pop()!}.data`) };
}

function waitForExit(b: BerthChild, timeoutMs: number): Promise<number | null | 'running'> {
  return Promise.race([b.process.exited, sleep(timeoutMs, 'running' as const)]);
}

async function assertNothingHalfWritten(b: BerthChild, d: string, when: string): Promise<void> {
  assert.equal(await hasBlobFile(b.storage, d), false, `${when}: the blob is under blobs/ before its upload finished`);
  assert.deepEqual(await unverifiedBlobFiles(b.storage), [], `${when}: a file under blobs/ does not hash to its name`);
}

async function commitAndCheck(b: BerthChild, loc: string, d: string, size: number): Promise<void> {
  const put = await call(b, 'PUT', `${loc}?digest=${d}`);
  assert.equal(put.status, 201, put.text);
  const got = await fetch(`${b.url}/v2/site/crash/blobs/${d}`);
  const bytes = Buffer.from(await got.arrayBuffer());
  assert.equal(got.status, 200);
  assert.equal(bytes.length, size);
  assert.equal(sha(bytes), d);
  assert.deepEqual(await unverifiedBlobFiles(b.storage), []);
}

describe('a push streams', () => {
  test('a 512 MiB chunk (chunked transfer, no Content-Length) goes to the session file with backpressure: memory does not grow with it', async () => {
    const b = await start();
    const { loc, data } = await openSession(b, 'site/crash');
    const piece = randomBytes(MiB);
    const pieces = 512;
    const hash = createHash('sha256');
    const baseline = b.rss();
    let peak = baseline;
    const sampler = setInterval(() => {
      peak = Math.max(peak, b.rss());
    }, 50);
    const u = new URL(b.url);
    try {
      const status = await new Promise<number>((resolve, reject) => {
        const req = http.request({ host: u.hostname, port: u.port, path: loc, method: 'PATCH', agent: false, headers: { 'Transfer-Encoding': 'chunked' } }, (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode ?? 0));
        });
        req.on('error', reject);
        let i = 0;
        const pump = () => {
          while (i < pieces) {
            hash.update(piece);
            i++;
            if (!req.write(piece)) return void req.once('drain', pump);
          }
          req.end();
        };
        pump();
      });
      assert.equal(status, 202);
    } finally {
      clearInterval(sampler);
    }
    assert.equal((await stat(data)).size, pieces * MiB);
    const growth = peak - baseline;
    console.log(`rss baseline ${(baseline / MiB).toFixed(0)} MiB, peak ${(peak / MiB).toFixed(0)} MiB during a ${pieces} MiB PATCH`);
    assert.ok(growth < 96 * MiB, `berth's memory grew by ${(growth / MiB).toFixed(0)} MiB during a ${pieces} MiB chunk`);
    const d = `sha256:${hash.digest('hex')}`;
    const put = await call(b, 'PUT', `${loc}?digest=${d}`);
    assert.equal(put.status, 201, put.text);
    assert.equal(await hasBlobFile(b.storage, d), true);
    await b.stop();
  });
});

describe('berth killed (SIGKILL) during a push', () => {
  test('killed while a chunk is being written: nothing under blobs/, and after a restart the session resumes at what its file holds and commits', async () => {
    const b = await start();
    const all = randomBytes(24 * MiB);
    const d = sha(all);
    const { loc, data } = await openSession(b, 'site/crash');
    const sent = 8 * MiB + 12_345;
    const u = new URL(b.url);
    const req = http.request({ host: u.hostname, port: u.port, path: loc, method: 'PATCH', agent: false, headers: { 'Content-Length': String(all.length), 'Content-Range': `0-${all.length - 1}` } });
    const ended = new Promise<void>((resolve) => {
      req.on('error', () => resolve());
      req.on('response', (res) => {
        res.resume();
        resolve();
      });
    });
    req.write(all.subarray(0, sent));
    // The rest of the body is held back: berth is mid-chunk, its request still open, when it dies.
    await waitUntil('the first part of the chunk in the session file', async () => (await stat(data).catch(() => undefined))?.size === sent, 30_000);
    await b.kill('SIGKILL');
    await ended;
    req.destroy();
    await assertNothingHalfWritten(b, d, 'after the kill');
    await b.restart();
    const st = await call(b, 'GET', loc);
    assert.equal(st.status, 204, st.text);
    const range = st.headers.get('range')!;
    const offset = Number(range.split('-')[1]) + 1;
    assert.equal(offset, sent, `the session stands at what its file holds (${range})`);
    const rest = await call(b, 'PATCH', loc, all.subarray(offset), { 'Content-Range': `${offset}-${all.length - 1}` });
    assert.equal(rest.status, 202, rest.text);
    await commitAndCheck(b, loc, d, all.length);
  });

  test('killed at upload.before-rename (verified, not yet renamed): nothing under blobs/, and after a restart the same PUT commits', async () => {
    const b = await start({ BERTH_FAILPOINTS: 'upload.before-rename' });
    const all = randomBytes(5 * MiB + 7);
    const d = sha(all);
    const { loc } = await openSession(b, 'site/crash');
    assert.equal((await call(b, 'PATCH', loc, all, { 'Content-Range': `0-${all.length - 1}` })).status, 202);
    const put = await fetch(`${b.url}${loc}?digest=${d}`, { method: 'PUT' }).then(
      (r) => r.status,
      () => 'cut' as const,
    );
    assert.equal(put, 'cut', 'the PUT never got an answer: berth died before the rename');
    assert.equal(await waitForExit(b, 15_000), null, 'berth killed itself at upload.before-rename');
    await assertNothingHalfWritten(b, d, 'after the kill before the rename');
    await b.restart({});
    const st = await call(b, 'GET', loc);
    assert.equal(st.status, 204, st.text);
    assert.equal(st.headers.get('range'), `0-${all.length - 1}`);
    await commitAndCheck(b, loc, d, all.length);
  });
});
