// Issue #8 item 9 (admin part) and item 12's open endpoints: anyone who could reach berth could make it
// fetch and pin at will (one anonymous POST /_berth/prewarm with 20,000 references), and with client auth
// on, /metrics and /healthz stayed open on the main listener. Admin endpoints on the main listener answer
// only loopback clients (unless `admin.allowRemote`), and with client auth only `auth.admins` users; a
// prewarm request names at most `admin.maxPrewarmReferences` references; a prewarm whose client hung up
// stops before the next reference. docs/decisions.md "Admin endpoints", src/http/admin-guard.ts.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { isLoopbackAddress } from '../src/http/admin-guard.ts';
import { type InProcessBerth, startBerth } from './support/berth.ts';
import { describeOutcome, fetchOutcome } from './support/outcome.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const run = promisify(execFile);
const basic = (user: string, password: string): string => `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;

let up: Upstream;
let work: string;
let open: InProcessBerth;
let locked: InProcessBerth;

before(async () => {
  work = await makeTempDir('admin-endpoints');
  up = await startUpstream();
  const htpasswd = path.join(work, 'htpasswd');
  const users = await Promise.all([run('htpasswd', ['-Bbn', 'puller', 'pull-pw']), run('htpasswd', ['-Bbn', 'operator', 'op-pw'])]);
  await writeFile(htpasswd, `${users.map((u) => u.stdout.trim()).join('\n')}\n`);
  open = await startBerth({ upstreams: [{ host: up.host, url: up.url }], admin: { maxPrewarmReferences: 100 } });
  locked = await startBerth({ upstreams: [{ host: up.host, url: up.url }], auth: { htpasswd, admins: ['operator'] } });
});

after(async () => {
  await open?.stop();
  await locked?.stop();
  await up?.stop();
  await removeTempDir(work);
});

/** POST /_berth/prewarm; resolves with the status and body (or, with `hangUpAfterFirstLine`, as soon as one line came). */
function postPrewarm(base: string, references: string[], o: { authorization?: string; hangUpAfterFirstLine?: boolean } = {}): Promise<{ status: number; text: string }> {
  const body = JSON.stringify({ references });
  const u = new URL(base);
  return new Promise((resolve, reject) => {
    const headers: http.OutgoingHttpHeaders = { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) };
    if (o.authorization) headers.authorization = o.authorization;
    const req = http.request({ host: u.hostname, port: u.port, path: '/_berth/prewarm', method: 'POST', headers, agent: false }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => {
        text += c.toString('utf8');
        if (o.hangUpAfterFirstLine && text.includes('\n')) {
          req.destroy();
          resolve({ status: res.statusCode ?? 0, text });
        }
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
      res.on('error', () => resolve({ status: res.statusCode ?? 0, text }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

const manifestRequests = (since: number, marker: string) => up.accessLogSince(since).filter((e) => e.path.includes(marker)).length;

describe('prewarm limits', () => {
  test('a prewarm request with more references than admin.maxPrewarmReferences is refused whole, before any fetch', async () => {
    const mark = up.logLineCount();
    const refs = Array.from({ length: 101 }, (_, i) => `${up.host}/lab/cap-${i}:1`);
    const r = await postPrewarm(open.url, refs);
    assert.ok(r.status === 400 || r.status === 413, `status ${r.status}: ${r.text}`);
    assert.match(r.text, /at most 100 references/, r.text);
    const ok = await postPrewarm(open.url, [`${up.host}/lab/cap-ok:1`]);
    assert.equal(ok.status, 200, `a small request still works: ${ok.text}`);
    await up.waitForAccess((es) => es.some((e) => e.path.includes('/lab/cap-ok/')), { since: mark });
    assert.equal(manifestRequests(mark, '/lab/cap-'), manifestRequests(mark, '/lab/cap-ok/'), 'the refused request fetched something');
  });

  test('a prewarm whose client hung up stops fetching the references it had not started', async () => {
    const mark = up.logLineCount();
    const refs = Array.from({ length: 100 }, (_, i) => `${up.host}/lab/hangup-${i}:1`);
    const r = await postPrewarm(open.url, refs, { hangUpAfterFirstLine: true });
    assert.equal(r.status, 200, r.text);
    // Let the prewarm run on as long as it wants: the count must settle (no change for 1 s), far short of 100.
    let last = -1;
    let stableSince = Date.now();
    const deadline = Date.now() + 20_000;
    for (;;) {
      const n = manifestRequests(mark, '/lab/hangup-');
      if (n !== last) {
        last = n;
        stableSince = Date.now();
      } else if (Date.now() - stableSince > 1_000) break;
      assert.ok(Date.now() < deadline, 'upstream traffic did not settle');
      await new Promise((ok) => setTimeout(ok, 50));
    }
    const repos = new Set(
      up
        .accessLogSince(mark)
        .filter((e) => e.path.includes('/lab/hangup-'))
        .map((e) => /hangup-\d+/.exec(e.path)![0]),
    );
    assert.ok(repos.size <= 5, `berth went on through ${repos.size} of 100 references after the client hung up`);
  });
});

describe('admin endpoints with client auth', () => {
  test('/metrics, /healthz and /_berth/prewarm need credentials (401), a user who is not an admin gets 403, an admin gets in', async () => {
    for (const [method, p] of [
      ['GET', '/metrics'],
      ['GET', '/healthz'],
      ['GET', '/readyz'],
      ['POST', '/_berth/prewarm'],
    ] as const) {
      const anon = await fetchOutcome(locked.url, p, { method });
      assert.equal(anon.status, 401, `${method} ${p} anonymous: ${describeOutcome(anon)}`);
      assert.match(String(anon.headers?.['www-authenticate']), /^Basic realm=/);
      const user = await fetchOutcome(locked.url, p, { method, headers: { authorization: basic('puller', 'pull-pw') } });
      assert.equal(user.status, 403, `${method} ${p} as a puller: ${describeOutcome(user)}`);
    }
    const metrics = await fetchOutcome(locked.url, '/metrics', { headers: { authorization: basic('operator', 'op-pw') } });
    assert.equal(metrics.status, 200, describeOutcome(metrics));
    assert.match(metrics.body.toString('utf8'), /berth_http_requests_total/);
    const pw = await postPrewarm(locked.url, [`${up.host}/lab/admin-only:1`], { authorization: basic('operator', 'op-pw') });
    assert.equal(pw.status, 200, pw.text);
    assert.match(pw.text, /"type":"summary"/);
    // /livez stays open: it says only that the process answers.
    const live = await fetchOutcome(locked.url, '/livez');
    assert.equal(live.status, 200, describeOutcome(live));
  });

  test('the registry API is unchanged for pullers', async () => {
    const r = await fetchOutcome(locked.url, '/v2/', { headers: { authorization: basic('puller', 'pull-pw') } });
    assert.equal(r.status, 200, describeOutcome(r));
  });
});

describe('which clients count as local', () => {
  test('loopback addresses, in every spelling, and nothing else', () => {
    for (const a of ['127.0.0.1', '127.8.9.10', '::1', '::ffff:127.0.0.1']) assert.equal(isLoopbackAddress(a), true, a);
    for (const a of ['10.0.0.1', '192.168.1.20', '::ffff:10.0.0.1', 'fe80::1', '2001:db8::1', '0.0.0.0', '', undefined]) assert.equal(isLoopbackAddress(a), false, String(a));
  });
});
