// Issue #8 item 8, the "token-realm swap" (a permanent regression case): one upstream must never obtain
// another upstream's bearer token or credentials. a.test is a private registry with a token service that
// hands out a real token only for a.test's credentials; evil.test, another configured upstream, answers
// every request with 401 naming a.test's realm and service. berth must key tokens by the upstream that
// asked (not by the realm the upstream announces), and send an upstream's credentials only to its own
// token realm: evil.test gets at most an anonymous token request, and never a.test's token.
// src/upstream/transport.ts, src/upstream/token-cache.ts, src/upstream/token-realm.ts.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { realmMayReceiveCredentials } from '../src/upstream/token-realm.ts';
import { type InProcessBerth, startBerth } from './support/berth.ts';
import { MediaTypes } from './support/images.ts';
import { describeOutcome, fetchOutcome, sha256Of } from './support/outcome.ts';
import { type OriginRequest, respond, type StandInOrigin, sha256Digest, startStandInOrigin } from './support/stand-in-origin.ts';

const A_USER = 'alice';
const A_PASSWORD = 'a-site-password';
const A_TOKEN = 'a-private-token-9c41';
const EVIL_USER = 'mallory';
const EVIL_PASSWORD = 'evil-password';
const aBasic = `Basic ${Buffer.from(`${A_USER}:${A_PASSWORD}`).toString('base64')}`;

const config = Buffer.from('{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}');
const manifest = Buffer.from(
  JSON.stringify({ schemaVersion: 2, mediaType: MediaTypes.oci.manifest, config: { mediaType: MediaTypes.oci.config, digest: sha256Digest(config), size: config.length }, layers: [] }),
);
const manifestDigest = sha256Digest(manifest);

let a: StandInOrigin;
let evil: StandInOrigin;
let b: InProcessBerth;
let evilBerth: InProcessBerth;

const unauthorized = (realm: string) => ({ 'WWW-Authenticate': `Bearer realm="${realm}",service="a.test"`, 'Content-Type': 'application/json' });
const denied = '{"errors":[{"code":"UNAUTHORIZED","message":"token needed"}]}';

before(async () => {
  a = await startStandInOrigin(
    (req, reply) => {
      const p = req.path.split('?')[0]!;
      if (p === '/token') {
        // A token service as Docker Hub's: credentials get the private token, anyone else an anonymous one.
        const token = req.headers.authorization === aBasic ? A_TOKEN : 'anonymous-token';
        return respond(reply, 200, { 'Content-Type': 'application/json' }, JSON.stringify({ token, expires_in: 300 }));
      }
      if (req.headers.authorization !== `Bearer ${A_TOKEN}`) return respond(reply, 401, unauthorized(`${a.url}/token`), denied);
      if (/\/manifests\/1$/.test(p)) {
        reply.head(200, { 'Content-Type': MediaTypes.oci.manifest, 'Content-Length': manifest.length, 'Docker-Content-Digest': manifestDigest });
        return reply.end(req.method === 'HEAD' ? undefined : manifest);
      }
      respond(reply, 404, { 'Content-Type': 'application/json' }, '{"errors":[{"code":"NAME_UNKNOWN","message":"no"}]}');
    },
    { keepAlive: true },
  );
  // The hostile upstream: every request is 401 with a.test's realm and service, in the hope that berth
  // fetches (or has cached) a.test's token and then presents it here.
  evil = await startStandInOrigin((_req, reply) => respond(reply, 401, unauthorized(`${a.url}/token`), denied), { keepAlive: true });
  b = await startBerth({
    upstreams: [
      { host: 'a.test', url: a.url, username: A_USER, password: A_PASSWORD },
      { host: 'evil.test', url: evil.url },
    ],
    defaultUpstream: 'a.test',
  });
  // The same, with credentials configured for evil.test: they must not go to a.test's realm either.
  evilBerth = await startBerth({
    upstreams: [
      { host: 'a.test', url: a.url, username: A_USER, password: A_PASSWORD },
      { host: 'evil.test', url: evil.url, username: EVIL_USER, password: EVIL_PASSWORD },
    ],
    defaultUpstream: 'a.test',
  });
});

after(async () => {
  await b?.stop();
  await evilBerth?.stop();
  await Promise.all([a?.close(), evil?.close()]);
});

const tokenRequests = (since: number): OriginRequest[] => a.requests.slice(since).filter((r) => r.path.startsWith('/token'));
const sawAToken = (reqs: OriginRequest[]) => reqs.some((r) => (r.headers.authorization ?? '').includes(A_TOKEN));

describe('token-realm swap', () => {
  test('positive control: a.test with its credentials gets its private token and serves the manifest', async () => {
    const mark = a.requests.length;
    const r = await fetchOutcome(b.url, '/v2/private/app/manifests/1?ns=a.test', { headers: { accept: MediaTypes.oci.manifest } });
    assert.equal(r.status, 200, describeOutcome(r));
    assert.equal(sha256Of(r.body), manifestDigest);
    const tokens = tokenRequests(mark);
    assert.ok(tokens.length >= 1 && tokens.every((t) => t.headers.authorization === aBasic), 'a.test sent its credentials to its own realm');
  });

  test("an upstream announcing another upstream's realm is never handed that upstream's token (cached or fresh)", async () => {
    // a.test's token for repository:private/app:pull is cached now (the previous test, same scope).
    const aMark = a.requests.length;
    const evilMark = evil.requests.length;
    const r = await fetchOutcome(b.url, '/v2/private/app/manifests/1?ns=evil.test', { headers: { accept: MediaTypes.oci.manifest } });
    assert.notEqual(r.status, 200, describeOutcome(r));
    assert.ok(r.status! >= 400 && r.status! < 600 && r.status !== 500, `a clear error, not a 500: ${describeOutcome(r)}`);
    const seenByEvil = evil.requests.slice(evilMark);
    assert.ok(seenByEvil.length >= 1, 'evil.test was asked');
    assert.equal(sawAToken(seenByEvil), false, `evil.test received a.test's private token: ${JSON.stringify(seenByEvil.map((q) => q.headers.authorization))}`);
    for (const t of tokenRequests(aMark)) assert.equal(t.headers.authorization, undefined, "a token request made on evil.test's behalf carried credentials");
  });

  test("a.test's credentials are not sent to a realm on evil.test's behalf, and evil.test's own credentials stay away from a.test's realm", async () => {
    const aMark = a.requests.length;
    const evilMark = evil.requests.length;
    // A scope no token is cached for, so a token request really happens.
    const r = await fetchOutcome(evilBerth.url, '/v2/other/repo/manifests/1?ns=evil.test', { headers: { accept: MediaTypes.oci.manifest } });
    assert.notEqual(r.status, 200, describeOutcome(r));
    const tokens = tokenRequests(aMark);
    for (const t of tokens) {
      assert.equal(t.headers.authorization, undefined, `a token request to a.test's realm on evil.test's behalf carried ${t.headers.authorization}`);
    }
    assert.equal(sawAToken(evil.requests.slice(evilMark)), false, "evil.test received a.test's private token");
    // And the swap the other way round does not work either after a.test's token is cached in this berth.
    const ok = await fetchOutcome(evilBerth.url, '/v2/other/repo/manifests/1?ns=a.test', { headers: { accept: MediaTypes.oci.manifest } });
    assert.equal(ok.status, 200, describeOutcome(ok));
    const again = evil.requests.length;
    await fetchOutcome(evilBerth.url, '/v2/other/repo/manifests/1?ns=evil.test', { headers: { accept: MediaTypes.oci.manifest } });
    assert.equal(sawAToken(evil.requests.slice(again)), false, "evil.test received a.test's cached token");
  });
});

describe('which realms may receive credentials', () => {
  const may = (upstream: string, realm: string, allowed: string[] = []) => realmMayReceiveCredentials(new URL(upstream), new URL(realm), allowed);
  test("the registries' real realms are admitted, look-alikes and foreign hosts are not", () => {
    assert.equal(may('https://registry-1.docker.io', 'https://auth.docker.io/token'), true);
    assert.equal(may('https://quay.io', 'https://quay.io/v2/auth'), true);
    assert.equal(may('https://registry.gitlab.com', 'https://gitlab.com/jwt/auth'), true);
    assert.equal(may('https://registry.example.co.uk', 'https://auth.example.co.uk/token'), false, 'a sibling host needs tokenRealms');
    assert.equal(may('https://registry.example.co.uk', 'https://auth.example.co.uk/token', ['https://auth.example.co.uk']), true);
    assert.equal(may('https://registry.example.co.uk', 'https://evil.co.uk/token'), false);
    assert.equal(may('https://mysite.azurecr.io', 'https://attacker.azurecr.io/oauth2/token'), false, 'a shared domain: the sibling is someone else');
    assert.equal(may('https://europe-docker.pkg.dev', 'https://attacker.pkg.dev/token'), false);
    assert.equal(may('https://mysite.azurecr.io', 'https://mysite.azurecr.io/oauth2/token'), true);
    assert.equal(may('https://registry-1.docker.io', 'https://auth.docker.io.evil.test/token'), false);
    assert.equal(may('https://registry-1.docker.io', 'http://auth.docker.io/token'), false, 'not over plain HTTP');
    assert.equal(may('https://quay.io', 'https://ghcr.io/token'), false);
    assert.equal(may('http://127.0.0.1:5001', 'http://127.0.0.1:5002/token'), false, 'another port is another registry');
    assert.equal(may('http://127.0.0.1:5001', 'http://127.0.0.1:5001/token'), true);
    assert.equal(may('https://harbor.internal', 'https://sso.corp.test/token', ['https://sso.corp.test']), true, 'tokenRealms');
  });
});
