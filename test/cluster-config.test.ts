// config `cluster` (issue #12): it needs the PostgreSQL index, a secret of at least 16 characters and an
// advertise URL peers can reach; without it nothing changes.
import assert from 'node:assert/strict';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { ConfigError, loadConfig } from '../src/config/load.ts';

const PG = 'index:\n  driver: postgres\n  postgres:\n    url: postgres://berth@127.0.0.1:5432/berth\n';
const UP = 'upstreams:\n  - host: docker.io\n    url: http://127.0.0.1:1\n';

async function load(yaml: string) {
  const dir = await mkdtemp(path.join(tmpdir(), 'berth-cluster-config-'));
  const file = path.join(dir, 'berth.yaml');
  await writeFile(file, UP + yaml);
  return loadConfig({ config: file }, {});
}

async function failure(yaml: string): Promise<string> {
  try {
    await load(yaml);
  } catch (err) {
    assert.ok(err instanceof ConfigError, String(err));
    return err.message;
  }
  assert.fail('expected a ConfigError');
}

describe('cluster configuration', () => {
  it('is absent by default', async () => {
    assert.equal((await load('')).cluster, undefined);
  });

  it('takes advertise, secret and leaseTimeout (default 5s) with the PostgreSQL index', async () => {
    const c = await load(`${PG}cluster:\n  advertise: http://10.0.0.5:5000\n  secret: 0123456789abcdef\n`);
    assert.deepEqual(c.cluster, { advertise: 'http://10.0.0.5:5000', secret: '0123456789abcdef', leaseTimeout: 5000 });
  });

  it('refuses a cluster without the PostgreSQL index, naming what is missing', async () => {
    assert.match(await failure('cluster:\n  advertise: http://10.0.0.5:5000\n  secret: 0123456789abcdef\n'), /cluster.*needs index\.driver: postgres and index\.postgres\.url/);
  });

  it('refuses a missing or short secret, a bad advertise URL and a lease timeout under 2 s', async () => {
    assert.match(await failure(`${PG}cluster:\n  advertise: http://10.0.0.5:5000\n`), /cluster\.secret/);
    assert.match(await failure(`${PG}cluster:\n  advertise: http://10.0.0.5:5000\n  secret: short\n`), /at least 16 characters/);
    assert.match(await failure(`${PG}cluster:\n  secret: 0123456789abcdef\n`), /cluster\.advertise/);
    assert.match(await failure(`${PG}cluster:\n  advertise: 10.0.0.5:5000\n  secret: 0123456789abcdef\n`), /http:\/\/host:port/);
    assert.match(await failure(`${PG}cluster:\n  advertise: http://10.0.0.5:5000/x\n  secret: 0123456789abcdef\n`), /no path/);
    assert.match(await failure(`${PG}cluster:\n  advertise: http://10.0.0.5:5000\n  secret: 0123456789abcdef\n  leaseTimeout: 1s\n`), /at least 2s/);
  });
});
