// Serving securely (issue #5, security): HTTPS from the config with a certificate from a private CA that
// skopeo (--src-cert-dir) and containerd (hosts.toml `ca = …`) trust; SIGHUP swaps in a replaced
// certificate without a restart (and a broken one is refused, keeping the old); client authentication with
// an htpasswd file (bcrypt) and static bearer tokens; `auth.anonymous: true`; and `admin.listen`, which moves
// /metrics, /healthz and /_berth/prewarm off the registry port. Real clients, loopback only.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import tls from 'node:tls';
import { promisify } from 'node:util';
import { type InProcessBerth, startBerth } from './support/berth.ts';
import { type BerthChild, startBerthChild } from './support/berth-child.ts';
import { type Containerd, mirrorHostsToml, startContainerd } from './support/containerd.ts';
import { ACCEPT_ALL_MANIFESTS, type Seeded, seedStandard } from './support/images.ts';
import { upstreamTrafficSince, waitUntil } from './support/links.ts';
import { describeOutcome, fetchOutcome, sha256Of } from './support/outcome.ts';
import { freePort } from './support/ports.ts';
import { assertPulledImage } from './support/pulled-image.ts';
import { DEAD_ENDPOINT } from './support/safety.ts';
import { skopeoCopy } from './support/skopeo.ts';
import { issueServerCert, makeCa, type TestCa } from './support/tls-ca.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const run = promisify(execFile);

let up: Upstream;
let seeded: Seeded;
let work: string;
let pulls = 0;
const cleanups: Array<() => Promise<unknown>> = [];

before(async () => {
  work = await makeTempDir('serving-securely');
  up = await startUpstream();
  seeded = await seedStandard(up, path.join(work, 'seed'));
});

after(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
  await up?.stop();
  if (work) await removeTempDir(work);
});

const dest = (name: string): string => path.join(work, `pull-${name}-${++pulls}`);

let containerd: Containerd | undefined;

/** One containerd for the file, started when a test first needs it. */
async function sharedContainerd(): Promise<Containerd> {
  if (!containerd) {
    containerd = await startContainerd();
    const c = containerd;
    cleanups.unshift(() => c.stop()); // stopped last-but-first: after the berths it pulls from are gone is fine too
  }
  return containerd;
}

/** The certificate a TLS server presents, as node sees it after verifying it against `ca`. */
function servedFingerprint(port: number, ca: Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port, ca, servername: 'localhost' }, () => {
      const fp = s.getPeerCertificate().fingerprint256;
      s.end();
      resolve(fp);
    });
    s.on('error', reject);
  });
}

describe('HTTPS from the config', () => {
  let ca: TestCa;
  let certFile: string;
  let keyFile: string;
  let first: string;
  let b: BerthChild;

  before(async () => {
    ca = await makeCa(path.join(work, 'ca'));
    certFile = path.join(work, 'berth.crt');
    keyFile = path.join(work, 'berth.key');
    first = (await issueServerCert(ca, certFile, keyFile)).fingerprint256;
    b = await startBerthChild({
      upstreams: [
        { host: 'docker.io', url: up.url },
        { host: up.host, url: up.url },
      ],
      tls: { certificate: certFile, key: keyFile },
    });
    cleanups.push(() => b.stop());
  });

  test('berth serves HTTPS with the configured certificate, and plain HTTP on the same port gets no registry answer', async () => {
    assert.equal(await servedFingerprint(b.port, await readFile(ca.caFile)), first);
    const plain = await fetchOutcome(`http://127.0.0.1:${b.port}`, '/v2/', { timeoutMs: 5_000 });
    assert.ok(plain.status === undefined || plain.status >= 400, `plain HTTP got ${describeOutcome(plain)}`);
  });

  test('skopeo pulls through HTTPS trusting the CA with --src-cert-dir, and refuses berth without it', async () => {
    const dir = dest('tls');
    await skopeoCopy(`docker://${b.host}/lab/small:1`, `dir:${dir}`, { srcCertDir: ca.certDir });
    await assertPulledImage(dir, seeded.small);
    await assert.rejects(skopeoCopy(`docker://${b.host}/lab/small:1`, `dir:${dest('untrusted')}`, { srcTlsVerify: true }), /certificate|x509|unknown authority/i);
  });

  test('containerd pulls through HTTPS with hosts.toml `ca = …`', async () => {
    const c = await sharedContainerd();
    await c.writeHosts('docker.io', mirrorHostsToml(`https://127.0.0.1:${b.port}`, { ca: ca.caFile }));
    await c.pull('docker.io/lab/multi:1');
    const { stdout } = await c.ctr(['images', 'ls']);
    const row = stdout.split('\n').find((l) => l.startsWith('docker.io/lab/multi:1'));
    assert.ok(row, `containerd has the image:\n${stdout}`);
    assert.equal(row.trim().split(/\s+/)[2], seeded.multi.digest, "containerd resolved the upstream's index digest");
  });

  test('SIGHUP makes berth serve a replaced certificate without a restart; pulls go on working', async () => {
    const pid = b.process.pid;
    const ca0 = await readFile(ca.caFile);
    const next = (await issueServerCert(ca, certFile, keyFile)).fingerprint256;
    assert.notEqual(next, first);
    assert.equal(await servedFingerprint(b.port, ca0), first, 'before the signal the old certificate is still served');
    b.signal('SIGHUP');
    await waitUntil('the new certificate to be served', async () => (await servedFingerprint(b.port, ca0)) === next, 10_000, 50);
    assert.equal(b.process.pid, pid, 'the same process');
    assert.ok(b.process.running);
    const dir = dest('after-reload');
    await skopeoCopy(`docker://${b.host}/lab/small:v2s2`, `dir:${dir}`, { srcCertDir: ca.certDir });
    await assertPulledImage(dir, seeded.v2s2);
  });

  test('SIGHUP with a broken certificate file keeps the old certificate and berth keeps serving', async () => {
    const ca0 = await readFile(ca.caFile);
    const current = await servedFingerprint(b.port, ca0);
    const good = await readFile(certFile);
    await writeFile(certFile, '-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n');
    try {
      b.signal('SIGHUP');
      await waitUntil('berth to log the failed reload', () => /TLS reload failed/.test(b.log()), 10_000, 50);
      assert.ok(b.process.running, 'berth died on a broken certificate');
      assert.equal(await servedFingerprint(b.port, ca0), current, 'the old certificate is still served');
      const r = await fetchOutcome(b.url, '/v2/lab/small/manifests/1', { ca: ca0, headers: { accept: ACCEPT_ALL_MANIFESTS } });
      assert.equal(r.status, 200, describeOutcome(r));
    } finally {
      await writeFile(certFile, good);
    }
  });
});

describe('client authentication', () => {
  const USER = 'puller';
  const PASSWORD = 'correct horse battery staple';
  const TOKEN = 'ci-token-5f2c9a1e7b';
  let htpasswd: string;
  let tokens: string;
  let locked: InProcessBerth;
  let open: InProcessBerth;

  before(async () => {
    htpasswd = path.join(work, 'htpasswd');
    const { stdout } = await run('htpasswd', ['-Bbn', USER, PASSWORD]);
    await writeFile(htpasswd, stdout);
    tokens = path.join(work, 'tokens');
    await writeFile(tokens, `# automation tokens\n${TOKEN}   # the CI runner\n`);
    locked = await startBerth({ upstreams: [{ host: up.host, url: up.url }], auth: { htpasswd, tokensFile: tokens } });
    cleanups.push(() => locked.stop());
    open = await startBerth({ upstreams: [{ host: up.host, url: up.url }], auth: { htpasswd, anonymous: true } });
    cleanups.push(() => open.stop());
  });

  const basic = (user: string, password: string): string => `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;

  test('anonymous requests are denied with 401 and a WWW-Authenticate challenge, and nothing is fetched upstream', async () => {
    const mark = up.logLineCount();
    for (const p of ['/v2/', '/v2/lab/small/manifests/1', `/v2/lab/small/blobs/${seeded.small.layers[0]!.digest}`, '/v2/lab/small/tags/list']) {
      const r = await fetchOutcome(locked.url, p);
      assert.equal(r.status, 401, `${p}: ${describeOutcome(r)}`);
      assert.match(String(r.headers?.['www-authenticate']), /^Basic realm=/, `${p}: the challenge`);
      assert.match(r.body.toString('utf8'), /UNAUTHORIZED/);
    }
    assert.deepEqual(await upstreamTrafficSince(up, mark), [], 'an unauthenticated request reached the upstream');
  });

  test('skopeo with --src-creds (htpasswd, bcrypt) pulls the image', async () => {
    const dir = dest('creds');
    await skopeoCopy(`docker://${locked.host}/lab/small:1`, `dir:${dir}`, { srcCreds: `${USER}:${PASSWORD}` });
    await assertPulledImage(dir, seeded.small);
  });

  test('a wrong password or an unknown user gets 401, over HTTP and from skopeo', async () => {
    for (const auth of [basic(USER, 'wrong'), basic('nobody', PASSWORD), basic(USER, ''), 'Basic !!!', `Bearer not-${TOKEN}`, 'Digest x']) {
      const r = await fetchOutcome(locked.url, '/v2/lab/small/manifests/1', { headers: { authorization: auth, accept: ACCEPT_ALL_MANIFESTS } });
      assert.equal(r.status, 401, `${auth}: ${describeOutcome(r)}`);
    }
    const ok = await fetchOutcome(locked.url, '/v2/lab/small/manifests/1', { headers: { authorization: basic(USER, PASSWORD), accept: ACCEPT_ALL_MANIFESTS } });
    assert.equal(ok.status, 200, `the right password: ${describeOutcome(ok)}`);
    await assert.rejects(skopeoCopy(`docker://${locked.host}/lab/small:1`, `dir:${dest('wrong')}`, { srcCreds: `${USER}:wrong` }), /401|unauthorized|authentication/i);
  });

  test('a bearer token from tokensFile works, over HTTP and from containerd (hosts.toml Authorization header)', async () => {
    const r = await fetchOutcome(locked.url, '/v2/lab/multi/manifests/1', { headers: { authorization: `Bearer ${TOKEN}`, accept: ACCEPT_ALL_MANIFESTS } });
    assert.equal(r.status, 200, describeOutcome(r));
    assert.equal(sha256Of(r.body), seeded.multi.digest);
    // containerd as a CI node configured with a static token: sent on every request to the mirror.
    const c = await sharedContainerd();
    const mirror = `http://127.0.0.1:${locked.port}`;
    await c.writeHosts(
      up.host,
      `server = "http://${DEAD_ENDPOINT}"\n\n[host."${mirror}"]\n  capabilities = ["pull", "resolve"]\n  [host."${mirror}".header]\n    Authorization = ["Bearer ${TOKEN}"]\n`,
    );
    await c.pull(`${up.host}/lab/small:v2s2`);
    const { stdout } = await c.ctr(['images', 'ls']);
    const row = stdout.split('\n').find((l) => l.startsWith(`${up.host}/lab/small:v2s2`));
    assert.ok(row, `containerd has the image:\n${stdout}`);
    assert.equal(row.trim().split(/\s+/)[2], seeded.v2s2.manifestDigest);
  });

  test('auth.anonymous: true lets anonymous clients pull, while wrong credentials are still refused', async () => {
    const dir = dest('anonymous');
    await skopeoCopy(`docker://${open.host}/lab/small:1`, `dir:${dir}`);
    await assertPulledImage(dir, seeded.small);
    const wrong = await fetchOutcome(open.url, '/v2/lab/small/manifests/1', { headers: { authorization: basic(USER, 'wrong'), accept: ACCEPT_ALL_MANIFESTS } });
    assert.equal(wrong.status, 401, describeOutcome(wrong));
    const right = await fetchOutcome(open.url, '/v2/lab/small/manifests/1', { headers: { authorization: basic(USER, PASSWORD), accept: ACCEPT_ALL_MANIFESTS } });
    assert.equal(right.status, 200, describeOutcome(right));
  });
});

describe('a separate admin listener', () => {
  let b: InProcessBerth;
  let admin: string;

  before(async () => {
    const port = await freePort();
    admin = `http://127.0.0.1:${port}`;
    b = await startBerth({ upstreams: [{ host: up.host, url: up.url }], admin: { listen: `127.0.0.1:${port}` } });
    cleanups.push(() => b.stop());
  });

  test('with admin.listen, /metrics, /healthz and /_berth/prewarm answer 404 on the registry port', async () => {
    for (const [method, p] of [
      ['GET', '/metrics'],
      ['GET', '/healthz'],
      ['POST', '/_berth/prewarm'],
    ] as const) {
      const r = await fetchOutcome(b.url, p, { method, headers: { 'content-type': 'application/json' } });
      assert.equal(r.status, 404, `${method} ${p} on the registry port: ${describeOutcome(r)}`);
    }
    const v2 = await fetchOutcome(b.url, '/v2/');
    assert.equal(v2.status, 200, 'the registry API stays on the main port');
  });

  test('the admin port serves /metrics and /healthz but not the registry API', async () => {
    const metrics = await fetchOutcome(admin, '/metrics');
    assert.equal(metrics.status, 200, describeOutcome(metrics));
    assert.match(metrics.body.toString('utf8'), /^# (HELP|TYPE) /m);
    const health = await fetchOutcome(admin, '/healthz');
    assert.equal(health.status, 200, describeOutcome(health));
    const v2 = await fetchOutcome(admin, '/v2/lab/small/manifests/1');
    assert.equal(v2.status, 404, `the registry API on the admin port: ${describeOutcome(v2)}`);
  });

  test('POST /_berth/prewarm on the admin port warms an image that the registry port then serves from cache', async () => {
    const ref = `${up.host}/lab/multi:1`;
    const body = JSON.stringify({ references: [ref] });
    const r = await new Promise<{ status: number; text: string }>((resolve, reject) => {
      const u = new URL(admin);
      const req = http.request(
        { host: u.hostname, port: u.port, path: '/_berth/prewarm', method: 'POST', headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }, agent: false },
        (res) => {
          let text = '';
          res.on('data', (c: Buffer) => (text += c.toString('utf8')));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
          res.on('error', reject);
        },
      );
      req.on('error', reject);
      req.end(body);
    });
    assert.equal(r.status, 200, r.text);
    const events = r.text
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { type: string; ok?: string[]; failed?: unknown[] });
    const summary = events.at(-1)!;
    assert.equal(summary.type, 'summary', r.text);
    assert.deepEqual(summary.failed, [], r.text);
    assert.equal(summary.ok?.length, 1, r.text);
    const mark = up.logLineCount();
    for (const img of seeded.multi.images) {
      for (const blob of [img.config, ...img.layers]) {
        const got = await fetchOutcome(b.url, `/v2/lab/multi/blobs/${blob.digest}`);
        assert.equal(got.status, 200, describeOutcome(got));
        assert.equal(sha256Of(got.body), blob.digest);
      }
    }
    const traffic = (await upstreamTrafficSince(up, mark)).filter((e) => e.path.includes('/blobs/'));
    assert.deepEqual(traffic, [], 'the prewarmed blobs came from the cache');
  });
});
