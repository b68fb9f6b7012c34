// A chunked blob upload driven by hand with curl (issue #10 "Proof"): POST a session, PATCH the first chunk
// with Content-Range, send an out-of-order chunk (416 with the current Range), restart berth on the same
// storage, ask the session where it stands (204 with Range), send the rest, finish with PUT ?digest= and read
// the blob back. curl is what an operator reaches for; its requests are the spec's, nothing berth-specific.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';
import { type InProcessBerth, startBerth } from './support/berth.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const run = promisify(execFile);

let up: Upstream;
let dir: string;
const running: InProcessBerth[] = [];

before(async () => {
  up = await startUpstream();
  dir = await makeTempDir('push-curl');
});

after(async () => {
  for (const b of running) await b.stop().catch(() => undefined);
  await up?.stop();
  await removeTempDir(dir);
});

interface CurlAnswer {
  status: number;
  headers: Map<string, string>;
  body: Buffer;
}

/** One curl request (no proxy, loopback only): status, response headers (lower-case names) and body. */
async function curl(method: string, url: string, o: { data?: string; headers?: string[] } = {}): Promise<CurlAnswer> {
  const headerFile = path.join(dir, `h-${randomBytes(4).toString('hex')}`);
  const bodyFile = path.join(dir, `b-${randomBytes(4).toString('hex')}`);
  const args = ['-sS', '--noproxy', '*', '-X', method, '-D', headerFile, '-o', bodyFile, '-w', '%{http_code}'];
  for (const h of o.headers ?? []) args.push('-H', h);
  if (o.data !== undefined) args.push('--data-binary', `@${o.data}`);
  args.push(url);
  const { stdout } = await run('curl', args);
  const headers = new Map<string, string>();
  for (const line of (await readFile(headerFile, 'utf8')).split('\r\n').slice(1)) {
    const i = line.indexOf(':');
    if (i > 0) headers.set(line.slice(0, i).trim().toLowerCase(), line.slice(i + 1).trim());
  }
  return { status: Number(stdout), headers, body: await readFile(bodyFile).catch(() => Buffer.alloc(0)) };
}

test('curl: chunks, an out-of-order chunk, a berth restart in between, then the blob byte for byte', async () => {
  const storage = await makeTempDir('push-curl-storage');
  const opts = { upstreams: [{ host: up.host, url: up.url }], local: { prefixes: ['site/'], allowAnonymousPush: true }, storage };
  const blob = randomBytes(3 * 1024 * 1024 + 17);
  const digest = `sha256:${createHash('sha256').update(blob).digest('hex')}`;
  const cut = 1024 * 1024;
  const chunk = async (name: string, from: number, to: number) => {
    const file = path.join(dir, name);
    await writeFile(file, blob.subarray(from, to));
    return file;
  };
  const first = await chunk('first', 0, cut);
  const rest = await chunk('rest', cut, blob.length);
  const late = await chunk('late', cut + 4096, blob.length);

  let b = await startBerth(opts);
  running.push(b);
  const post = await curl('POST', `${b.url}/v2/site/curl/blobs/uploads/`);
  assert.equal(post.status, 202, post.body.toString());
  const location = post.headers.get('location')!;
  assert.match(location, /^\/v2\/site\/curl\/blobs\/uploads\/[0-9a-f-]{36}$/);

  const one = await curl('PATCH', `${b.url}${location}`, { data: first, headers: ['Content-Type: application/octet-stream', `Content-Range: 0-${cut - 1}`] });
  assert.equal(one.status, 202, one.body.toString());
  assert.equal(one.headers.get('range'), `0-${cut - 1}`);

  const gap = await curl('PATCH', `${b.url}${location}`, { data: late, headers: ['Content-Type: application/octet-stream', `Content-Range: ${cut + 4096}-${blob.length - 1}`] });
  assert.equal(gap.status, 416, 'a chunk that does not continue at the offset');
  assert.equal(gap.headers.get('range'), `0-${cut - 1}`, 'the 416 says where the session stands');

  await b.stop();
  running.pop();
  b = await startBerth(opts);
  running.push(b);

  const where = await curl('GET', `${b.url}${location}`);
  assert.equal(where.status, 204);
  assert.equal(where.headers.get('range'), `0-${cut - 1}`, 'the session survived the restart');
  const two = await curl('PATCH', `${b.url}${location}`, { data: rest, headers: ['Content-Type: application/octet-stream', `Content-Range: ${cut}-${blob.length - 1}`] });
  assert.equal(two.status, 202, two.body.toString());
  const put = await curl('PUT', `${b.url}${location}?digest=${digest}`);
  assert.equal(put.status, 201, put.body.toString());
  assert.equal(put.headers.get('docker-content-digest'), digest);
  assert.equal(put.headers.get('location'), `/v2/site/curl/blobs/${digest}`);

  const back = await curl('GET', `${b.url}/v2/site/curl/blobs/${digest}`);
  assert.equal(back.status, 200);
  assert.ok(back.body.equals(blob), 'the blob comes back byte for byte');
  await b.stop();
  running.pop();
  await removeTempDir(storage);
});
