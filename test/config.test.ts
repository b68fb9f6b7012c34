// Configuration: defaults with no file, file < environment < flags, and start-up refusing bad input
// with a message that names the field.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { promisify } from 'node:util';
import { loadConfig } from '../src/config/load.ts';
import { configFailure } from './support/config-failure.ts';

const run = promisify(execFile);
const root = path.resolve(import.meta.dirname, '..');

async function configFile(yaml: string): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'berth-config-'));
  const file = path.join(dir, 'berth.yaml');
  await writeFile(file, yaml);
  return file;
}

const failure = configFailure;

describe('configuration', () => {
  it('gives a working default with no file at all: :5000, ./storage, the public registries, docker.io default', () => {
    const c = loadConfig({ config: undefined }, {});
    assert.equal(c.listen, ':5000');
    assert.equal(c.storage.path, './storage');
    assert.deepEqual(
      c.upstreams.map((u) => u.host),
      ['docker.io', 'quay.io', 'ghcr.io', 'registry.k8s.io', 'gcr.io'],
    );
    assert.equal(c.defaultUpstream, 'docker.io');
    assert.equal(c.tagTtl, 300_000);
    assert.ok(Object.isFrozen(c) && Object.isFrozen(c.upstreams[0]));
  });

  it('lets the environment override the file and flags override both', async () => {
    const file = await configFile('listen: ":6000"\ntagTtl: 10m\nupstreams:\n  - host: quay.io\n    url: http://127.0.0.1:1\n');
    const env = { BERTH_LISTEN: ':7000', BERTH_TAG_TTL: '30s', BERTH_UPSTREAM_QUAY_IO_USERNAME: 'u', BERTH_UPSTREAM_QUAY_IO_PASSWORD: 'p' };
    const c = loadConfig({ config: file, listen: '127.0.0.1:8000' }, env);
    assert.equal(c.listen, '127.0.0.1:8000');
    assert.equal(c.tagTtl, 30_000);
    assert.equal(c.defaultUpstream, 'quay.io');
    assert.equal(c.upstreams[0]!.username, 'u');
    assert.equal(c.upstreams[0]!.password, 'p');
    const flagged = loadConfig({ config: file, upstream: ['docker.io=http://127.0.0.1:2', 'ghcr.io=http://127.0.0.1:3'] }, {});
    assert.deepEqual(
      flagged.upstreams.map((u) => `${u.host}=${u.url}`),
      ['docker.io=http://127.0.0.1:2', 'ghcr.io=http://127.0.0.1:3'],
    );
    assert.equal(flagged.defaultUpstream, 'docker.io');
  });

  it('reads a password from a file or a named environment variable, never only from the YAML', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'berth-secret-'));
    await writeFile(path.join(dir, 'pw'), 's3cret\n');
    const file = await configFile(
      `upstreams:\n  - host: quay.io\n    url: https://quay.io\n    username: me\n    passwordFile: ${path.join(dir, 'pw')}\n  - host: ghcr.io\n    url: https://ghcr.io\n    username: bot\n    passwordEnv: GHCR_TOKEN\n`,
    );
    const c = loadConfig({ config: file }, { GHCR_TOKEN: 'tok' });
    assert.equal(c.upstreams[0]!.password, 's3cret');
    assert.equal(c.upstreams[1]!.password, 'tok');
    assert.match(
      failure(() => loadConfig({ config: file }, {})),
      /upstreams\[1\]\.passwordEnv: environment variable GHCR_TOKEN is not set/,
    );
  });

  it('names the field and what is wrong with it', async () => {
    const cases: Array<[string, RegExp]> = [
      ['listen: 5000x\n', /listen: must be HOST:PORT/],
      ['tagTtl: soon\n', /tagTtl: "soon" is not a duration/],
      ['storage:\n  maxSize: lots\n', /storage\.maxSize: "lots" is not a size/],
      ['bandwidth:\n  limit: fast\n', /bandwidth\.limit: "fast" is not a rate/],
      ['upstreams:\n  - host: "bad host"\n    url: https://x\n', /upstreams\[0\]\.host: must be a registry host/],
      ['upstreams:\n  - host: a.io\n    url: ftp://x\n', /upstreams\[0\]\.url: must be an http/],
      ['upstreams: []\n', /upstreams: at least one upstream/],
      ['lazyFill: sometimes\n', /lazyFill/],
      ['colour: blue\n', /colour|Unrecognized key/],
      ['defaultUpstream: nowhere.io\n', /defaultUpstream: "nowhere.io" is not one of the configured upstreams/],
      ['upstreams:\n  - host: a.io\n    url: https://a\n  - host: a.io\n    url: https://b\n', /configured twice/],
      ['upstreams:\n  - host: a.io\n    url: https://a\n    ca: /nonexistent/ca.pem\n', /upstreams\[0\]\.ca: file \/nonexistent\/ca.pem does not exist/],
      [': : :\n', /not valid YAML/],
    ];
    for (const [yaml, expected] of cases) {
      const file = await configFile(yaml);
      assert.match(
        failure(() => loadConfig({ config: file }, {})),
        expected,
        yaml,
      );
    }
  });

  it('stops `berth serve` with exit code 2 and the field named, before listening', async () => {
    const file = await configFile('tagTtl: forever\nupstreams:\n  - host: docker.io\n    url: http://127.0.0.1:9\n');
    const err = await run(process.execPath, ['--import', 'tsx', 'src/main.ts', 'serve', '--config', file, '--listen', '127.0.0.1:0'], { cwd: root }).then(
      () => assert.fail('berth serve should have refused the config'),
      (e: { code: number; stderr: string }) => e,
    );
    assert.equal(err.code, 2);
    assert.match(err.stderr, /tagTtl: "forever" is not a duration/);
    const flag = await run(process.execPath, ['--import', 'tsx', 'src/main.ts', 'serve', '--upstream', 'nonsense'], { cwd: root }).then(
      () => assert.fail('a bad --upstream should be refused'),
      (e: { code: number; stderr: string }) => e,
    );
    assert.equal(flag.code, 2);
    assert.match(flag.stderr, /--upstream: "nonsense" must be HOST=URL/);
  });
});
