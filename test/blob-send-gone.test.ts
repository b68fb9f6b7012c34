// sendBlob's writes (src/http/blob-response.ts sendDirect) resolve when the socket took the chunk. Node drops
// a response write whose socket is destroyed but has not emitted 'close' yet (it returns false and never
// calls back: _http_outgoing.js _writeRaw), and a client reset lands in that gap whenever the reset is read
// in the same turn of the event loop as the read of the next chunk. The write then never settled: the send
// hung for good, holding its fill's reader (the fill never closed its file nor was abandoned) or its blob's
// file. One server on loopback.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import Koa from 'koa';
import { sendBlob } from '../src/http/blob-response.ts';
import type { Digest } from '../src/oci/digest.ts';

const digest = `sha256:${'0'.repeat(64)}` as Digest;
let server: ReturnType<Koa['listen']>;
/** What the blob's send ended with, once it ended. */
let ended: PromiseWithResolvers<unknown>;

before(async () => {
  const app = new Koa();
  app.use(async (ctx) => {
    sendBlob(
      ctx,
      {
        digest,
        size: 1024,
        source: 'fill',
        read: () => Readable.from([]),
        async send(_start, _end, write) {
          await write(Buffer.alloc(512, 1));
          // The client's reset, read just before our next chunk was: destroyed, its 'close' still to come.
          ctx.req.socket.destroy();
          try {
            await write(Buffer.alloc(512, 2));
            ended.resolve('written');
          } catch (err) {
            ended.resolve(err);
            throw err;
          }
        },
      },
      undefined,
      () => {},
    );
  });
  server = app.listen(0, '127.0.0.1');
  await once(server, 'listening');
});
after(() => server?.close());

describe('a blob send whose client went away', () => {
  test('a write into a socket destroyed just before fails: the send ends', { timeout: 10_000 }, async () => {
    ended = Promise.withResolvers();
    const req = http.get(`http://127.0.0.1:${(server.address() as AddressInfo).port}/`);
    req.on('error', () => {});
    req.on('response', (res) => res.on('error', () => {}).resume());
    const outcome = await ended.promise;
    assert.ok(outcome instanceof Error, `the write failed (got ${String(outcome)})`);
  });
});
