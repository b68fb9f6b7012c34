// The index conformance suite (test/support/conformance/index.ts) against the PostgreSQL index (issue #12) on a
// throw-away PostgreSQL 15, a fresh database per case; and, for parity, against the SQLite StoreIndex behind
// asyncIndex(): the same cases, awaited the same way, must pass on both. What only PostgreSQL has (replicas,
// migrations racing, outages) is in test/pg-index.test.ts.
import path from 'node:path';
import { after, before } from 'node:test';
import { type AsyncRegistryIndex, asyncIndex } from '../src/store/async-index-roles.ts';
import { PgIndex } from '../src/store/pg/pg-index.ts';
import { StoreIndex } from '../src/store/store-index.ts';
import { indexConformance } from './support/conformance/index.ts';
import { type Postgres, startPostgres } from './support/postgres.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';

let server: Postgres | undefined;
before(async () => {
  server = await startPostgres();
});
after(async () => {
  await server?.destroy();
});

indexConformance('PostgreSQL PgIndex', async () => {
  if (!server) throw new Error('PostgreSQL did not start');
  const pg = server;
  const url = await pg.createDatabase();
  let index: AsyncRegistryIndex = await PgIndex.open({ url, poolSize: 4 });
  return {
    get index() {
      return index;
    },
    async reopen() {
      await index.close();
      index = await PgIndex.open({ url, poolSize: 4 });
      return index;
    },
    async cleanup() {
      await index.close();
      await pg.dropDatabase(url);
    },
  };
});

indexConformance('SQLite StoreIndex behind asyncIndex()', async () => {
  const dir = await makeTempDir('conformance-sqlite-async');
  const file = path.join(dir, 'berth.db');
  let index = asyncIndex(new StoreIndex(file));
  let open = true;
  return {
    get index() {
      return index;
    },
    async reopen() {
      await index.close();
      index = asyncIndex(new StoreIndex(file));
      return index;
    },
    async cleanup() {
      if (open) await index.close();
      open = false;
      await removeTempDir(dir);
    },
  };
});
