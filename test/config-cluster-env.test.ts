// BERTH_CLUSTER_ADVERTISE, BERTH_CLUSTER_SECRET and BERTH_INDEX_POSTGRES_URL: the settings that differ per
// replica or are secret come from the environment (deploy/kubernetes/overlays/replicated sets them), a bad
// value is reported under the variable's name, and the secret is never part of an error message.
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { loadConfig } from '../src/config/load.ts';
import { configFailure } from './support/config-failure.ts';

const UP = 'upstreams:\n  - host: docker.io\n    url: http://127.0.0.1:1\n';
const PG = 'index:\n  driver: postgres\n  postgres:\n    url: postgres://berth@127.0.0.1:5432/berth\n';
const SECRET = 'kq93-NOT-IN-MESSAGES-7f1c';
const ADVERTISE = 'http://10.0.0.5:5000';

describe('cluster settings from the environment', () => {
  let dir: string;
  const file = async (yaml: string) => {
    const f = path.join(dir, `berth-${Math.random().toString(36).slice(2)}.yaml`);
    await writeFile(f, UP + yaml);
    return f;
  };
  const failure = configFailure;

  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'berth-cluster-env-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('BERTH_CLUSTER_ADVERTISE and BERTH_CLUSTER_SECRET make the cluster block, without any cluster: in the file', async () => {
    const c = loadConfig({ config: await file(PG) }, { BERTH_CLUSTER_ADVERTISE: ADVERTISE, BERTH_CLUSTER_SECRET: SECRET });
    assert.deepEqual(c.cluster, { advertise: ADVERTISE, secret: SECRET, leaseTimeout: 5000 });
  });

  it("they fill in a file's cluster: block and win over its values; leaseTimeout stays the file's", async () => {
    const yaml = `${PG}cluster:\n  advertise: http://10.9.9.9:5000\n  secret: from-the-file-0123456\n  leaseTimeout: 10s\n`;
    const c = loadConfig({ config: await file(yaml) }, { BERTH_CLUSTER_ADVERTISE: ADVERTISE, BERTH_CLUSTER_SECRET: SECRET });
    assert.deepEqual(c.cluster, { advertise: ADVERTISE, secret: SECRET, leaseTimeout: 10_000 });
    const secretOnly = loadConfig({ config: await file(`${PG}cluster:\n  advertise: ${ADVERTISE}\n  leaseTimeout: 10s\n`) }, { BERTH_CLUSTER_SECRET: SECRET });
    assert.equal(secretOnly.cluster?.secret, SECRET);
  });

  it('an empty variable is as good as unset', async () => {
    const c = loadConfig({ config: await file(PG) }, { BERTH_CLUSTER_ADVERTISE: '', BERTH_CLUSTER_SECRET: '', BERTH_INDEX_POSTGRES_URL: '' });
    assert.equal(c.cluster, undefined);
    assert.equal(c.index.postgres?.url, 'postgres://berth@127.0.0.1:5432/berth');
  });

  it('BERTH_INDEX_POSTGRES_URL sets index.postgres.url, over the file and without one (poolSize keeps its default)', async () => {
    const url = 'postgres://berth@db.example:5432/cache';
    assert.equal(loadConfig({ config: await file(PG) }, { BERTH_INDEX_POSTGRES_URL: url }).index.postgres?.url, url);
    const c = loadConfig({ config: await file('index:\n  driver: postgres\n') }, { BERTH_INDEX_POSTGRES_URL: url });
    assert.deepEqual(c.index.postgres, { url, poolSize: 10 });
  });

  it('a bad value is reported under the variable that set it', async () => {
    const pg = await file(PG);
    assert.match(
      failure(() => loadConfig({ config: pg }, { BERTH_CLUSTER_ADVERTISE: '10.0.0.5:5000', BERTH_CLUSTER_SECRET: SECRET })),
      /^BERTH_CLUSTER_ADVERTISE: cluster\.advertise: must be http:\/\/host:port/m,
    );
    assert.match(
      failure(() => loadConfig({ config: pg }, { BERTH_CLUSTER_ADVERTISE: ADVERTISE, BERTH_CLUSTER_SECRET: 'short' })),
      /^BERTH_CLUSTER_SECRET: cluster\.secret: must be at least 16 characters/m,
    );
    assert.match(
      failure(() => loadConfig({ config: pg }, { BERTH_INDEX_POSTGRES_URL: 'mysql://db/berth' })),
      /^BERTH_INDEX_POSTGRES_URL: index\.postgres\.url: must be a postgres:\/\//m,
    );
    // The one that is missing is reported under the file, where the other would have gone.
    const missing = failure(() => loadConfig({ config: pg }, { BERTH_CLUSTER_ADVERTISE: ADVERTISE }));
    assert.match(missing, new RegExp(`^${pg.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: cluster\\.secret: `, 'm'));
    assert.doesNotMatch(missing, /BERTH_CLUSTER_ADVERTISE/);
  });

  it('the secret is never in an error message: too short, beside another bad value, or without the PostgreSQL index', async () => {
    const pg = await file(PG);
    const short = 'tooShort-s3cr3t';
    const noPg = await file('');
    const messages = [
      failure(() => loadConfig({ config: pg }, { BERTH_CLUSTER_ADVERTISE: ADVERTISE, BERTH_CLUSTER_SECRET: short })),
      failure(() => loadConfig({ config: pg }, { BERTH_CLUSTER_ADVERTISE: 'ftp://x', BERTH_CLUSTER_SECRET: SECRET, BERTH_TAG_TTL: 'soon' })),
      failure(() => loadConfig({ config: noPg }, { BERTH_CLUSTER_ADVERTISE: ADVERTISE, BERTH_CLUSTER_SECRET: SECRET })),
    ];
    assert.match(messages[0]!, /BERTH_CLUSTER_SECRET/);
    assert.match(messages[1]!, /^BERTH_CLUSTER_ADVERTISE: /m);
    assert.match(messages[1]!, /^BERTH_TAG_TTL: /m);
    assert.match(messages[2]!, /needs index\.driver: postgres/);
    for (const m of messages) {
      assert.ok(!m.includes(short) && !m.includes(SECRET), `the secret is in: ${m}`);
    }
  });
});
