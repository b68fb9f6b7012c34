// The PostgreSQL index (issue #12) when PostgreSQL is not there: unreachable at start (refused, a black hole, a
// refused login), hung mid-run (SIGSTOP), stopped mid-run and back. Every failure must be fast, name PostgreSQL
// and where it is (never the password), and the same PgIndex must work again once the server is back.
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';
import { PgDb, PgUnavailableError } from '../src/store/pg/db.ts';
import { PgIndex } from '../src/store/pg/pg-index.ts';
import { someDigest } from './support/conformance/index.ts';
import { waitUntil } from './support/links.ts';
import { type Postgres, startPostgres } from './support/postgres.ts';

const MANIFEST = 'application/vnd.oci.image.manifest.v1+json';

/** A loopback port nothing listens on (below 32768, where no outgoing connection takes it meanwhile). */
async function deadPort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

describe('the PostgreSQL index when PostgreSQL is not there', () => {
  let server: Postgres;
  before(async () => {
    server = await startPostgres();
  });
  after(async () => {
    await server?.destroy();
  });

  test('PostgreSQL unreachable at start: a clear error naming PostgreSQL and host:port, never the password, within seconds', async () => {
    const secret = 'Pa55-w0rd-never-shown';
    // Nothing listening: refused at once.
    const port = await deadPort();
    let t0 = Date.now();
    let err = await PgIndex.open({ url: `postgres://berth:${secret}@127.0.0.1:${port}/berth` }).then(
      () => assert.fail('opened'),
      (e: Error) => e,
    );
    assert.ok(Date.now() - t0 < 3000, `refused after ${Date.now() - t0} ms`);
    assert.match(err.message, new RegExp(`PostgreSQL at 127\\.0\\.0\\.1:${port} \\(database berth, user berth\\).*ECONNREFUSED`));
    assert.ok(!err.message.includes(secret) && !String(err.stack).includes(secret), err.message);
    // A listener that accepts and never answers (a hung server, a black-holed route): the connect timeout.
    const sockets = new Set<net.Socket>();
    const hole = net.createServer((s) => sockets.add(s));
    await new Promise<void>((resolve) => hole.listen(0, '127.0.0.1', resolve));
    const holePort = (hole.address() as net.AddressInfo).port;
    try {
      t0 = Date.now();
      err = await PgIndex.open({ url: `postgres://berth:${secret}@127.0.0.1:${holePort}/berth`, connectTimeoutMs: 2000 }).then(
        () => assert.fail('opened'),
        (e: Error) => e,
      );
      const took = Date.now() - t0;
      assert.ok(took >= 1900 && took < 6000, `gave up after ${took} ms`);
      assert.match(err.message, new RegExp(`PostgreSQL at 127\\.0\\.0\\.1:${holePort} .*unavailable`));
      assert.ok(!err.message.includes(secret), err.message);
    } finally {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => hole.close(() => resolve()));
    }
    // Reachable, but the login is refused: says so, names the server, not the password.
    err = await PgIndex.open({ url: `postgres://berth:${secret}@127.0.0.1:${server.port}/berth` }).then(
      () => assert.fail('opened'),
      (e: Error) => e,
    );
    assert.match(err.message, new RegExp(`PostgreSQL at 127\\.0\\.0\\.1:${server.port} .*password authentication failed for user "berth"`));
    assert.ok(!err.message.includes(secret), err.message);
    // A URL pg cannot parse is refused without being quoted.
    assert.throws(
      () => new PgDb({ url: `postgres://berth:${secret}@127.0.0.1:99999999/x` }),
      (e: Error) => !e.message.includes(secret),
    );
  });

  test('PostgreSQL hung (SIGSTOP): probe and queries fail within their timeouts instead of hanging; it answers again once resumed', async () => {
    const url = await server.createDatabase();
    const index = await PgIndex.open({ url, poolSize: 2, connectTimeoutMs: 1500, queryTimeoutMs: 1500, probeTimeoutMs: 1000 });
    try {
      await index.putTag({ upstream: 'docker.io', repository: 'library/app', tag: '1', digest: someDigest(), mediaType: MANIFEST, size: 1, checkedAt: 1 });
      await Promise.all([index.probe(), index.probe()]);
      server.freeze();
      try {
        let t0 = Date.now();
        await assert.rejects(index.probe(), (e: Error) => e instanceof PgUnavailableError && /did not answer within 1000 ms/.test(e.message));
        assert.ok(Date.now() - t0 < 2000, `probe gave up after ${Date.now() - t0} ms`);
        t0 = Date.now();
        // Over a pooled connection (the read timeout) or a new one (the connect timeout): either way an error in seconds.
        const errs = await Promise.all(
          [1, 2, 3].map(() =>
            index.listTags('docker.io', 'library/app').then(
              () => undefined,
              (e: Error) => e,
            ),
          ),
        );
        assert.ok(Date.now() - t0 < 6000, `queries gave up after ${Date.now() - t0} ms`);
        for (const e of errs) assert.ok(e instanceof PgUnavailableError && e.message.includes(`PostgreSQL at 127.0.0.1:${server.port}`), String(e));
      } finally {
        server.thaw();
      }
      await waitUntil(
        'the index answering again',
        () =>
          index.probe().then(
            () => true,
            () => false,
          ),
        15_000,
        100,
      );
      assert.deepEqual(await index.listTags('docker.io', 'library/app'), ['1']);
    } finally {
      await index.close();
      await server.dropDatabase(url);
    }
  });

  // Last: it stops the file's server.
  test('PostgreSQL stopped mid-run: calls fail fast naming it, pending access times wait; after a restart the same index works', async () => {
    const url = await server.createDatabase();
    const index = await PgIndex.open({ url, poolSize: 3 });
    try {
      const m = { upstream: 'docker.io', repository: 'library/app', digest: someDigest('m'), size: 10, mediaType: MANIFEST, children: [] };
      await index.recordManifest(m);
      await index.putTag({ upstream: m.upstream, repository: m.repository, tag: '1', digest: m.digest, mediaType: MANIFEST, size: m.size, checkedAt: 1 });
      // Idle connections in the pool when the server goes: their loss must not crash the process.
      await Promise.all([index.getBlob(m.digest), index.getBlob(m.digest), index.getBlob(m.digest)]);
      await server.stop();
      for (const call of [() => index.getTag(m.upstream, m.repository, '1'), () => index.probe(), () => index.recordManifest(m)]) {
        const t0 = Date.now();
        const err = await call().then(
          () => assert.fail('answered with the server stopped'),
          (e: Error) => e,
        );
        assert.ok(Date.now() - t0 < 3000, `failed after ${Date.now() - t0} ms`);
        assert.ok(err instanceof PgUnavailableError, `${err.name}: ${err.message}`);
        assert.match(err.message, new RegExp(`PostgreSQL at 127\\.0\\.0\\.1:${server.port} `));
      }
      const readAt = Date.now() + 60_000;
      await index.touch(m.digest, readAt);
      await assert.rejects(index.flushAccess(), PgUnavailableError);
      await server.start();
      await index.probe();
      assert.equal((await index.getTag(m.upstream, m.repository, '1'))?.digest, m.digest, 'the same PgIndex reads again');
      await index.flushAccess();
      assert.equal((await index.getBlob(m.digest))?.accessedAt, readAt, 'the access time kept through the outage is written');
    } finally {
      await index.close();
      await server.start();
      await server.dropDatabase(url);
    }
  });
});
