// Red-team regressions for the local registry (issue #10): inputs an attacker or an unlucky client sends,
// against a real berth over real HTTP.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import bcrypt from 'bcryptjs';
import { Pool } from 'undici';
import { type InProcessBerth, startBerth } from './support/berth.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';

const MT = 'application/vnd.oci.image.manifest.v1+json';
let b: InProcessBerth;

before(async () => {
  b = await startBerth({ upstreams: [{ host: 'up.invalid', url: 'http://127.0.0.1:9' }], local: { prefixes: ['site/'], allowAnonymousPush: true }, delete: { enabled: true } });
});
after(async () => {
  await b?.stop();
});

const sha = (x: Buffer) => `sha256:${createHash('sha256').update(x).digest('hex')}`;

async function call(method: string, url: string, body?: Buffer, headers: Record<string, string> = {}): Promise<{ status: number; text: string; headers: Headers }> {
  const res = await fetch(`${b.url}${url}`, { method, headers, body: body as BodyInit | undefined, redirect: 'manual' });
  return { status: res.status, text: await res.text(), headers: res.headers };
}

async function pushBlob(repo: string, bytes: Buffer): Promise<string> {
  const r = await call('POST', `/v2/${repo}/blobs/uploads/?digest=${sha(bytes)}`, bytes);
  assert.equal(r.status, 201, r.text);
  return sha(bytes);
}

async function pushManifest(repo: string, ref: string, m: object): Promise<{ digest: string; bytes: Buffer }> {
  const bytes = Buffer.from(JSON.stringify(m));
  const r = await call('PUT', `/v2/${repo}/manifests/${ref}`, bytes, { 'Content-Type': MT });
  assert.equal(r.status, 201, r.text);
  return { digest: r.headers.get('docker-content-digest')!, bytes };
}

describe('redteam: referrers after deletes', () => {
  test('a referrer deleted by digest is no longer listed by the referrers API of its repository', async () => {
    const repo = 'site/rt-ref';
    const cfg = await pushBlob(repo, Buffer.from('{}'));
    const layer = await pushBlob(repo, Buffer.from('layer bytes of the subject'));
    const image = await pushManifest(repo, 'v1', {
      schemaVersion: 2,
      mediaType: MT,
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: cfg, size: 2 },
      layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: layer, size: 26 }],
    });
    const sig = await pushBlob(repo, Buffer.from('a signature'));
    const sigManifest = {
      schemaVersion: 2,
      mediaType: MT,
      artifactType: 'application/vnd.example.sig',
      config: { mediaType: 'application/vnd.oci.empty.v1+json', digest: cfg, size: 2 },
      layers: [{ mediaType: 'application/vnd.example.sig', digest: sig, size: 11 }],
      subject: { mediaType: MT, digest: image.digest, size: image.bytes.length },
    };
    const bytes = Buffer.from(JSON.stringify(sigManifest));
    const put = await call('PUT', `/v2/${repo}/manifests/${sha(bytes)}`, bytes, { 'Content-Type': MT });
    assert.equal(put.status, 201, put.text);
    const listed = async () => (JSON.parse((await call('GET', `/v2/${repo}/referrers/${image.digest}`)).text) as { manifests: Array<{ digest: string }> }).manifests.map((m) => m.digest);
    assert.deepEqual(await listed(), [sha(bytes)]);
    const del = await call('DELETE', `/v2/${repo}/manifests/${sha(bytes)}`);
    assert.equal(del.status, 202, del.text);
    assert.equal((await call('GET', `/v2/${repo}/manifests/${sha(bytes)}`)).status, 404, 'the deleted referrer is gone');
    assert.deepEqual(await listed(), [], 'and no longer listed as a referrer of its subject');
  });
});

describe('redteam: uploads cancelled mid-body', () => {
  /** A PUT or PATCH whose body trickles in; resolves with the status (or the error) once it ends. */
  function trickle(method: string, p: string, parts: Buffer[], gapMs: number): Promise<string> {
    const u = new URL(b.url);
    return new Promise((ok) => {
      const length = parts.reduce((n, x) => n + x.length, 0);
      const req = http.request({ host: u.hostname, port: u.port, method, path: p, headers: { 'Content-Length': String(length) } }, (res) => {
        res.resume();
        res.on('end', () => ok(String(res.statusCode)));
      });
      req.on('error', (e) => ok(`error ${e.message}`));
      void (async () => {
        for (const x of parts) {
          if (req.destroyed) return;
          req.write(x);
          await sleep(gapMs);
        }
        req.end();
      })();
    });
  }

  test('a session DELETEd while its PUT or PATCH is still sending: 404 to the writer, and berth does not crash logging it', async () => {
    const crashes: Error[] = [];
    const onCrash = (err: Error) => crashes.push(err);
    process.on('uncaughtException', onCrash);
    try {
      const parts = Array.from({ length: 10 }, () => randomBytes(10_000));
      const all = Buffer.concat(parts);
      for (const method of ['PUT', 'PATCH']) {
        const post = await call('POST', '/v2/site/rt-cancel/blobs/uploads/');
        assert.equal(post.status, 202, post.text);
        const loc = post.headers.get('location')!;
        const writing = trickle(method, method === 'PUT' ? `${loc}?digest=${sha(all)}` : loc, parts, 40);
        await sleep(120);
        assert.equal((await call('DELETE', loc)).status, 204);
        assert.equal(await writing, '404', `${method} of a cancelled session`);
        await sleep(100); // the request log line is written when the response closes
      }
      assert.equal((await call('HEAD', `/v2/site/rt-cancel/blobs/${sha(all)}`)).status, 404, 'nothing of it was kept');
      assert.deepEqual(
        crashes.map((e) => e.message),
        [],
      );
      assert.equal((await call('GET', '/v2/')).status, 200, 'berth still answers');
    } finally {
      process.off('uncaughtException', onCrash);
    }
  });
});

describe('redteam: the token endpoint', () => {
  let work: string;
  let a: InProcessBerth;
  before(async () => {
    work = await makeTempDir('redteam-push');
    const htpasswd = path.join(work, 'htpasswd');
    await writeFile(htpasswd, `writer:${bcrypt.hashSync('s3cret', 4)}\n`);
    a = await startBerth({
      upstreams: [{ host: 'up.invalid', url: 'http://127.0.0.1:9' }],
      local: { prefixes: ['site/'] },
      auth: { htpasswd, anonymous: true, push: [{ prefix: 'site/', users: ['writer'] }] },
    });
  });
  after(async () => {
    await a?.stop();
    await removeTempDir(work);
  });

  test("a flood of anonymous token requests does not evict a pusher's token (its push goes on)", async () => {
    const basic = `Basic ${Buffer.from('writer:s3cret').toString('base64')}`;
    const got = await fetch(`${a.url}/_berth/token?service=berth&scope=repository:site/app:pull,push`, { headers: { authorization: basic } });
    assert.equal(got.status, 200);
    const { token } = (await got.json()) as { token: string };
    const post = (t: string) => fetch(`${a.url}/v2/site/app/blobs/uploads/`, { method: 'POST', headers: { authorization: `Bearer ${t}` } });
    assert.equal((await post(token)).status, 202, "the pusher's token works");
    // Anyone may ask for an anonymous token, as often as it likes: more than the endpoint remembers.
    const pool = new Pool(a.url, { connections: 16 });
    try {
      let next = 0;
      const worker = async () => {
        while (next++ < 50_100) {
          const r = await pool.request({ path: '/_berth/token?service=berth', method: 'GET' });
          await r.body.dump();
          assert.equal(r.statusCode, 200);
        }
      };
      await Promise.all(Array.from({ length: 16 }, worker));
    } finally {
      await pool.close();
    }
    assert.equal((await post(token)).status, 202, "the pusher's token still works");
  });

  test('the anonymous token is no credential where anonymous requests are refused', async () => {
    const closed = await startBerth({
      upstreams: [{ host: 'up.invalid', url: 'http://127.0.0.1:9' }],
      local: { prefixes: ['site/'] },
      auth: { htpasswd: path.join(work, 'htpasswd'), anonymous: false, push: [{ prefix: 'site/', users: ['writer'] }] },
    });
    try {
      const r = await fetch(`${closed.url}/v2/site/app/tags/list`, { headers: { authorization: 'Bearer berth.anonymous' } });
      assert.equal(r.status, 401);
    } finally {
      await closed.stop();
    }
  });
});
