// Issue #10 "Auth": who may push to (and delete in) local repositories. Over real HTTP against an in-process
// berth with a real htpasswd file (htpasswd -Bbn) and a tokens file: anonymous writes get a 401 challenge
// (also on GET /v2/, or docker, podman and skopeo never send credentials), a user or token without write
// permission a 403 DENIED (never 401, which clients retry forever), a writer gets through; without client
// auth every push is refused unless local.allowAnonymousPush, which berth warns about at start-up.
// src/http/write-rules.ts, access-rules.ts, client-auth.ts (token scopes), app.ts (order), config/schema.ts.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import pino from 'pino';
import { ConfigSchema } from '../src/config/schema.ts';
import { ClientAuth } from '../src/http/client-auth.ts';
import type { Digest } from '../src/oci/digest.ts';
import { LOCAL_UPSTREAM } from '../src/registry/local-names.ts';
import { type BerthOptions, type InProcessBerth, startBerth } from './support/berth.ts';
import { ACCEPT_ALL_MANIFESTS, buildImage, type Image, pushImage } from './support/images.ts';
import { describeOutcome, fetchOutcome, type Outcome } from './support/outcome.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const run = promisify(execFile);
const basic = (user: string, password: string): string => `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
const WRITER = basic('writer', 'writer-pw');
const READER = basic('reader', 'reader-pw');
const CI = basic('ci', 'ci-pw');
const PUSH_TOKEN = 'Bearer push-token-0123456789';
const PULL_TOKEN = 'Bearer pull-token-0123456789';
const UPLOADS = '/v2/site/app/blobs/uploads/';

let up: Upstream;
let work: string;
let htpasswd: string;
let tokensFile: string;
let image: Image;
const started: InProcessBerth[] = [];

before(async () => {
  work = await makeTempDir('push-auth');
  up = await startUpstream();
  htpasswd = path.join(work, 'htpasswd');
  // Cost 8: a check costs enough that skipping one shows in the timing test below.
  const users = [
    ['writer', 'writer-pw'],
    ['reader', 'reader-pw'],
    ['ci', 'ci-pw'],
  ];
  const lines = await Promise.all(users.map(([u, p]) => run('htpasswd', ['-nbB', '-C', '8', u!, p!])));
  await writeFile(htpasswd, `${lines.map((l) => l.stdout.trim()).join('\n')}\n`);
  tokensFile = path.join(work, 'tokens');
  await writeFile(tokensFile, '# automation\npush-token-0123456789 push:site/   # the site pipeline\npull-token-0123456789\n');
  image = await buildImage({ format: 'oci', layers: [{ files: { 'etc/os-release': `push-auth ${work}\n` } }] });
  await pushImage(up, 'lab/app', '1', image);
});

after(async () => {
  for (const b of started) await b.stop();
  await up?.stop();
  await removeTempDir(work);
});

/** A logger that keeps its lines, to assert on start-up warnings. */
function recordingLog(): { log: pino.Logger; lines: Array<{ level: number; msg: string }> } {
  const lines: Array<{ level: number; msg: string }> = [];
  const log = pino({ level: 'info' }, { write: (s: string) => void lines.push(JSON.parse(s) as { level: number; msg: string }) });
  return { log, lines };
}

async function berth(o: Partial<BerthOptions> = {}, log?: pino.Logger): Promise<InProcessBerth> {
  const b = await startBerth({ upstreams: [{ host: up.host, url: up.url }], local: { prefixes: ['site/', 'ci/'] }, ...o }, log);
  started.push(b);
  return b;
}

const withAuth = (extra: Record<string, unknown> = {}): Partial<BerthOptions> => ({
  auth: {
    htpasswd,
    tokensFile,
    anonymous: true,
    push: [
      { prefix: 'site/', users: ['writer'] },
      { prefix: 'ci/', users: ['ci'] },
    ],
    ...extra,
  },
});

function code(r: Outcome): string | undefined {
  try {
    return (JSON.parse(r.body.toString('utf8')) as { errors: Array<{ code: string }> }).errors[0]?.code;
  } catch {
    return undefined;
  }
}

/**
 * A 401 with the challenge: basic where every client must log in anyway; bearer, with berth's own token
 * endpoint as the realm, where anonymous pulls are allowed beside pushes (docker fails a basic challenge it
 * has no credentials for, instead of going on anonymously).
 */
function assertChallenge(r: Outcome, scheme: 'basic' | 'bearer' = 'bearer'): void {
  assert.equal(r.status, 401, describeOutcome(r));
  assert.equal(code(r), 'UNAUTHORIZED');
  const expected = scheme === 'basic' ? /^Basic realm="berth"$/ : /^Bearer realm="http:\/\/127\.0\.0\.1:\d+\/_berth\/token",service="berth"$/;
  assert.match(String(r.headers?.['www-authenticate']), expected);
}

function assertDenied(r: Outcome, what: RegExp): void {
  assert.equal(r.status, 403, describeOutcome(r));
  assert.equal(code(r), 'DENIED');
  assert.equal(r.headers?.['www-authenticate'], undefined, 'a 403 carries no challenge: the client must not retry other credentials');
  assert.match(r.body.toString('utf8'), what);
}

/** Past the auth layer: whatever the handler answers, it is not an auth answer. */
function assertPastAuth(r: Outcome): void {
  assert.ok(r.status !== 401 && r.status !== 403, describeOutcome(r));
  assert.equal(r.status, 202, `the upload session starts: ${describeOutcome(r)}`);
}

const post = (b: InProcessBerth, p: string, auth?: string) => fetchOutcome(b.url, p, { method: 'POST', headers: auth ? { authorization: auth } : {} });

describe('with client auth (htpasswd users and tokens, anonymous pulls allowed)', () => {
  let b: InProcessBerth;
  before(async () => {
    b = await berth(withAuth());
  });

  test('an anonymous push is 401 with a basic challenge; so is the anonymous GET /v2/ ping, or clients would never log in', async () => {
    assertChallenge(await post(b, UPLOADS));
    assertChallenge(await fetchOutcome(b.url, '/v2/site/app/manifests/1', { method: 'PUT', headers: { 'content-type': 'application/vnd.oci.image.manifest.v1+json' } }));
    assertChallenge(await fetchOutcome(b.url, `/v2/site/app/manifests/sha256:${'0'.repeat(64)}`, { method: 'DELETE' }));
    assertChallenge(await fetchOutcome(b.url, '/v2/'));
    // A logged-in ping answers 200, as before.
    const ping = await fetchOutcome(b.url, '/v2/', { headers: { authorization: WRITER } });
    assert.equal(ping.status, 200, describeOutcome(ping));
  });

  test('pulls are unchanged: anonymous clients pull cached images, also with the empty basic login containers/image sends', async () => {
    for (const authorization of [undefined, 'Basic Og==']) {
      const r = await fetchOutcome(b.url, '/v2/lab/app/manifests/1', { headers: { accept: ACCEPT_ALL_MANIFESTS, ...(authorization ? { authorization } : {}) } });
      assert.equal(r.status, 200, describeOutcome(r));
    }
    const failed = (await b.berth.metrics.clientAuth.get()).values.filter((v) => v.labels.result === 'failed').reduce((n, v) => n + v.value, 0);
    assert.equal(failed, 0, 'an empty basic login is anonymous, not a failed password check');
  });

  test('a user without push permission is 403 DENIED on every write, never 401', async () => {
    assertDenied(await post(b, UPLOADS, READER), /user reader may not push to site\/app/);
    assertDenied(await fetchOutcome(b.url, `${UPLOADS}0f8c9a4e-session`, { method: 'PATCH', headers: { authorization: READER } }), /may not push/);
    assertDenied(await fetchOutcome(b.url, `${UPLOADS}0f8c9a4e-session`, { headers: { authorization: READER } }), /may not push/);
    assertDenied(await fetchOutcome(b.url, '/v2/site/app/manifests/1', { method: 'PUT', headers: { authorization: READER } }), /may not push/);
    assertDenied(await fetchOutcome(b.url, `/v2/site/app/blobs/${image.layers[0]!.digest}`, { method: 'DELETE', headers: { authorization: READER } }), /may not push/);
  });

  test('the writer gets past auth; on a prefix it may not write it is 403', async () => {
    assertPastAuth(await post(b, UPLOADS, WRITER));
    assertPastAuth(await post(b, '/v2/site/team/deep/app/blobs/uploads/', WRITER));
    // Without the trailing slash too (distribution routes it, so does berth): the same gate.
    assertChallenge(await post(b, '/v2/site/app/blobs/uploads'));
    assertDenied(await post(b, '/v2/site/app/blobs/uploads', READER), /may not push/);
    assertPastAuth(await post(b, '/v2/site/app/blobs/uploads', WRITER));
    assertDenied(await post(b, '/v2/ci/app/blobs/uploads/', WRITER), /user writer may not push to ci\/app/);
    assertPastAuth(await post(b, '/v2/ci/app/blobs/uploads/', CI));
    assertDenied(await post(b, UPLOADS, CI), /user ci may not push to site\/app/);
  });

  test('a push-scoped token pushes under its prefix only; a pull-only token is 403; an unknown token 401', async () => {
    assertPastAuth(await post(b, UPLOADS, PUSH_TOKEN));
    assertDenied(await post(b, '/v2/ci/app/blobs/uploads/', PUSH_TOKEN), /this token may not push to ci\/app/);
    assertDenied(await post(b, UPLOADS, PULL_TOKEN), /this token may not push to site\/app/);
    assertChallenge(await post(b, UPLOADS, 'Bearer not-a-token'));
  });

  test('a push to a name that is not local is no auth matter: 405 UNSUPPORTED for everyone', async () => {
    for (const who of [undefined, READER, WRITER]) {
      const r = await post(b, '/v2/lab/app/blobs/uploads/', who);
      assert.equal(r.status, 405, describeOutcome(r));
      assert.equal(code(r), 'UNSUPPORTED');
    }
  });

  test('the token endpoint of the bearer challenge: a token stands for whoever asked for it, no more', async () => {
    const token = async (auth?: string) => {
      const r = await fetchOutcome(b.url, '/_berth/token?service=berth&scope=repository:site/app:pull,push', { headers: auth ? { authorization: auth } : {} });
      assert.equal(r.status, 200, describeOutcome(r));
      const body = JSON.parse(r.body.toString('utf8')) as { token: string; access_token: string; expires_in: number };
      assert.equal(body.token, body.access_token);
      assert.equal(body.expires_in, 300);
      return `Bearer ${body.token}`;
    };
    const anonymous = await token();
    const pull = await fetchOutcome(b.url, '/v2/lab/app/manifests/1', { headers: { accept: ACCEPT_ALL_MANIFESTS, authorization: anonymous } });
    assert.equal(pull.status, 200, describeOutcome(pull));
    assertChallenge(await post(b, UPLOADS, anonymous));
    assertPastAuth(await post(b, UPLOADS, await token(WRITER)));
    assertDenied(await post(b, UPLOADS, await token(READER)), /user reader may not push to site\/app/);
    assertDenied(await post(b, UPLOADS, await token(PULL_TOKEN)), /this token may not push/);
    // Wrong credentials at the token endpoint: 401 with the basic challenge the endpoint itself takes.
    const wrong = await fetchOutcome(b.url, '/_berth/token?service=berth', { headers: { authorization: basic('writer', 'wrong') } });
    assertChallenge(wrong, 'basic');
    assertChallenge(await post(b, UPLOADS, 'Bearer berth.not-issued-here'));
    assert.equal((await fetchOutcome(b.url, '/_berth/token', { method: 'POST' })).status, 405);
  });

  test('wrong passwords on pushes are throttled like pulls: a bounded number of bcrypt checks, then 401 with Retry-After', async () => {
    const own = await berth(withAuth());
    const checks = async (result: string) => (await own.berth.metrics.clientAuth.get()).values.filter((v) => v.labels.result === result).reduce((n, v) => n + v.value, 0);
    const rs = await Promise.all(Array.from({ length: 30 }, (_, i) => post(own, UPLOADS, basic('writer', `guess-${i}`))));
    for (const r of rs) assertChallenge(r);
    assert.ok((await checks('failed')) <= 12, `${await checks('failed')} bcrypt checks for 30 wrong passwords`);
    assert.ok((await checks('throttled')) >= 18, 'the rest were refused without a check');
    assert.ok(
      rs.some((r) => Number(r.headers?.['retry-after']) >= 1),
      'a refused login says when to retry',
    );
  });

  test('an unknown user pushing takes as long to refuse as a known one with a wrong password (no enumeration by timing)', async () => {
    const own = await berth(withAuth());
    const time = async (auth: string) => (await post(own, UPLOADS, auth)).ms;
    await time(WRITER);
    await time(basic('nobody', 'wrong'));
    const known: number[] = [];
    const unknown: number[] = [];
    for (let i = 0; i < 4; i++) {
      known.push(await time(basic('reader', `wrong-${i}`)));
      unknown.push(await time(basic(`nobody-${i}`, 'wrong')));
    }
    // As in client-auth.test.ts: without the dummy check an unknown user costs a tenth of a known one.
    assert.ok(Math.min(...unknown) > 0.33 * Math.min(...known), `unknown ${Math.min(...unknown).toFixed(1)} ms, known ${Math.min(...known).toFixed(1)} ms`);
  });
});

describe('auth.rules and auth.push together', () => {
  test('read rules name local repositories by their own name; who may push a name may pull it', async () => {
    const b = await berth(withAuth({ anonymous: false, rules: [{ prefix: 'site/', users: ['reader'] }] }));
    // ci may neither read nor push site/ (first, the read rule; then no push rule): 403 on a pull.
    const ci = await fetchOutcome(b.url, '/v2/site/app/manifests/1', { headers: { authorization: CI } });
    assertDenied(ci, /user ci may not pull site\/app/);
    for (const p of ['/v2/site/app/tags/list', `/v2/site/app/referrers/${image.manifestDigest}`]) {
      assertDenied(await fetchOutcome(b.url, p, { headers: { authorization: CI } }), /user ci may not pull site\/app/);
    }
    for (const who of [READER, WRITER]) {
      const r = await fetchOutcome(b.url, '/v2/site/app/manifests/1', { headers: { authorization: who } });
      assert.ok(r.status !== 401 && r.status !== 403, `past the read rules: ${describeOutcome(r)}`);
    }
    // Anonymous clients are refused outright with anonymous: false, writes included: every client must log
    // in, so the challenge is basic (docker, podman and skopeo send basic credentials to it).
    assertChallenge(await post(b, UPLOADS), 'basic');
    assertChallenge(await fetchOutcome(b.url, '/v2/'), 'basic');
    assert.equal((await fetchOutcome(b.url, '/_berth/token')).status, 404, 'no token endpoint without a bearer challenge');
  });
});

describe('cross-repository mounts and the catalog under read rules', () => {
  let b: InProcessBerth;
  const layer = () => image.layers[0]!.digest;
  before(async () => {
    b = await berth(
      withAuth({
        rules: [
          { prefix: `${up.host}/lab/`, users: ['reader'] },
          { prefix: 'site/secret/', users: ['reader'] },
        ],
        push: [{ prefix: 'site/', users: ['writer', 'reader'] }],
      }),
    );
    // A local repository, as a push leaves it in the index.
    await b.berth.index.addRefs(LOCAL_UPSTREAM, 'site/secret/app', [image.layers[0]!.digest as Digest]);
    // The reader pulls the image: its layer is now cached under lab/app.
    for (const p of ['/v2/lab/app/manifests/1', `/v2/lab/app/blobs/${layer()}`]) {
      const r = await fetchOutcome(b.url, p, { headers: { accept: ACCEPT_ALL_MANIFESTS, authorization: READER } });
      assert.equal(r.status, 200, describeOutcome(r));
    }
  });

  test('the catalog lists only what the client may pull', async () => {
    const catalog = async (auth?: string) => {
      const r = await fetchOutcome(b.url, '/v2/_catalog', { headers: auth ? { authorization: auth } : {} });
      assert.equal(r.status, 200, describeOutcome(r));
      return (JSON.parse(r.body.toString('utf8')) as { repositories: string[] }).repositories;
    };
    const reader = await catalog(READER);
    assert.ok(reader.includes(`${up.host}/lab/app`) && reader.includes('site/secret/app'), reader.join(' '));
    for (const who of [WRITER, undefined]) assert.ok(!(await catalog(who)).includes(`${up.host}/lab/app`), `listed for ${who ?? 'anonymous'}`);
    // Local repositories by their plain name; the writer may push there, and so list it.
    assert.ok((await catalog(WRITER)).includes('site/secret/app'));
    assert.ok(!(await catalog()).includes('site/secret/app'), 'listed for anonymous');
  });

  test('a mount from a repository the pusher may not read is a plain upload (202), not a 201 that says the blob is there', async () => {
    const layer = image.layers[0]!.digest;
    const mount = (from: string, auth: string) => post(b, `${UPLOADS}?mount=${layer}&from=${encodeURIComponent(from)}`, auth);
    const allowed = await mount(`${up.host}/lab/app`, READER);
    assert.equal(allowed.status, 201, `the reader may read lab/app: the blob is mounted. ${describeOutcome(allowed)}`);
    assert.equal(allowed.headers?.['docker-content-digest'], layer);
    for (const from of [`${up.host}/lab/app`, 'lab/app']) {
      const r = await mount(from, WRITER);
      assert.equal(r.status, 202, `the writer may not read ${from}: ${describeOutcome(r)}`);
      assert.match(String(r.headers?.location), /\/v2\/site\/app\/blobs\/uploads\/./);
    }
  });
});

describe('without client auth', () => {
  test('every push is refused with a message that says how to allow pushes; berth warns at start-up', async () => {
    const { log, lines } = recordingLog();
    const b = await berth({}, log);
    const r = await post(b, UPLOADS);
    assertDenied(r, /configure users \(auth\.htpasswd.*local\.allowAnonymousPush: true/);
    const del = await fetchOutcome(b.url, '/v2/site/app/manifests/1', { method: 'DELETE' });
    assertDenied(del, /allowAnonymousPush/);
    assert.ok(
      lines.some((l) => l.level === 40 && /local repositories take no pushes/.test(l.msg)),
      lines.map((l) => l.msg).join('\n'),
    );
    // Pulls are as ever, and the ping is open.
    assert.equal((await fetchOutcome(b.url, '/v2/')).status, 200);
  });

  test('client auth without any push rule or push-scoped token: berth warns that nobody can push', async () => {
    const { log, lines } = recordingLog();
    const pullOnly = path.join(work, 'tokens-pull-only');
    await writeFile(pullOnly, 'pull-token-only-0123\n');
    const b = await berth({ auth: { htpasswd, tokensFile: pullOnly } }, log);
    assert.ok(
      lines.some((l) => l.level === 40 && /no auth\.push rule and no token with a push: scope/.test(l.msg)),
      lines.map((l) => l.msg).join('\n'),
    );
    assertDenied(await post(b, UPLOADS, WRITER), /user writer may not push to site\/app/);
  });

  test('local.allowAnonymousPush: true lets anyone push, and berth logs a warning at start-up', async () => {
    const { log, lines } = recordingLog();
    const b = await berth({ local: { prefixes: ['site/'], allowAnonymousPush: true } }, log);
    assertPastAuth(await post(b, UPLOADS));
    const warning = lines.find((l) => l.level === 40 && /allowAnonymousPush is true/.test(l.msg));
    assert.ok(warning, lines.map((l) => l.msg).join('\n'));
    assert.match(warning.msg, /anyone who can reach berth may push/);
  });
});

describe('configuration mistakes are named at start-up', () => {
  const parse = (o: Record<string, unknown>) => ConfigSchema.safeParse({ upstreams: [{ host: up.host, url: up.url }], ...o });
  const issues = (r: ReturnType<typeof parse>) => (r.success ? [] : r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`));

  test('allowAnonymousPush beside users, a push rule outside local.prefixes, push rules without htpasswd, an anonymous pusher', () => {
    assert.match(issues(parse({ local: { prefixes: ['site/'], allowAnonymousPush: true }, auth: { htpasswd } })).join('\n'), /local\.allowAnonymousPush: is for a berth without client auth/);
    assert.match(
      issues(parse({ local: { prefixes: ['site/'] }, auth: { htpasswd, push: [{ prefix: 'ci/', users: ['ci'] }] } })).join('\n'),
      /auth\.push\.0\.prefix: "ci\/" is not under any local\.prefixes entry \("site\/"\)/,
    );
    assert.match(
      issues(parse({ local: { prefixes: ['site/'] }, auth: { tokensFile, push: [{ prefix: 'site/', users: ['ci'] }] } })).join('\n'),
      /auth\.push: names htpasswd users: set auth\.htpasswd too/,
    );
    assert.match(issues(parse({ local: { prefixes: ['site/'] }, auth: { htpasswd, push: [{ prefix: 'site/', users: ['anonymous'] }] } })).join('\n'), /anonymous pushes are local\.allowAnonymousPush/);
    assert.ok(parse({ local: { prefixes: ['site/'] }, auth: { htpasswd, push: [{ prefix: 'site/app', users: ['*'] }] } }).success, 'a single repository is a prefix too');
  });

  test('a tokens file line with an unknown scope stops start-up naming the line, not the token', async () => {
    const bad = path.join(work, 'tokens-bad');
    await writeFile(bad, 'fine-token\nsecret-token-abc pull:site/\n');
    assert.throws(
      () => new ClientAuth({ anonymous: false, tokensFile: bad }),
      (err: Error) => {
        assert.match(err.message, /tokens-bad line 2: "pull:site\/" is not a scope; write push:PREFIX/);
        assert.doesNotMatch(err.message, /secret-token-abc/);
        return true;
      },
    );
  });
});
