// berth is not an open proxy (issue #5, security): no request ever reaches a host that is not configured.
// Not through `?ns=` or a host prefix naming another registry, and not through the URLs an upstream
// chooses: a token realm or a redirect pointing at the site's own network (another loopback address,
// localhost, the cloud metadata address, numeric and IPv6 spellings of them). Listeners on 127.0.0.2 and on
// an unconfigured 127.0.0.1 port count every connection; they must stay at zero. Positive controls show
// that redirects and token realms on configured origins do work, so the refusals are not an accident.
// DESIGN.md "Routing a request to an upstream", src/upstream/egress-guard.ts.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, beforeEach, describe, test } from 'node:test';
import { type InProcessBerth, startBerth } from './support/berth.ts';
import { MediaTypes } from './support/images.ts';
import { describeOutcome, fetchOutcome, sha256Of } from './support/outcome.ts';
import { type ConnectionCounter, type OriginRequest, type Reply, respond, type StandInOrigin, sha256Digest, startConnectionCounter, startStandInOrigin } from './support/stand-in-origin.ts';

let elsewhere: ConnectionCounter; // 127.0.0.2:P2 — another loopback address, as a host on the site's network
let sideport: ConnectionCounter; // 127.0.0.1:P1 — the upstreams' address, but a port nobody configured
let a: StandInOrigin; // configured as a.test (the default upstream)
let bOrigin: StandInOrigin; // configured as b.test
let b: InProcessBerth;

const layer = randomBytes(64 * 1024);
const layerDigest = sha256Digest(layer);
const config = Buffer.from('{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}');
const manifest = Buffer.from(
  JSON.stringify({
    schemaVersion: 2,
    mediaType: MediaTypes.oci.manifest,
    config: { mediaType: MediaTypes.oci.config, digest: sha256Digest(config), size: config.length },
    layers: [{ mediaType: MediaTypes.oci.layer, digest: layerDigest, size: layer.length }],
  }),
);

/** Where a hostile upstream points berth, by name. Filled in once the listeners' ports are known. */
const targets: Record<string, string> = {};

function serveContent(req: OriginRequest, reply: Reply, p: string): boolean {
  if (p.endsWith(`/blobs/${layerDigest}`)) {
    reply.head(200, { 'Content-Type': 'application/octet-stream', 'Content-Length': layer.length, 'Docker-Content-Digest': layerDigest });
    reply.end(req.method === 'HEAD' ? undefined : layer);
    return true;
  }
  if (/\/manifests\/1$/.test(p)) {
    reply.head(200, { 'Content-Type': MediaTypes.oci.manifest, 'Content-Length': manifest.length, 'Docker-Content-Digest': sha256Digest(manifest) });
    reply.end(req.method === 'HEAD' ? undefined : manifest);
    return true;
  }
  return false;
}

before(async () => {
  elsewhere = await startConnectionCounter('127.0.0.2');
  sideport = await startConnectionCounter('127.0.0.1');
  Object.assign(targets, {
    'another loopback address (127.0.0.2)': `http://127.0.0.2:${elsewhere.port}/steal`,
    'the cloud metadata address (169.254.169.254)': 'http://169.254.169.254/latest/meta-data',
    'localhost on an unconfigured port': `http://localhost:${sideport.port}/steal`,
    'the upstream address on an unconfigured port (127.0.0.1:other)': `http://127.0.0.1:${sideport.port}/steal`,
    '127.0.0.2 written as a decimal number': `http://2130706434:${elsewhere.port}/steal`,
    '127.0.0.2 written in hex': `http://0x7f000002:${elsewhere.port}/steal`,
    '127.0.0.2 as an IPv4-mapped IPv6 address ([::ffff:127.0.0.2])': `http://[::ffff:127.0.0.2]:${elsewhere.port}/steal`,
    '127.0.0.2 as a full IPv4-mapped IPv6 address ([0:0:0:0:0:ffff:7f00:2])': `http://[0:0:0:0:0:ffff:7f00:2]:${elsewhere.port}/steal`,
  });

  bOrigin = await startStandInOrigin(
    (req, reply) => {
      const p = req.path.split('?')[0]!;
      if (p === '/v2/' || p === '/v2') return respond(reply, 200, { 'Content-Type': 'application/json' }, '{}');
      // b.test passes a hop on to the site's network: allowed origin first, forbidden one second.
      if (p.startsWith('/v2/hop/')) return respond(reply, 307, { Location: targets['another loopback address (127.0.0.2)']! });
      if (p === '/token-hop') return respond(reply, 307, { Location: `http://127.0.0.2:${elsewhere.port}/token` });
      if (serveContent(req, reply, p)) return;
      respond(reply, 404, { 'Content-Type': 'application/json' }, '{"errors":[{"code":"NAME_UNKNOWN","message":"no"}]}');
    },
    { keepAlive: true },
  );

  a = await startStandInOrigin(
    (req, reply) => {
      const p = req.path.split('?')[0]!;
      if (p === '/v2/' || p === '/v2') return respond(reply, 200, { 'Content-Type': 'application/json' }, '{}');
      if (p === '/token') return respond(reply, 200, { 'Content-Type': 'application/json' }, '{"token":"good-token","expires_in":300}');
      const redirect = /^\/v2\/redirect\/(\d+)\//.exec(p);
      if (redirect) return respond(reply, 307, { Location: Object.values(targets)[Number(redirect[1])]! });
      const realm = /^\/v2\/realm\/(\d+)\//.exec(p);
      if (realm)
        return respond(
          reply,
          401,
          { 'WWW-Authenticate': `Bearer realm="${Object.values(targets)[Number(realm[1])]!}",service="a.test"`, 'Content-Type': 'application/json' },
          '{"errors":[{"code":"UNAUTHORIZED","message":"token needed"}]}',
        );
      // Positive controls: a redirect to the other configured origin, a realm on this origin itself.
      if (p.startsWith('/v2/good-hop/')) return respond(reply, 307, { Location: `${bOrigin.url}${p.replace('/v2/good-hop/', '/v2/lab/')}` });
      if (p.startsWith('/v2/hop/')) return respond(reply, 307, { Location: `${bOrigin.url}${p}` });
      if (p.startsWith('/v2/self-realm/')) {
        if (req.headers.authorization !== 'Bearer good-token') {
          return respond(
            reply,
            401,
            { 'WWW-Authenticate': `Bearer realm="${a.url}/token",service="a.test"`, 'Content-Type': 'application/json' },
            '{"errors":[{"code":"UNAUTHORIZED","message":"token needed"}]}',
          );
        }
        if (serveContent(req, reply, p)) return;
      }
      if (p.startsWith('/v2/realm-hop/')) {
        return respond(
          reply,
          401,
          { 'WWW-Authenticate': `Bearer realm="${bOrigin.url}/token-hop",service="a.test"`, 'Content-Type': 'application/json' },
          '{"errors":[{"code":"UNAUTHORIZED","message":"token needed"}]}',
        );
      }
      if (serveContent(req, reply, p)) return;
      respond(reply, 404, { 'Content-Type': 'application/json' }, '{"errors":[{"code":"NAME_UNKNOWN","message":"no"}]}');
    },
    { keepAlive: true },
  );

  b = await startBerth({
    upstreams: [
      { host: 'a.test', url: a.url },
      { host: 'b.test', url: bOrigin.url },
    ],
    defaultUpstream: 'a.test',
  });
});

after(async () => {
  await b?.stop();
  await Promise.all([a?.close(), bOrigin?.close(), elsewhere?.close(), sideport?.close()]);
});

/** Connections the listeners had when the current test began: each test is judged on its own. */
let mark = { elsewhere: 0, sideport: 0 };
beforeEach(() => {
  mark = { elsewhere: elsewhere.connections, sideport: sideport.connections };
});

function assertNobodyElseContacted(what: string): void {
  assert.equal(elsewhere.connections - mark.elsewhere, 0, `${what}: berth connected to 127.0.0.2:${elsewhere.port}, which is not a configured upstream`);
  assert.equal(sideport.connections - mark.sideport, 0, `${what}: berth connected to 127.0.0.1:${sideport.port}, which is not a configured upstream`);
}

const originGets = (o: StandInOrigin, re: RegExp) => o.requests.filter((r) => re.test(r.path)).length;

describe('requests for hosts that are not configured', () => {
  test('?ns= and host prefixes naming unconfigured registries get 404 NAME_UNKNOWN (or 400) and contact nobody', async () => {
    const before = a.requests.length + bOrigin.requests.length;
    const other = `127.0.0.2:${elsewhere.port}`;
    const side = `127.0.0.1:${sideport.port}`;
    const requests = [
      `/v2/lab/x/manifests/1?ns=${other}`,
      `/v2/lab/x/blobs/${layerDigest}?ns=${other}`,
      `/v2/lab/x/tags/list?ns=${other}`,
      `/v2/lab/x/manifests/1?ns=${side}`,
      `/v2/lab/x/manifests/1?ns=localhost:${sideport.port}`,
      '/v2/lab/x/manifests/1?ns=169.254.169.254',
      `/v2/${other}/lab/x/manifests/1`,
      `/v2/${other}/lab/x/blobs/${layerDigest}`,
      `/v2/${side}/lab/x/manifests/1`,
      `/v2/localhost:${sideport.port}/lab/x/manifests/1`,
      '/v2/169.254.169.254/latest/manifests/1',
      `/v2/${other}/lab/x/manifests/1?ns=${other}`,
      // a configured ns does not make an unconfigured prefix routable
      `/v2/${other}/lab/x/manifests/1?ns=a.test`,
    ];
    for (const p of requests) {
      const r = await fetchOutcome(b.url, p);
      assert.ok(r.status === 404 || r.status === 400, `${p}: ${describeOutcome(r)}`);
      if (r.status === 404) assert.match(r.body.toString('utf8'), /NAME_UNKNOWN/, `${p}: ${describeOutcome(r)}`);
    }
    assertNobodyElseContacted('ns/prefix');
    assert.equal(a.requests.length + bOrigin.requests.length, before, 'a configured upstream was asked on behalf of an unconfigured one');
  });
});

describe('URLs chosen by an upstream', () => {
  test('positive control: a redirect to another configured upstream is followed and the blob arrives intact', async () => {
    const r = await fetchOutcome(b.url, `/v2/good-hop/x/blobs/${layerDigest}?ns=a.test`);
    assert.equal(r.status, 200, describeOutcome(r));
    assert.equal(sha256Of(r.body), layerDigest);
    assert.ok(originGets(bOrigin, /\/v2\/lab\/x\/blobs\//) >= 1, 'b.test served the redirected blob');
    assertNobodyElseContacted('good hop');
  });

  test('positive control: a token realm on the upstream itself is used and the pull works', async () => {
    const r = await fetchOutcome(b.url, '/v2/self-realm/x/manifests/1?ns=a.test', { headers: { accept: MediaTypes.oci.manifest } });
    assert.equal(r.status, 200, describeOutcome(r));
    assert.ok(originGets(a, /^\/token\?/) >= 1, 'berth asked the realm for a token');
    assertNobodyElseContacted('own realm');
  });

  // The table is filled in before() (it needs the listeners' ports); tests are declared from the same names.
  const TARGET_NAMES = [
    'another loopback address (127.0.0.2)',
    'the cloud metadata address (169.254.169.254)',
    'localhost on an unconfigured port',
    'the upstream address on an unconfigured port (127.0.0.1:other)',
    '127.0.0.2 written as a decimal number',
    '127.0.0.2 written in hex',
    '127.0.0.2 as an IPv4-mapped IPv6 address ([::ffff:127.0.0.2])',
    '127.0.0.2 as a full IPv4-mapped IPv6 address ([0:0:0:0:0:ffff:7f00:2])',
  ];

  for (const name of TARGET_NAMES) {
    test(`an upstream redirecting a blob and a manifest to ${name} is refused and the target is never contacted`, async () => {
      const i = Object.keys(targets).indexOf(name);
      assert.ok(i >= 0, `target ${name} is in the table`);
      // A digest nobody has cached: berth has to ask the upstream (which redirects).
      const fresh = sha256Digest(randomBytes(16));
      for (const p of [`/v2/redirect/${i}/x/blobs/${fresh}?ns=a.test`, `/v2/redirect/${i}/x/manifests/1?ns=a.test`]) {
        const before = originGets(a, new RegExp(`^/v2/redirect/${i}/`));
        const r = await fetchOutcome(b.url, p, { headers: { accept: MediaTypes.oci.manifest }, timeoutMs: 20_000 });
        assertNobodyElseContacted(`redirect to ${name}`);
        assert.ok(originGets(a, new RegExp(`^/v2/redirect/${i}/`)) > before, `the upstream was asked (and answered with the redirect): ${describeOutcome(r)}`);
        assert.ok(r.status !== undefined && r.status >= 400, `${p} -> ${describeOutcome(r)}`);
        assert.match(r.body.toString('utf8'), /refused redirect/, `the refusal should say why (${p}): ${describeOutcome(r)}`);
        assert.ok(r.ms < 5_000, `refused at once, not after a connection attempt (${Math.round(r.ms)} ms)`);
      }
    });

    test(`an upstream whose token realm is ${name} is refused and the realm is never contacted`, async () => {
      const i = Object.keys(targets).indexOf(name);
      const p = `/v2/realm/${i}/x/manifests/1?ns=a.test`;
      const r = await fetchOutcome(b.url, p, { headers: { accept: MediaTypes.oci.manifest }, timeoutMs: 20_000 });
      assertNobodyElseContacted(`realm ${name}`);
      assert.ok(r.status !== undefined && r.status >= 400, `${p} -> ${describeOutcome(r)}`);
      assert.match(r.body.toString('utf8'), /refused token request/, `the refusal should say why: ${describeOutcome(r)}`);
      assert.ok(r.ms < 5_000, `refused at once, not after a connection attempt (${Math.round(r.ms)} ms)`);
    });
  }

  test('a redirect chain through another configured upstream to 127.0.0.2 is refused at the second hop', async () => {
    const r = await fetchOutcome(b.url, `/v2/hop/x/blobs/${sha256Digest(randomBytes(16))}?ns=a.test`);
    assertNobodyElseContacted('redirect chain');
    assert.ok(originGets(bOrigin, /^\/v2\/hop\//) >= 1, `the first hop (b.test) was followed: ${describeOutcome(r)}`);
    assert.ok(r.status !== undefined && r.status >= 400, describeOutcome(r));
    assert.match(r.body.toString('utf8'), /refused redirect/, describeOutcome(r));
  });

  test('a token realm on a configured upstream that redirects to 127.0.0.2 is refused at the redirect', async () => {
    const r = await fetchOutcome(b.url, '/v2/realm-hop/x/manifests/1?ns=a.test', { headers: { accept: MediaTypes.oci.manifest } });
    assertNobodyElseContacted('realm redirect');
    assert.ok(originGets(bOrigin, /^\/token-hop/) >= 1, `the realm on b.test was asked: ${describeOutcome(r)}`);
    assert.ok(r.status !== undefined && r.status >= 400, describeOutcome(r));
    assert.match(r.body.toString('utf8'), /refused redirect/, describeOutcome(r));
  });
});
