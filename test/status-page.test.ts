// Issue #13, the status page (`GET /_berth/`, src/http/status/page.ts) in a real browser: Debian's chromium
// driven by playwright-core loads the page while a fill runs through a throttled link; the fill appears with
// a growing byte count, then leaves and its tag shows as cached. An error message carrying markup renders as
// text. With client auth on, the page needs the admin credentials. Screenshots go to test-artifacts/.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { type Browser, chromium, type Page } from 'playwright-core';
import { type InProcessBerth, startBerth } from './support/berth.ts';
import { buildImage, type Image, MediaTypes, pushImage } from './support/images.ts';
import { waitUntil } from './support/links.ts';
import { type Relay, startRelay } from './support/relay.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const run = promisify(execFile);
const CHROMIUM = '/usr/bin/chromium';
const ARTIFACTS = path.resolve('test-artifacts');
const LAYER_BYTES = 2_500_000;
const RATE = 350_000;
const ACCEPT = { accept: MediaTypes.oci.manifest };

let up: Upstream;
let link: Relay;
let work: string;
let slow: Image;
let berth: InProcessBerth;
let locked: InProcessBerth;
let browser: Browser;

before(async () => {
  // No skipping: CI installs Debian's chromium (.ci/run); a machine without it fails here.
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install chromium`);
  work = await makeTempDir('status-page');
  up = await startUpstream();
  slow = await buildImage({ format: 'oci', layers: [{ randomBytes: LAYER_BYTES, dir: work }] });
  await pushImage(up, 'lab/slow', '1', slow);
  link = await startRelay({ target: { host: '127.0.0.1', port: up.port }, rateBytesPerSec: RATE });
  berth = await startBerth({ upstreams: [{ host: link.host, url: link.url() }], maxSize: '1GiB' });
  const htpasswd = path.join(work, 'htpasswd');
  const users = await Promise.all([run('htpasswd', ['-Bbn', 'puller', 'pull-pw']), run('htpasswd', ['-Bbn', 'operator', 'op-pw'])]);
  await writeFile(htpasswd, `${users.map((u) => u.stdout.trim()).join('\n')}\n`);
  locked = await startBerth({ upstreams: [{ host: up.host, url: up.url }], auth: { htpasswd, admins: ['operator'] } });
  // playwright gives each launch a fresh user-data-dir of its own, removed at close.
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  await mkdir(ARTIFACTS, { recursive: true });
});

after(async () => {
  await browser?.close();
  await berth?.stop();
  await locked?.stop();
  await link?.close();
  await up?.stop();
  if (work) await removeTempDir(work);
});

/**
 * Opens a page, collecting what the browser complained about (CSP refusals, script errors). `status` is the
 * last status the document's URL answered: with an auth challenge the browser is not given credentials for,
 * chromium ends the navigation with ERR_INVALID_AUTH_CREDENTIALS after the 401 (no page is shown).
 */
async function open(url: string, o: { httpCredentials?: { username: string; password: string } } = {}): Promise<{ page: Page; problems: string[]; status: number; csp: string; failed?: string }> {
  const context = await browser.newContext(o.httpCredentials ? { httpCredentials: o.httpCredentials } : {});
  const page = await context.newPage();
  const problems: string[] = [];
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') problems.push(m.text());
  });
  page.on('pageerror', (e) => problems.push(e.message));
  let status = 0;
  page.on('response', (r) => {
    if (r.url() === url) status = r.status();
  });
  try {
    const res = await page.goto(url);
    assert.ok(res, 'no response');
    return { page, problems, status: res.status(), csp: (await res.allHeaders())['content-security-policy'] ?? '' };
  } catch (err) {
    return { page, problems, status, csp: '', failed: (err as Error).message };
  }
}

/** GETs `url` and reads the body to the end; resolves with its sha256. */
function pull(url: string): Promise<string> {
  return new Promise((resolve, reject) => {
    http
      .get(url, { agent: false }, (res) => {
        const h = createHash('sha256');
        res.on('data', (c: Buffer) => h.update(c));
        res.on('end', () => resolve(`sha256:${h.digest('hex')}`));
        res.on('error', reject);
      })
      .on('error', reject);
  });
}

const fillBytes = (page: Page, digest: string): Promise<number | undefined> =>
  page.evaluate((d) => {
    const tr = document.querySelector(`#fills tbody tr[data-digest="${d}"]`) as HTMLElement | null;
    return tr ? Number(tr.dataset.bytes) : undefined;
  }, digest);

describe('the status page in chromium', () => {
  test('a fill shows with a growing byte count, then leaves, and its tag shows as cached', async () => {
    const { page, problems, status, csp } = await open(`${berth.url}/_berth/`);
    assert.equal(status, 200);
    assert.match(csp, /default-src 'none'/);
    assert.match(csp, /script-src 'sha256-/);
    assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval|https?:/);
    await page.waitForSelector('#conn.ok', { timeout: 10_000 });
    assert.match((await page.textContent('#upstreams tbody')) ?? '', new RegExp(link.host.replace(/\./g, '\\.')));

    const layer = slow.layers[0]!;
    const m = await fetch(`${berth.url}/v2/lab/slow/manifests/1`, { headers: ACCEPT });
    assert.equal(m.status, 200);
    await m.arrayBuffer();
    const pulling = pull(`${berth.url}/v2/lab/slow/blobs/${layer.digest}`);
    const first = await waitUntil('the fill to appear on the page', async () => ((await fillBytes(page, layer.digest)) ?? 0) > 0 && (await fillBytes(page, layer.digest)), 15_000, 100);
    const row = await page.textContent(`#fills tbody tr[data-digest="${layer.digest}"]`);
    assert.match(row ?? '', /lab\/slow/);
    assert.match(row ?? '', / of 2\.\d\d MiB/, 'the size, human-readable');
    const grown = await waitUntil(
      'the byte count on the page to grow',
      async () => {
        const n = await fillBytes(page, layer.digest);
        return n !== undefined && n > first && n;
      },
      15_000,
      100,
    );
    assert.ok(grown < layer.size, 'the fill was already complete: the link is not throttled');
    const width = await page.$eval(`#fills tbody tr[data-digest="${layer.digest}"] .bar .fill`, (e) => (e as HTMLElement).style.width);
    assert.match(width, /^\d+(\.\d)?%$/);
    const during = path.join(ARTIFACTS, 'status-page-fill.png');
    await page.screenshot({ path: during, fullPage: true });
    console.log(`screenshot (fill running): ${during}`);

    assert.equal(await pulling, layer.digest);
    await page.waitForSelector(`#fills tbody tr[data-digest="${layer.digest}"]`, { state: 'detached', timeout: 15_000 });
    const ref = `${link.host}/lab/slow:1`;
    await page.waitForSelector(`#recent-tags tbody tr[data-reference="${ref}"]`, { timeout: 15_000 });
    assert.match((await page.textContent(`#recent-tags tbody tr[data-reference="${ref}"]`)) ?? '', /2\.\d\d MiB/);
    assert.match((await page.textContent('#fills tbody')) ?? '', /nothing is being fetched/);
    assert.match((await page.textContent('#disk')) ?? '', / of 1\.00 GiB/);
    const shot = path.join(ARTIFACTS, 'status-page.png');
    await page.screenshot({ path: shot, fullPage: true });
    console.log(`screenshot: ${shot}`);
    assert.deepEqual(problems, []);
    await page.context().close();
  });

  test('an error message carrying markup renders as text: no element is made of it, no script runs', async () => {
    const attack = '<img src=x onerror="window.__pwned=1"><b id=bold>bold</b>';
    const r = await fetch(`${berth.url}/v2/lab/slow/manifests/1?ns=${encodeURIComponent(attack)}`, { headers: ACCEPT });
    assert.equal(r.status, 400);
    await r.arrayBuffer();
    const { page, problems } = await open(`${berth.url}/_berth/`);
    await page.waitForFunction(() => document.querySelector('#errors tbody')?.textContent?.includes('onerror'), undefined, { timeout: 10_000 });
    const cell = await page.textContent('#errors tbody');
    assert.ok(cell?.includes('<img src=x onerror="window.__pwned=1">'), cell ?? '');
    assert.equal(await page.$$eval('img', (es) => es.length), 0);
    assert.equal(await page.$('#bold'), null);
    assert.equal(await page.evaluate(() => (window as unknown as { __pwned?: number }).__pwned), undefined);
    assert.deepEqual(problems, []);
    await page.context().close();
  });

  test('with client auth on, the page needs the admin credentials: 401 without, the page works with them', async () => {
    const anon = await open(`${locked.url}/_berth/`);
    assert.equal(anon.status, 401, anon.failed);
    if (anon.failed) assert.match(anon.failed, /ERR_INVALID_AUTH_CREDENTIALS/);
    else assert.doesNotMatch((await anon.page.content()) ?? '', /Fills in progress/);
    await anon.page.context().close();
    const puller = await open(`${locked.url}/_berth/`, { httpCredentials: { username: 'puller', password: 'pull-pw' } });
    assert.equal(puller.status, 403);
    await puller.page.context().close();
    const admin = await open(`${locked.url}/_berth/`, { httpCredentials: { username: 'operator', password: 'op-pw' } });
    assert.equal(admin.status, 200);
    // …and its polls of the JSON get through with the same credentials
    await admin.page.waitForSelector('#conn.ok', { timeout: 10_000 });
    assert.match((await admin.page.textContent('#version')) ?? '', /^berth \d+\.\d+\.\d+/);
    assert.match((await admin.page.textContent('#upstreams tbody')) ?? '', new RegExp(up.host.replace(/\./g, '\\.')));
    assert.deepEqual(admin.problems, []);
    await admin.page.context().close();
    // Last: chromium retries a rejected login, and the failures lock this address out for a while (auth-throttle.ts).
    const wrong = await open(`${locked.url}/_berth/`, { httpCredentials: { username: 'operator', password: 'wrong' } });
    assert.equal(wrong.status, 401, wrong.failed);
    await wrong.page.context().close();
  });
});
