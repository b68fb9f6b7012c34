// The blob half of the push API (issue #10, OCI distribution spec v1.1 "Pushing blobs") against a real berth
// over real HTTP: monolithic and chunked uploads, out-of-order chunks (416 with the session's Range), GET and
// DELETE of a session, a wrong digest (nothing kept), cross-repository mounts (local and cached sources),
// pushes to names that are not local (405 naming the writable prefixes), session ids that are not ours
// (404, never a path), a client that goes away mid-chunk and resumes, two writers of one session, idle
// expiry and a restart of berth between chunks. Local blob reads serve only what the repository references
// and never ask the upstream.
import assert from 'node:assert/strict';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { type InProcessBerth, startBerth } from './support/berth.ts';
import { blobFiles } from './support/berth-cli.ts';
import { request } from './support/http.ts';
import { buildImage, type Image, pushImage } from './support/images.ts';
import { waitUntil } from './support/links.ts';
import { committed } from './support/storage.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const LOCAL = { prefixes: ['site/'], allowAnonymousPush: true };

let up: Upstream;
let b: InProcessBerth;
let base: Image;
const extra: InProcessBerth[] = [];
const dirs: string[] = [];

before(async () => {
  up = await startUpstream();
  base = await buildImage({ format: 'oci', layers: [{ files: { 'etc/push-base.txt': `base ${Date.now()}\n` } }] });
  await pushImage(up, 'lab/base', '1', base);
  b = await startBerth({ upstreams: [{ host: up.host, url: up.url }], local: LOCAL });
});

after(async () => {
  for (const x of extra) await x.stop().catch(() => undefined);
  await b?.stop();
  await up?.stop();
  for (const d of dirs) await removeTempDir(d);
});

function sha(bytes: Buffer): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

interface Res {
  status: number;
  headers: Headers;
  text: string;
  code: string | undefined;
  message: string | undefined;
}

async function call(method: string, url: string, o: { body?: Buffer; headers?: Record<string, string>; on?: InProcessBerth } = {}): Promise<Res> {
  const res = await fetch(`${(o.on ?? b).url}${url}`, { method, headers: o.headers, body: o.body as BodyInit | undefined, redirect: 'manual' });
  const text = await res.text();
  let e: { code: string; message: string } | undefined;
  try {
    e = (JSON.parse(text) as { errors?: Array<{ code: string; message: string }> }).errors?.[0];
  } catch {
    e = undefined;
  }
  return { status: res.status, headers: res.headers, text, code: e?.code, message: e?.message };
}

/** Opens a session; returns its Location (a path). */
async function open(repo: string, on?: InProcessBerth): Promise<string> {
  const r = await call('POST', `/v2/${repo}/blobs/uploads/`, { ...(on ? { on } : {}) });
  assert.equal(r.status, 202, r.text);
  const loc = r.headers.get('location');
  assert.ok(loc?.startsWith(`/v2/${repo}/blobs/uploads/`), `Location ${loc}`);
  return loc!;
}

function patch(loc: string, bytes: Buffer, start?: number, on?: InProcessBerth): Promise<Res> {
  const headers: Record<string, string> = { 'Content-Type': 'application/octet-stream' };
  if (start !== undefined) headers['Content-Range'] = `${start}-${start + bytes.length - 1}`;
  return call('PATCH', loc, { body: bytes, headers, ...(on ? { on } : {}) });
}

function sessionFiles(storage: string): Promise<string[]> {
  return readdir(path.join(storage, 'uploads')).catch(() => []);
}

async function getBlob(repo: string, d: string, on?: InProcessBerth): Promise<{ status: number; bytes: Buffer }> {
  const res = await fetch(`${(on ?? b).url}/v2/${repo}/blobs/${d}`);
  return { status: res.status, bytes: Buffer.from(await res.arrayBuffer()) };
}

describe('uploads', () => {
  test('monolithic POST ?digest= commits the blob (201, Location, Docker-Content-Digest); the repository serves it, ranges too', async () => {
    const bytes = randomBytes(300_000);
    const d = sha(bytes);
    const r = await call('POST', `/v2/site/mono/blobs/uploads/?digest=${d}`, { body: bytes, headers: { 'Content-Type': 'application/octet-stream' } });
    assert.equal(r.status, 201, r.text);
    assert.equal(r.headers.get('location'), `/v2/site/mono/blobs/${d}`);
    assert.equal(r.headers.get('docker-content-digest'), d);
    assert.ok(committed(b, d), 'the blob is under blobs/');
    const head = await fetch(`${b.url}/v2/site/mono/blobs/${d}`, { method: 'HEAD' });
    assert.equal(head.status, 200);
    assert.equal(head.headers.get('content-length'), String(bytes.length));
    const got = await getBlob('site/mono', d);
    assert.equal(got.status, 200);
    assert.equal(sha(got.bytes), d);
    const ranged = await fetch(`${b.url}/v2/site/mono/blobs/${d}`, { headers: { Range: 'bytes=100-199' } });
    assert.equal(ranged.status, 206);
    assert.deepEqual(Buffer.from(await ranged.arrayBuffer()), bytes.subarray(100, 200));
    assert.deepEqual(await sessionFiles(b.storage), [], 'a monolithic upload leaves no session behind');
    // The same without the trailing slash on the POST path.
    const again = randomBytes(1234);
    const r2 = await call('POST', `/v2/site/mono/blobs/uploads?digest=${sha(again)}`, { body: again });
    assert.equal(r2.status, 201, r2.text);
    assert.equal(sha((await getBlob('site/mono', sha(again))).bytes), sha(again));
  });

  test('chunked: POST 202 (Location, Range 0-0, Docker-Upload-UUID), PATCHes with and without Content-Range, GET 204 with Range, PUT with a last chunk 201', async () => {
    const parts = [randomBytes(100_000), randomBytes(70_001), randomBytes(5), randomBytes(33_333)];
    const all = Buffer.concat(parts);
    const d = sha(all);
    const post = await call('POST', '/v2/site/chunked/blobs/uploads/');
    assert.equal(post.status, 202);
    assert.equal(post.headers.get('range'), '0-0');
    const loc = post.headers.get('location')!;
    assert.equal(post.headers.get('docker-upload-uuid'), loc.split('/').pop());
    let offset = 0;
    for (const [i, part] of parts.slice(0, 3).entries()) {
      // The second chunk goes without Content-Range: a streamed chunk appends.
      const r = await patch(loc, part, i === 1 ? undefined : offset);
      assert.equal(r.status, 202, r.text);
      offset += part.length;
      assert.equal(r.headers.get('range'), `0-${offset - 1}`);
      assert.equal(r.headers.get('location'), loc);
    }
    const status = await call('GET', loc);
    assert.equal(status.status, 204);
    assert.equal(status.headers.get('range'), `0-${offset - 1}`);
    const last = parts[3]!;
    const put = await call('PUT', `${loc}?digest=${d}`, { body: last, headers: { 'Content-Range': `${offset}-${offset + last.length - 1}` } });
    assert.equal(put.status, 201, put.text);
    assert.equal(put.headers.get('location'), `/v2/site/chunked/blobs/${d}`);
    assert.equal(put.headers.get('docker-content-digest'), d);
    const got = await getBlob('site/chunked', d);
    assert.equal(sha(got.bytes), d);
    assert.equal((await call('GET', loc)).status, 404, 'the session is gone after the commit');
  });

  test('an out-of-order chunk is 416 with the current Range (and Location); the session goes on from there', async () => {
    const one = randomBytes(1000);
    const two = randomBytes(1000);
    const loc = await open('site/order');
    assert.equal((await patch(loc, one, 0)).status, 202);
    for (const start of [0, 500, 1001, 5000]) {
      const r = await patch(loc, two, start);
      assert.equal(r.status, 416, `chunk at ${start}: ${r.text}`);
      assert.equal(r.headers.get('range'), '0-999');
      assert.equal(r.headers.get('location'), loc);
    }
    assert.equal((await call('GET', loc)).headers.get('range'), '0-999', 'refused chunks wrote nothing');
    // A Content-Range whose length is not the body's: refused, nothing written.
    const lying = await call('PATCH', loc, { body: two, headers: { 'Content-Range': '1000-1499' } });
    assert.equal(lying.status, 400, lying.text);
    assert.equal((await call('GET', loc)).headers.get('range'), '0-999');
    assert.equal((await patch(loc, two, 1000)).status, 202);
    const d = sha(Buffer.concat([one, two]));
    assert.equal((await call('PUT', `${loc}?digest=${d}`)).status, 201);
    assert.equal(sha((await getBlob('site/order', d)).bytes), d);
  });

  test('DELETE cancels a session (204): it is unknown afterwards and its files are gone', async () => {
    const loc = await open('site/cancel');
    await patch(loc, randomBytes(4096), 0);
    const id = loc.split('/').pop()!;
    assert.ok((await sessionFiles(b.storage)).some((f) => f.startsWith(id)));
    const del = await call('DELETE', loc);
    assert.equal(del.status, 204);
    assert.equal((await sessionFiles(b.storage)).filter((f) => f.startsWith(id)).length, 0);
    for (const method of ['GET', 'PATCH', 'DELETE']) {
      const r = await call(method, loc, method === 'PATCH' ? { body: randomBytes(3) } : {});
      assert.equal(r.status, 404, `${method} after DELETE`);
      assert.equal(r.code, 'BLOB_UPLOAD_UNKNOWN');
    }
  });

  test('a wrong digest is 400 DIGEST_INVALID and nothing is kept: no blob under blobs/, the session is gone', async () => {
    const bytes = randomBytes(50_000);
    const wrong = sha(Buffer.from('something else'));
    const loc = await open('site/wrong');
    await patch(loc, bytes, 0);
    const before = (await blobFiles(b.storage)).length;
    const r = await call('PUT', `${loc}?digest=${wrong}`);
    assert.equal(r.status, 400, r.text);
    assert.equal(r.code, 'DIGEST_INVALID');
    assert.equal(committed(b, wrong), false);
    assert.equal(committed(b, sha(bytes)), false);
    assert.equal((await blobFiles(b.storage)).length, before, 'nothing new under blobs/');
    assert.equal((await call('GET', loc)).status, 404, 'the session is removed');
    assert.equal((await sessionFiles(b.storage)).filter((f) => f.startsWith(loc.split('/').pop()!)).length, 0);
    // Monolithic with a wrong digest: the same, and no session left.
    const mono = await call('POST', `/v2/site/wrong/blobs/uploads/?digest=${wrong}`, { body: bytes });
    assert.equal(mono.status, 400);
    assert.equal(mono.code, 'DIGEST_INVALID');
    assert.deepEqual(await sessionFiles(b.storage), []);
    // A malformed or missing digest on PUT: 400, the session stays for a right one.
    const loc2 = await open('site/wrong');
    assert.equal((await call('PUT', `${loc2}?digest=sha256:xyz`)).status, 400);
    assert.equal((await call('PUT', loc2)).status, 400);
    assert.equal((await call('GET', loc2)).status, 204);
    await call('DELETE', loc2);
  });
});

describe('cross-repository mount', () => {
  test('from a local repository that references the blob: 201 with the blob Location; the target then serves it', async () => {
    const bytes = randomBytes(20_000);
    const d = sha(bytes);
    assert.equal((await call('POST', `/v2/site/mount-src/blobs/uploads/?digest=${d}`, { body: bytes })).status, 201);
    assert.equal((await getBlob('site/mount-dst', d)).status, 404, 'not in the target before the mount');
    const r = await call('POST', `/v2/site/mount-dst/blobs/uploads/?mount=${d}&from=site/mount-src`);
    assert.equal(r.status, 201, r.text);
    assert.equal(r.headers.get('location'), `/v2/site/mount-dst/blobs/${d}`);
    assert.equal(r.headers.get('docker-content-digest'), d);
    assert.equal(sha((await getBlob('site/mount-dst', d)).bytes), d);
  });

  test('a blob the source does not reference, or an unknown blob: a new session (202)', async () => {
    const bytes = randomBytes(1000);
    const d = sha(bytes);
    assert.equal((await call('POST', `/v2/site/mount-a/blobs/uploads/?digest=${d}`, { body: bytes })).status, 201);
    for (const q of [`mount=${d}&from=site/mount-other`, `mount=${sha(randomBytes(8))}&from=site/mount-a`, `mount=${d}`, `mount=${d}&from=NOT..a..name`]) {
      const r = await call('POST', `/v2/site/mount-b/blobs/uploads/?${q}`);
      assert.equal(r.status, 202, `${q}: ${r.text}`);
      assert.ok(r.headers.get('location')?.startsWith('/v2/site/mount-b/blobs/uploads/'));
      assert.ok(r.headers.get('docker-upload-uuid'));
      await call('DELETE', r.headers.get('location')!);
    }
    assert.equal((await getBlob('site/mount-b', d)).status, 404, 'no mount happened');
  });

  test('from a cached repository berth holds the blob for: 201; from one it never pulled: 202', async () => {
    const layer = base.layers[0]!;
    assert.equal((await call('POST', `/v2/site/mount-cached/blobs/uploads/?mount=${layer.digest}&from=lab/base`)).status, 202, 'not cached yet');
    const pulled = await fetch(`${b.url}/v2/lab/base/manifests/1`, { headers: { Accept: base.mediaType } });
    assert.equal(pulled.status, 200);
    await pulled.arrayBuffer();
    assert.equal((await getBlob('lab/base', layer.digest)).status, 200);
    const r = await call('POST', `/v2/site/mount-cached/blobs/uploads/?mount=${layer.digest}&from=lab/base`);
    assert.equal(r.status, 201, r.text);
    assert.equal(sha((await getBlob('site/mount-cached', layer.digest)).bytes), layer.digest);
    assert.equal((await call('POST', `/v2/site/mount-cached2/blobs/uploads/?mount=${layer.digest}&from=lab/other`)).status, 202);
  });
});

describe('what is not a local push', () => {
  test('a push to a name that is not local is 405 UNSUPPORTED naming the writable prefixes; so is ?ns= on a local name', async () => {
    const d = sha(Buffer.from('x'));
    for (const [method, p] of [
      ['POST', '/v2/lab/base/blobs/uploads/'],
      ['POST', `/v2/lab/base/blobs/uploads/?digest=${d}`],
      ['PATCH', `/v2/lab/base/blobs/uploads/${randomUUID()}`],
      ['PUT', `/v2/lab/base/blobs/uploads/${randomUUID()}?digest=${d}`],
      ['DELETE', `/v2/lab/base/blobs/uploads/${randomUUID()}`],
      ['POST', `/v2/site/x/blobs/uploads/?ns=${up.host}`],
      ['POST', '/v2/site/blobs/uploads/'],
    ] as const) {
      const r = await call(method, p, method === 'POST' && p.includes('digest') ? { body: Buffer.from('x') } : {});
      assert.equal(r.status, 405, `${method} ${p}: ${r.text}`);
      assert.equal(r.code, 'UNSUPPORTED');
      assert.match(r.message ?? '', /local repositories are under "site\/"/, `${method} ${p}: the message names the writable prefix`);
    }
  });

  test('malformed push requests are a clear 400 and leave the session as it was', async () => {
    const loc = await open('site/bad');
    assert.equal((await patch(loc, Buffer.from('abc'), 0)).status, 202);
    const d = sha(Buffer.from('abc'));
    const filesBefore = await sessionFiles(b.storage);
    const cases: Array<[string, string, Record<string, string>, Buffer | undefined, string]> = [
      ['PATCH', loc, { 'Content-Range': 'bytes=3-' }, Buffer.from('d'), 'BLOB_UPLOAD_INVALID'],
      ['PATCH', loc, { 'Content-Range': '5-3' }, Buffer.from('d'), 'BLOB_UPLOAD_INVALID'],
      ['PATCH', loc, { 'Content-Range': 'x-y' }, Buffer.from('d'), 'BLOB_UPLOAD_INVALID'],
      ['PUT', `${loc}?digest=${d}&digest=${d}`, {}, undefined, 'QUERY_INVALID'],
      ['PUT', `${loc}?digest=sha512:${'a'.repeat(128)}`, {}, undefined, 'DIGEST_INVALID'],
      ['POST', '/v2/site/bad/blobs/uploads/', {}, Buffer.from('a body without ?digest='), 'BLOB_UPLOAD_INVALID'],
      ['POST', '/v2/site/bad/blobs/uploads/?mount=sha256:nothex&from=site/x', {}, undefined, 'DIGEST_INVALID'],
      ['POST', '/v2/site/bad/blobs/uploads/?digest=nonsense', {}, Buffer.from('x'), 'DIGEST_INVALID'],
      ['POST', '/v2/site/Bad_Name/blobs/uploads/', {}, undefined, 'NAME_INVALID'],
    ];
    for (const [method, p, headers, body, code] of cases) {
      const r = await call(method, p, { headers, ...(body ? { body } : {}) });
      assert.equal(r.status, 400, `${method} ${p} ${JSON.stringify(headers)}: ${r.text}`);
      assert.equal(r.code, code, `${method} ${p} ${JSON.stringify(headers)}`);
    }
    assert.equal((await call('GET', loc)).headers.get('range'), '0-2', 'nothing was written by the refused requests');
    assert.deepEqual(await sessionFiles(b.storage), filesBefore, 'refused POSTs left no session');
    assert.equal((await call('PUT', `${loc}?digest=${d}`)).status, 201);
  });

  test("session ids that are not ours are 404 BLOB_UPLOAD_UNKNOWN: made up, path traversal, another repository's", async () => {
    const theirs = await open('site/owner');
    await patch(theirs, Buffer.from('owned bytes'), 0);
    const theirId = theirs.split('/').pop()!;
    const ids = ['nope', randomUUID(), '..%2F..%2Fberth.db', '%2e%2e%2f%2e%2e%2fberth.db', `..%2Fuploads%2F${theirId}`, theirId.toUpperCase(), `${theirId}.json`, theirId];
    for (const id of ids) {
      for (const method of ['GET', 'PATCH', 'PUT', 'DELETE']) {
        const q = method === 'PUT' ? `?digest=${sha(Buffer.from('owned bytes'))}` : '';
        const r = await request(b.url, `/v2/site/intruder/blobs/uploads/${id}${q}`, { method, headers: { 'Content-Length': '0' } });
        assert.equal(r.status, 404, `${method} ${id}: ${r.body}`);
        assert.equal(JSON.parse(r.body.toString()).errors[0].code, 'BLOB_UPLOAD_UNKNOWN', `${method} ${id}`);
      }
    }
    // Raw `..` segments never reach a session either (no route has them).
    const dots = await request(b.url, '/v2/site/intruder/blobs/uploads/../../../berth.db', { method: 'PATCH', headers: { 'Content-Length': '0' } });
    assert.ok(dots.status === 404 || dots.status === 405, `raw ..: ${dots.status}`);
    // The owner's session is untouched by all of that.
    const st = await call('GET', theirs);
    assert.equal(st.status, 204);
    assert.equal(st.headers.get('range'), `0-${'owned bytes'.length - 1}`);
    await call('DELETE', theirs);
  });

  test('local blob reads: only blobs the repository references; never the upstream, even for a digest it has', async () => {
    const bytes = randomBytes(2000);
    const d = sha(bytes);
    assert.equal((await call('POST', `/v2/site/reads-a/blobs/uploads/?digest=${d}`, { body: bytes })).status, 201);
    const other = await fetch(`${b.url}/v2/site/reads-b/blobs/${d}`);
    assert.equal(other.status, 404);
    assert.equal(((await other.json()) as { errors: Array<{ code: string }> }).errors[0]!.code, 'BLOB_UNKNOWN');
    assert.equal((await fetch(`${b.url}/v2/site/reads-b/blobs/${d}`, { method: 'HEAD' })).status, 404);
    // The base image's config is on the upstream (lab/base) and not in any local repository.
    const mark = up.logLineCount();
    const cfg = base.config.digest;
    assert.equal((await getBlob('site/reads-a', cfg)).status, 404);
    assert.equal((await fetch(`${b.url}/v2/site/reads-a/blobs/${cfg}`, { method: 'HEAD' })).status, 404);
    assert.equal((await getBlob('lab/base', cfg)).status, 200, 'a cached pull still works');
    const seen = await up.waitForAccess((es) => es.some((e) => e.path.includes(cfg)), { since: mark });
    assert.ok(
      seen.every((e) => !e.path.includes('site/')),
      'no local name went to the upstream',
    );
  });
});

describe('sessions over time', () => {
  test('a client that goes away mid-PATCH leaves the session at what arrived; it resumes from there and commits', async () => {
    const all = randomBytes(3 * 1024 * 1024);
    const d = sha(all);
    const loc = await open('site/abort');
    const cut = 1024 * 1024 + 17;
    await new Promise<void>((resolve) => {
      const u = new URL(b.url);
      const req = http.request({ host: u.hostname, port: u.port, path: loc, method: 'PATCH', headers: { 'Content-Length': String(all.length), 'Content-Range': `0-${all.length - 1}` }, agent: false });
      req.on('error', () => resolve());
      req.on('response', () => resolve());
      req.write(all.subarray(0, cut), () => {
        // Wait until berth has the bytes in the session file, then go away.
        void waitUntil('the first MiB in the session', async () => {
          const r = await call('GET', loc);
          return r.headers.get('range') === `0-${cut - 1}`;
        })
          .catch(() => undefined)
          .finally(() => req.destroy());
      });
    });
    // GET answers 204 while the aborted PATCH still holds the session only if it was released: poll.
    const range = await waitUntil('the aborted PATCH released the session', async () => {
      const again = await patch(loc, Buffer.alloc(0), undefined).catch(() => undefined);
      return again?.status === 202 ? again.headers.get('range') : undefined;
    });
    assert.equal(range, `0-${cut - 1}`);
    const rest = all.subarray(cut);
    assert.equal((await patch(loc, rest, cut)).status, 202);
    const put = await call('PUT', `${loc}?digest=${d}`);
    assert.equal(put.status, 201, put.text);
    assert.equal(sha((await getBlob('site/abort', d)).bytes), d);
  });

  test('two PATCHes to one session at once: one writes, the other is 416 with the Range; bytes never interleave', async () => {
    const loc = await open('site/race');
    const first = randomBytes(2 * 1024 * 1024);
    const u = new URL(b.url);
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    const slow = new Promise<number>((resolve, reject) => {
      const req = http.request(
        { host: u.hostname, port: u.port, path: loc, method: 'PATCH', headers: { 'Content-Length': String(first.length), 'Content-Range': `0-${first.length - 1}` }, agent: false },
        (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode ?? 0));
        },
      );
      req.on('error', reject);
      req.write(first.subarray(0, 1024 * 1024));
      void held.then(() => req.end(first.subarray(1024 * 1024)));
    });
    await waitUntil('the slow PATCH wrote its first half', async () => {
      const names = await sessionFiles(b.storage);
      const data = names.find((n) => loc.endsWith(n.replace('.data', '')) && n.endsWith('.data'));
      return data !== undefined && (await stat(path.join(b.storage, 'uploads', data))).size >= 1024 * 1024;
    });
    const other = await patch(loc, randomBytes(1000), 0);
    assert.equal(other.status, 416, other.text);
    assert.ok(other.headers.get('range'));
    const other2 = await patch(loc, randomBytes(1000));
    assert.equal(other2.status, 416, 'a streamed chunk is refused too');
    release();
    assert.equal(await slow, 202);
    const put = await call('PUT', `${loc}?digest=${sha(first)}`);
    assert.equal(put.status, 201, `the session holds exactly the first writer's bytes: ${put.text}`);
  });

  test('a session nothing is sent to for local.uploadIdle is removed (files and session)', async () => {
    const idle = await startBerth({ upstreams: [{ host: up.host, url: up.url }], local: { ...LOCAL, uploadIdle: '400ms' } });
    extra.push(idle);
    const loc = await open('site/idle', idle);
    await patch(loc, randomBytes(1000), 0, idle);
    assert.equal((await sessionFiles(idle.storage)).length, 2);
    await waitUntil('the idle session removed', async () => (await sessionFiles(idle.storage)).length === 0, 10_000);
    const r = await call('GET', loc, { on: idle });
    assert.equal(r.status, 404);
    assert.equal(r.code, 'BLOB_UPLOAD_UNKNOWN');
  });

  test("a session's bytes count against storage.maxSize: a big upload makes room by evicting cached blobs", async () => {
    const small = await startBerth({ upstreams: [{ host: up.host, url: up.url }], local: LOCAL, maxSize: '1MB' });
    extra.push(small);
    const cached = [base.config.digest, base.layers[0]!.digest];
    for (const d of cached) assert.equal((await getBlob('lab/base', d, small)).status, 200);
    assert.ok(cached.every((d) => committed(small, d)));
    const loc = await open('site/quota', small);
    assert.equal((await patch(loc, randomBytes(2_000_000), 0, small)).status, 202);
    // The newest cached blob is never evicted (the layer a client just pulled); the older one goes.
    await waitUntil('a cached blob evicted to make room for the session', () => !committed(small, cached[0]!), 10_000);
    assert.equal((await call('GET', loc, { on: small })).headers.get('range'), '0-1999999', 'the session itself is kept');
  });

  test('a restart of berth between chunks: the session survives, is re-hashed and commits with the right digest', async () => {
    const storage = await makeTempDir('push-restart');
    dirs.push(storage);
    const opts = { upstreams: [{ host: up.host, url: up.url }], local: LOCAL, storage };
    let one: InProcessBerth | undefined = await startBerth(opts);
    const parts = [randomBytes(600_000), randomBytes(400_000)];
    const all = Buffer.concat(parts);
    const loc = await open('site/restart', one);
    assert.equal((await patch(loc, parts[0]!, 0, one)).status, 202);
    await one.stop();
    one = undefined;
    const two = await startBerth(opts);
    extra.push(two);
    const st = await call('GET', loc, { on: two });
    assert.equal(st.status, 204);
    assert.equal(st.headers.get('range'), `0-${parts[0]!.length - 1}`);
    assert.equal((await patch(loc, parts[1]!, parts[0]!.length, two)).status, 202);
    const d = sha(all);
    const put = await call('PUT', `${loc}?digest=${d}`, { on: two });
    assert.equal(put.status, 201, put.text);
    assert.equal(sha((await getBlob('site/restart', d, two)).bytes), d);
    assert.ok(existsSync(path.join(storage, 'blobs', 'sha256', d.slice(7, 9), d.slice(7))));
  });
});
