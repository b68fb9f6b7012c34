// The pure parsers at berth's edge: what they accept, and what they say when they refuse.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseImageList } from '../src/cli/image-list.ts';
import { parseDuration, parseRate, parseSize } from '../src/config/units.ts';
import { parseDigest } from '../src/oci/digest.ts';
import { RegistryError } from '../src/oci/errors.ts';
import { formatImageReference, parseImageReference } from '../src/oci/image-reference.ts';
import { parseManifest } from '../src/oci/manifest.ts';
import { parsePlatforms, platformMatches } from '../src/oci/platform.ts';
import { parseRange } from '../src/oci/range.ts';
import { parseReference, parseRepository } from '../src/oci/reference.ts';
import { Extents } from '../src/registry/fill/extents.ts';
import { parseChallenges } from '../src/upstream/challenge.ts';

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof RegistryError, `expected a RegistryError, got ${String(err)}`);
    return `${err.status} ${err.code}`;
  }
  return 'ok';
}

describe('Range headers', () => {
  const size = 1000;
  it('reads single, open-ended, suffix and several ranges', () => {
    assert.deepEqual(parseRange('bytes=0-99', size), [{ start: 0, end: 99 }]);
    assert.deepEqual(parseRange('bytes=900-', size), [{ start: 900, end: 999 }]);
    assert.deepEqual(parseRange('bytes=-10', size), [{ start: 990, end: 999 }]);
    assert.deepEqual(parseRange('bytes=-5000', size), [{ start: 0, end: 999 }]);
    assert.deepEqual(parseRange('bytes=0-1, 500-599', size), [
      { start: 0, end: 1 },
      { start: 500, end: 599 },
    ]);
    assert.deepEqual(parseRange('bytes=990-5000', size), [{ start: 990, end: 999 }]);
  });
  it('answers 416 with the size when nothing overlaps, 400 when malformed', () => {
    assert.equal(
      code(() => parseRange('bytes=1000-', size)),
      '416 RANGE_NOT_SATISFIABLE',
    );
    try {
      parseRange('bytes=5000-6000', size);
    } catch (err) {
      assert.equal((err as RegistryError).headers['Content-Range'], 'bytes */1000');
    }
    for (const bad of ['bytes=abc', 'bytes=5-1', 'items=0-1', 'bytes=', 'bytes=--1', 'bytes=1-2-3', `bytes=${'0-1,'.repeat(300)}0-1`]) {
      assert.equal(
        code(() => parseRange(bad, size)),
        '400 RANGE_INVALID',
        bad,
      );
    }
  });
});

describe('names, digests and references', () => {
  it('accepts the spec grammar', () => {
    assert.equal(parseRepository('library/alpine'), 'library/alpine');
    assert.equal(parseRepository('a.b_c__d-e/f--g'), 'a.b_c__d-e/f--g');
    assert.deepEqual(parseReference('v1.2.3_rc-1'), { kind: 'tag', tag: 'v1.2.3_rc-1' });
    const d = `sha256:${'a'.repeat(64)}`;
    assert.deepEqual(parseReference(d), { kind: 'digest', digest: d });
  });
  it('refuses traversal, case, length and bad digests with a 400 that says what was wrong', () => {
    for (const bad of ['../etc', 'a/../b', 'A/b', 'a//b', '/a', 'a/', '%2e%2e/a', 'a'.repeat(256)]) {
      assert.equal(
        code(() => parseRepository(bad)),
        '400 NAME_INVALID',
        bad,
      );
    }
    assert.equal(
      code(() => parseDigest('sha256:abc')),
      '400 DIGEST_INVALID',
    );
    assert.equal(
      code(() => parseDigest(`sha256:${'A'.repeat(64)}`)),
      '400 DIGEST_INVALID',
    );
    assert.match(
      (() => {
        try {
          parseDigest(`sha512:${'a'.repeat(128)}`);
        } catch (e) {
          return (e as Error).message;
        }
        return '';
      })(),
      /sha256 only/,
    );
    assert.equal(
      code(() => parseReference('.hidden')),
      '404 MANIFEST_UNKNOWN',
    );
    assert.equal(
      code(() => parseReference('.INVALID_MANIFEST_NAME')),
      '404 MANIFEST_UNKNOWN',
    );
    assert.equal(
      code(() => parseReference('a'.repeat(129))),
      '404 MANIFEST_UNKNOWN',
    );
  });
  it('reads image references the way docker does', () => {
    assert.equal(formatImageReference(parseImageReference('nginx')), 'docker.io/library/nginx:latest');
    assert.equal(formatImageReference(parseImageReference('registry.k8s.io/pause:3.9')), 'registry.k8s.io/pause:3.9');
    assert.equal(formatImageReference(parseImageReference('localhost:5000/a/b:1')), 'localhost:5000/a/b:1');
    assert.equal(formatImageReference(parseImageReference('index.docker.io/org/app')), 'docker.io/org/app:latest');
    const d = `sha256:${'b'.repeat(64)}`;
    assert.equal(parseImageReference(`quay.io/a/b@${d}`).digest, d);
  });
});

describe('manifests and platforms', () => {
  it('tells an index from an image manifest and lists what they reference', () => {
    const d = (c: string) => `sha256:${c.repeat(64)}`;
    const index = Buffer.from(JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: 'x', digest: d('1'), size: 5, platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } }] }));
    const parsed = parseManifest(index);
    assert.equal(parsed.mediaType, 'application/vnd.oci.image.index.v1+json');
    assert.equal(parsed.manifests[0]!.platform?.variant, 'v8');
    const image = Buffer.from(JSON.stringify({ schemaVersion: 2, config: { mediaType: 'c', digest: d('2'), size: 1 }, layers: [{ mediaType: 'l', digest: d('3'), size: 2 }] }));
    assert.deepEqual(
      parseManifest(image, 'application/vnd.docker.distribution.manifest.v2+json').blobs.map((b) => b.digest),
      [d('2'), d('3')],
    );
    assert.equal(
      code(() => parseManifest(Buffer.from('{"layers":[{"digest":"nope","size":1}]}'))),
      '400 MANIFEST_INVALID',
    );
  });
  it('matches platforms with and without a variant', () => {
    const wanted = parsePlatforms('linux/arm64,linux/amd64');
    assert.ok(platformMatches({ os: 'linux', architecture: 'arm64', variant: 'v8' }, wanted));
    assert.ok(!platformMatches({ os: 'linux', architecture: 's390x' }, wanted));
    assert.ok(platformMatches(undefined, parsePlatforms('all')));
  });
});

describe('operator input', () => {
  it('reads image lists from kubeadm, clusterctl and helm output', () => {
    const text = [
      '# kubeadm config images list',
      'registry.k8s.io/kube-apiserver:v1.29.0',
      '',
      '        image: "quay.io/cilium/cilium:v1.13.4"   # from helm template',
      '  - image: docker.io/library/nginx:1.25',
      "image: 'ghcr.io/org/app:1'",
      'registry.k8s.io/kube-apiserver:v1.29.0',
    ].join('\n');
    assert.deepEqual(parseImageList(text), ['registry.k8s.io/kube-apiserver:v1.29.0', 'quay.io/cilium/cilium:v1.13.4', 'docker.io/library/nginx:1.25', 'ghcr.io/org/app:1']);
  });
  it('reads durations, sizes and rates in human units', () => {
    assert.equal(parseDuration('1h30m'), 5_400_000);
    assert.equal(parseDuration('250ms'), 250);
    assert.equal(parseDuration('soon'), undefined);
    assert.equal(parseSize('512MiB'), 512 * 1024 * 1024);
    assert.equal(parseRate('20MiB/s'), 20 * 1024 * 1024);
    assert.equal(parseRate('100Mbit/s'), 12_500_000);
    assert.equal(parseRate('fast'), undefined);
  });
});

describe('upstream auth challenges', () => {
  it('reads bearer and basic challenges', () => {
    const [bearer] = parseChallenges('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull"');
    assert.equal(bearer!.scheme, 'bearer');
    assert.deepEqual(bearer!.params, { realm: 'https://auth.docker.io/token', service: 'registry.docker.io', scope: 'repository:library/alpine:pull' });
    assert.deepEqual(parseChallenges('Basic realm="registry"'), [{ scheme: 'basic', params: { realm: 'registry' } }]);
  });
});

describe('extents of a fill', () => {
  it('merges what lands and reports the gaps', () => {
    const e = new Extents();
    e.add(100, 200);
    e.add(0, 50);
    e.add(50, 100);
    e.add(300, 400);
    assert.deepEqual(e.toJSON(), [
      [0, 200],
      [300, 400],
    ]);
    assert.equal(e.availableFrom(10), 200);
    assert.equal(e.availableFrom(250), 250);
    assert.deepEqual(e.gaps(500), [
      [200, 300],
      [400, 500],
    ]);
    assert.equal(e.bytes, 300);
    e.add(150, 450);
    assert.deepEqual(e.gaps(450), []);
  });
});
