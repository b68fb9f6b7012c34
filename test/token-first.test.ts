// Bearer tokens up front (issue #9 §4, cold-request latency): once an upstream's token realm is known, the
// first request for a new repository fetches that repository's token first, as containerd and docker do,
// instead of going out without one, getting a 401 and then asking the token service (one round trip
// more on every cold repository). Concurrent cold requests share one token fetch; a token the upstream
// refuses is dropped and fetched again; a token service that fails does not stop paths that need no token.
// src/upstream/transport.ts, src/upstream/token-cache.ts.
import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, test } from 'node:test';
import { UpstreamSchema } from '../src/config/schema.ts';
import { UpstreamClient } from '../src/upstream/client.ts';
import { MediaTypes } from './support/images.ts';
import { type OriginRequest, respond, type StandInOrigin, sha256Digest, startStandInOrigin } from './support/stand-in-origin.ts';

const config = Buffer.from('{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}');
const manifest = Buffer.from(
  JSON.stringify({ schemaVersion: 2, mediaType: MediaTypes.oci.manifest, config: { mediaType: MediaTypes.oci.config, digest: sha256Digest(config), size: config.length }, layers: [] }),
);

let origin: StandInOrigin;
let issued = 0;
/** Tokens the registry no longer accepts (revoked early). */
const revoked = new Set<string>();
let tokenServiceDown = false;
const clients: UpstreamClient[] = [];

before(async () => {
  origin = await startStandInOrigin(
    (req, reply) => {
      const path = req.path.split('?')[0]!;
      if (path === '/token') {
        if (tokenServiceDown) return respond(reply, 500, { 'Content-Type': 'text/plain' }, 'down');
        const scope = new URL(req.path, 'http://x').searchParams.get('scope') ?? '';
        return respond(reply, 200, { 'Content-Type': 'application/json' }, JSON.stringify({ token: `t${++issued}|${scope}`, expires_in: 300 }));
      }
      // /v2/open/… needs no token (an upstream where some repositories are public without one).
      if (!path.startsWith('/v2/open/')) {
        const repo = /^\/v2\/(.+)\/manifests\//.exec(path)?.[1];
        const token = (req.headers.authorization ?? '').replace(/^Bearer /, '');
        if (!token.endsWith(`|repository:${repo}:pull`) || revoked.has(token)) {
          return respond(
            reply,
            401,
            { 'WWW-Authenticate': `Bearer realm="${origin.url}/token",service="origin.test"`, 'Content-Type': 'application/json' },
            '{"errors":[{"code":"UNAUTHORIZED","message":"token"}]}',
          );
        }
      }
      reply.head(200, { 'Content-Type': MediaTypes.oci.manifest, 'Content-Length': manifest.length, 'Docker-Content-Digest': sha256Digest(manifest) });
      reply.end(req.method === 'HEAD' ? undefined : manifest);
    },
    { keepAlive: true },
  );
});

after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await origin?.close();
});

beforeEach(() => {
  tokenServiceDown = false;
  revoked.clear();
});

function newClient(): UpstreamClient {
  const c = new UpstreamClient(UpstreamSchema.parse({ host: 'origin.test', url: origin.url, timeouts: { connect: '2s', header: '5s', idle: '5s' } }));
  clients.push(c);
  return c;
}

/** What reached the origin since `mark`: `401`, `token` or `manifest`, in order. */
function sequence(mark: number): string[] {
  return origin.requests.slice(mark).map((r: OriginRequest) => (r.path.startsWith('/token') ? 'token' : r.headers.authorization ? 'manifest' : 'unauthenticated'));
}

describe('bearer tokens up front', () => {
  test('the first repository learns the realm through a 401; the next repository asks for its token first', async () => {
    const c = newClient();
    let mark = origin.requests.length;
    await c.manifest('first/app', '1', MediaTypes.oci.manifest);
    assert.deepEqual(sequence(mark), ['unauthenticated', 'token', 'manifest']);
    mark = origin.requests.length;
    await c.manifest('second/app', '1', MediaTypes.oci.manifest);
    assert.deepEqual(sequence(mark), ['token', 'manifest'], 'no 401 round trip for a repository of a known realm');
    mark = origin.requests.length;
    await c.headManifest('second/app', '1', MediaTypes.oci.manifest);
    assert.deepEqual(sequence(mark), ['manifest'], 'the cached token serves the repository again');
  });

  test('concurrent cold requests for one repository share one token fetch', async () => {
    const c = newClient();
    await c.manifest('warm/app', '1', MediaTypes.oci.manifest);
    const mark = origin.requests.length;
    await Promise.all(Array.from({ length: 8 }, () => c.headManifest('cold/app', '1', MediaTypes.oci.manifest)));
    const seen = sequence(mark);
    assert.equal(seen.filter((s) => s === 'token').length, 1, seen.join(' '));
    assert.equal(seen.filter((s) => s === 'manifest').length, 8, seen.join(' '));
  });

  test('a token the upstream refuses is dropped and a new one fetched, once', async () => {
    const c = newClient();
    await c.manifest('rotating/app', '1', MediaTypes.oci.manifest);
    const used = origin.requests.at(-1)!.headers.authorization!.replace(/^Bearer /, '');
    revoked.add(used);
    const mark = origin.requests.length;
    await c.manifest('rotating/app', '1', MediaTypes.oci.manifest);
    assert.deepEqual(sequence(mark), ['manifest', 'token', 'manifest']);
    const fresh = origin.requests.at(-1)!.headers.authorization!.replace(/^Bearer /, '');
    assert.notEqual(fresh, used);
  });

  test('a failing token service does not stop a path that needs no token, and fails a path that does with its own error', async () => {
    const c = newClient();
    await c.manifest('learn/app', '1', MediaTypes.oci.manifest);
    tokenServiceDown = true;
    const open = await c.manifest('open/app', '1', MediaTypes.oci.manifest);
    assert.equal(open.bytes.length, manifest.length);
    const mark = origin.requests.length;
    await assert.rejects(c.manifest('closed/app', '1', MediaTypes.oci.manifest), /token service of upstream origin\.test answered 500/);
    assert.deepEqual(sequence(mark), ['token', 'unauthenticated'], 'the token service is asked once, not again after the 401');
  });
});
