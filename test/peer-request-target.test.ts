// The internal endpoint checks a peer's signature against its own advertise origin (src/http/cluster.ts):
// what a host that is no replica got (a lease row named it) is good for that host only. An HTTP/1.1 request
// may name its target in absolute form (`GET http://host/path`), and Node hands that to the app as it
// came: built into a URL, it replaced our origin with the one the request named, so the collector's
// signature, sent to a real replica in absolute form, was good there too. And the Range is signed, but an
// If-Range (not signed) made the endpoint serve the whole blob instead. One endpoint, no replicas.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { connect } from 'node:net';
import { Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import Koa from 'koa';
import pino from 'pino';
import { signPeerRequest } from '../src/cluster/peer-auth.ts';
import { CLUSTER_BLOB_PATH } from '../src/cluster/peer-client.ts';
import { clusterEndpoint } from '../src/http/cluster.ts';
import { errorMiddleware } from '../src/http/errors.ts';
import type { Digest } from '../src/oci/digest.ts';

const SECRET = 'a-cluster-secret-of-some-length';
const bytes = Buffer.from('the blob');
const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}` as Digest;
let server: ReturnType<Koa['listen']>;
let origin: string;

before(async () => {
  const app = new Koa();
  app.use(errorMiddleware);
  let endpoint: ((ctx: Koa.Context) => Promise<void>) | undefined;
  app.use((ctx) => endpoint!(ctx));
  server = app.listen(0, '127.0.0.1');
  await once(server, 'listening');
  origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  endpoint = clusterEndpoint({
    secret: SECRET,
    advertise: origin,
    blobs: { cached: async () => ({ digest, size: bytes.length, source: 'cache', read: () => Readable.from([bytes]) }) },
    fills: { get: () => undefined },
    log: pino({ level: 'silent' }),
  });
});
after(() => server?.close());

/** Status of a request sent as written (`target` verbatim in the request line). */
async function status(target: string, authorization: string, more = ''): Promise<number> {
  const socket = connect((server.address() as AddressInfo).port, '127.0.0.1');
  socket.end(`GET ${target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: ${authorization}\r\n${more}Connection: close\r\n\r\n`);
  let text = '';
  for await (const chunk of socket) text += chunk;
  return Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1]);
}

describe('the target a peer request is checked for', () => {
  const path = `${CLUSTER_BLOB_PATH}${digest}?upstream=up.example&repository=library%2Fx`;

  test('a request signed for us, in origin form, is served', async () => {
    assert.equal(await status(path, signPeerRequest(SECRET, 'GET', new URL(path, origin), undefined)), 200);
  });

  test("another host's signature is refused here, also when the request names that host in absolute form", async () => {
    const collector = 'http://collector.example';
    const theirs = signPeerRequest(SECRET, 'GET', new URL(path, collector), undefined);
    assert.equal(await status(path, theirs), 401);
    assert.equal(await status(`${collector}${path}`, theirs), 401);
  });

  test('the Range signed is the range served: an If-Range added to a signed request does not widen it to the whole blob', async () => {
    const range = 'bytes=4-';
    const signed = signPeerRequest(SECRET, 'GET', new URL(path, origin), range);
    assert.equal(await status(path, signed, `Range: ${range}\r\n`), 206);
    assert.equal(await status(path, signed, `Range: ${range}\r\nIf-Range: "not-this-blob"\r\n`), 206);
  });
});
