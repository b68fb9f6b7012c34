// The local registry's names (issue #10): `local.prefixes` say which repositories are the site's own.
// A local name routes to the local registry whatever it looks like; a prefix can never be a registry host,
// so no name is both local and an upstream's; `?ns=` always names an upstream.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { ConfigError, loadConfig } from '../src/config/load.ts';
import { LOCAL_UPSTREAM } from '../src/registry/local-names.ts';
import { Upstreams } from '../src/registry/upstreams.ts';

const dir = mkdtempSync(join(tmpdir(), 'berth-local-names-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function configWith(yaml: string) {
  const file = join(dir, `c${Math.random().toString(36).slice(2)}.yaml`);
  writeFileSync(file, `upstreams:\n  - {host: docker.io, url: "http://127.0.0.1:9"}\n  - {host: "127.0.0.1:5001", url: "http://127.0.0.1:5001"}\n${yaml}`);
  return loadConfig({ config: file }, {});
}

describe('local.prefixes', () => {
  test('defaults: no local repositories, anonymous push off, 1 h upload idle time, 4 MiB manifests, delete off', () => {
    const c = configWith('');
    assert.deepEqual(c.local.prefixes, []);
    assert.equal(c.local.allowAnonymousPush, false);
    assert.equal(c.local.uploadIdle, 3_600_000);
    assert.equal(c.local.maxManifestSize, 4 * 1024 * 1024);
    assert.equal(c.delete.enabled, false);
    assert.equal(new Upstreams(c).local.enabled, false);
  });

  for (const bad of ['site', '/site/', 'Site/', 'docker.io/', 'localhost/', '127.0.0.1:5001/', 'site//', 'a..b/']) {
    test(`"${bad}" is refused with a message naming the field`, () => {
      assert.throws(
        () => configWith(`local: {prefixes: ["${bad}"]}`),
        (err: unknown) => err instanceof ConfigError && /local\.prefixes/.test(err.message),
      );
    });
  }

  test('a local name routes to the local registry, unrewritten; anything else as before', () => {
    const u = new Upstreams(configWith('local: {prefixes: ["site/", "ci/builds/"]}'));
    assert.deepEqual(u.route('site/app', undefined), { upstream: LOCAL_UPSTREAM, repository: 'site/app', explicit: true, local: true });
    assert.deepEqual(u.route('ci/builds/x/y', undefined), { upstream: LOCAL_UPSTREAM, repository: 'ci/builds/x/y', explicit: true, local: true });
    // The prefix itself, a sibling and a longer first component are not local.
    assert.equal(u.route('ci/other', undefined).upstream, 'docker.io');
    assert.equal(u.route('sites/app', undefined).upstream, 'docker.io');
    // ?ns= names an upstream; a host prefix names an upstream.
    assert.deepEqual(u.route('site/app', 'docker.io'), { upstream: 'docker.io', repository: 'site/app', explicit: true });
    assert.equal(u.route('127.0.0.1:5001/site/app', undefined).upstream, '127.0.0.1:5001');
    // An invalid local name is still a NAME_INVALID.
    assert.throws(() => u.route('site/App', undefined), /NAME_INVALID|invalid repository name/);
  });
});
