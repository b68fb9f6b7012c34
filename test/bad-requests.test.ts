// Bad input is a 4xx in the error envelope, never a 500, never a crash, and never a request to an upstream
// (let alone to a host that is not configured: berth is not an open proxy). DESIGN.md "Errors" and
// "Routing a request to an upstream". Issue #2.
import assert from 'node:assert/strict';
import type http from 'node:http';
import { after, before, describe, test } from 'node:test';
import { type InProcessBerth, startBerth } from './support/berth.ts';
import { request } from './support/http.ts';
import { MediaTypes, type Seeded, seedStandard } from './support/images.ts';
import { upstreamTrafficSince } from './support/links.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

interface Row {
  /** What a user would notice, in a few words. */
  why: string;
  method?: string;
  path: string;
  headers?: http.OutgoingHttpHeaders;
  status: number;
  code: string;
  /** The message must say this (e.g. name the refused host). */
  message?: RegExp;
}

const HEX = 'a'.repeat(64);

/** The table, built once the upstream's port and a real blob digest are known. */
function rows(upstreamHost: string, digest: string): Row[] {
  const blob = `/v2/lab/small/blobs/${digest}`;
  const manifest = '/v2/lab/small/manifests/1';
  const tags = '/v2/lab/small/tags/list';
  const r: Row[] = [
    // Path traversal, in every encoding: never a file, never another endpoint.
    { why: 'plain .. above /v2', path: '/v2/../../etc/passwd', status: 404, code: 'NOT_FOUND' },
    { why: '.. inside a repository name', path: '/v2/lab/../small/manifests/1', status: 400, code: 'NAME_INVALID' },
    { why: '.. climbing out of a name', path: '/v2/lab/small/../../library/small/manifests/1', status: 400, code: 'NAME_INVALID' },
    { why: '%2e%2e in a name', path: '/v2/lab/%2e%2e/small/manifests/1', status: 400, code: 'NAME_INVALID' },
    { why: '%2E%2E (upper case) in a name', path: '/v2/%2E%2E/%2E%2E/etc/manifests/1', status: 400, code: 'NAME_INVALID' },
    { why: '%2f inside a name', path: '/v2/lab%2fsmall/manifests/1', status: 400, code: 'NAME_INVALID' },
    { why: '%2F..%2F inside a name', path: '/v2/lab%2F..%2Fsmall/manifests/1', status: 400, code: 'NAME_INVALID' },
    { why: 'double-encoded %252e%252e', path: '/v2/lab/%252e%252e/small/manifests/1', status: 400, code: 'NAME_INVALID' },
    { why: 'double-encoded %252f', path: '/v2/lab%252fsmall/manifests/1', status: 400, code: 'NAME_INVALID' },
    { why: 'backslashes', path: '/v2/..%5c..%5cwindows/manifests/1', status: 400, code: 'NAME_INVALID' },
    { why: 'a NUL byte in a name', path: '/v2/lab/small%00/manifests/1', status: 400, code: 'NAME_INVALID' },
    { why: 'a malformed %-escape in a name', path: '/v2/lab/%zz/manifests/1', status: 400, code: 'NAME_INVALID' },
    { why: 'a lone % as the tag', path: '/v2/lab/small/manifests/%', status: 404, code: 'MANIFEST_UNKNOWN' },
    { why: '.. as the digest', path: '/v2/lab/small/blobs/..%2f..%2fberth.db', status: 400, code: 'DIGEST_INVALID' },
    { why: '.. after the algorithm', path: '/v2/lab/small/blobs/sha256:..%2f..%2f..%2fberth.db', status: 400, code: 'DIGEST_INVALID' },
    { why: '.. as the tag', path: '/v2/lab/small/manifests/..', status: 404, code: 'MANIFEST_UNKNOWN' },
    { why: '%2e%2e as the tag', path: '/v2/lab/small/manifests/%2e%2e', status: 404, code: 'MANIFEST_UNKNOWN' },
    { why: 'traversal to the metrics endpoint', path: '/v2/%2e%2e/metrics', status: 404, code: 'NOT_FOUND' },
    { why: 'traversal past a blob', path: `${blob}/../../../../etc/passwd`, status: 404, code: 'NOT_FOUND' },

    // Digests.
    { why: 'a short digest', path: '/v2/lab/small/blobs/sha256:abc', status: 400, code: 'DIGEST_INVALID' },
    { why: 'an upper-case hex digest', path: `/v2/lab/small/blobs/sha256:${HEX.toUpperCase()}`, status: 400, code: 'DIGEST_INVALID' },
    { why: 'a digest one hex digit too long', path: `/v2/lab/small/blobs/sha256:${HEX}a`, status: 400, code: 'DIGEST_INVALID' },
    { why: 'an upper-case algorithm', path: `/v2/lab/small/blobs/SHA256:${HEX}`, status: 400, code: 'DIGEST_INVALID' },
    { why: 'a digest without algorithm', path: `/v2/lab/small/blobs/${HEX}`, status: 400, code: 'DIGEST_INVALID' },
    { why: 'an md5 digest', path: '/v2/lab/small/blobs/md5:d41d8cd98f00b204e9800998ecf8427e', status: 400, code: 'DIGEST_INVALID' },
    { why: 'a sha512 digest (not stored by berth)', path: `/v2/lab/small/blobs/sha512:${'b'.repeat(128)}`, status: 400, code: 'DIGEST_INVALID' },
    { why: 'a non-hex manifest digest', path: '/v2/lab/small/manifests/sha256:zz', status: 400, code: 'DIGEST_INVALID' },
    { why: 'an empty manifest digest', path: '/v2/lab/small/manifests/sha256:', status: 400, code: 'DIGEST_INVALID' },

    // Names.
    { why: 'a 256-character name', path: `/v2/${'a'.repeat(256)}/manifests/1`, status: 400, code: 'NAME_INVALID' },
    { why: 'a name of many components over 255 characters', path: `/v2/${'ab/'.repeat(90)}c/manifests/1`, status: 400, code: 'NAME_INVALID' },
    { why: 'a 3000-character path', path: `/v2/${'a'.repeat(3000)}/manifests/1`, status: 400, code: 'NAME_INVALID' },
    { why: 'an upper-case name', path: '/v2/Lab/Small/manifests/1', status: 400, code: 'NAME_INVALID' },
    { why: 'an upper-case name on a blob', path: `/v2/LAB/small/blobs/${digest}`, status: 400, code: 'NAME_INVALID' },
    { why: 'an upper-case name on the tag list', path: '/v2/Lab/small/tags/list', status: 400, code: 'NAME_INVALID' },
    { why: 'an empty name component', path: '/v2/lab//small/manifests/1', status: 400, code: 'NAME_INVALID' },
    { why: 'a name ending in a separator', path: '/v2/lab/small_/manifests/1', status: 400, code: 'NAME_INVALID' },
    { why: 'a name starting with a dash', path: '/v2/-lab/small/manifests/1', status: 400, code: 'NAME_INVALID' },
    { why: 'a non-ASCII name', path: '/v2/lab/caf%C3%A9/manifests/1', status: 400, code: 'NAME_INVALID' },

    // References.
    { why: 'a tag starting with a dash', path: '/v2/lab/small/manifests/-1', status: 404, code: 'MANIFEST_UNKNOWN' },
    { why: 'a tag starting with a dot', path: '/v2/lab/small/manifests/.1', status: 404, code: 'MANIFEST_UNKNOWN' },
    { why: "the distribution-spec conformance suite's invalid reference", path: '/v2/lab/small/manifests/.INVALID_MANIFEST_NAME', status: 404, code: 'MANIFEST_UNKNOWN' },
    { why: 'a 129-character tag', path: `/v2/lab/small/manifests/${'t'.repeat(129)}`, status: 404, code: 'MANIFEST_UNKNOWN' },
    { why: 'a tag with an encoded space', path: '/v2/lab/small/manifests/1%20', status: 404, code: 'MANIFEST_UNKNOWN' },
    { why: 'a tag with a colon', path: '/v2/lab/small/manifests/latest:1', status: 400, code: 'DIGEST_INVALID' },
    { why: 'a tag and a digest at once', path: `/v2/lab/small/manifests/1@sha256:${HEX}`, status: 400, code: 'DIGEST_INVALID' },

    // Range headers that do not parse.
    { why: 'a Range that is not numbers', path: blob, headers: { range: 'bytes=abc' }, status: 400, code: 'RANGE_INVALID' },
    { why: 'a Range ending before it starts', path: blob, headers: { range: 'bytes=5-1' }, status: 400, code: 'RANGE_INVALID' },
    { why: 'a Range of a lone dash', path: blob, headers: { range: 'bytes=-' }, status: 400, code: 'RANGE_INVALID' },
    { why: 'a Range of commas only', path: blob, headers: { range: 'bytes=,' }, status: 400, code: 'RANGE_INVALID' },
    { why: 'a Range with a garbage part', path: blob, headers: { range: 'bytes=0-1,x' }, status: 400, code: 'RANGE_INVALID' },
    { why: 'a Range without a unit', path: blob, headers: { range: '0-1' }, status: 400, code: 'RANGE_INVALID' },
    { why: 'a Range past 2^53', path: blob, headers: { range: 'bytes=99999999999999999999-' }, status: 400, code: 'RANGE_INVALID' },
    {
      why: 'a Range of 300 parts',
      path: blob,
      headers: { range: `bytes=${Array.from({ length: 300 }, (_, i) => `${i * 10}-${i * 10 + 1}`).join(',')}` },
      status: 400,
      code: 'RANGE_INVALID',
    },

    // ns: one, well-formed, configured.
    { why: 'an unknown ns', path: `${manifest}?ns=evil.example.com`, status: 404, code: 'NAME_UNKNOWN', message: /evil\.example\.com/ },
    { why: 'an unknown ns on a blob', path: `${blob}?ns=evil.example.com`, status: 404, code: 'NAME_UNKNOWN', message: /evil\.example\.com/ },
    { why: 'an unknown ns on the tag list', path: `${tags}?ns=evil.example.com`, status: 404, code: 'NAME_UNKNOWN', message: /evil\.example\.com/ },
    { why: "the upstream's own address as ns", path: `${manifest}?ns=${upstreamHost}`, status: 404, code: 'NAME_UNKNOWN' },
    { why: 'the cloud metadata address as ns', path: `${manifest}?ns=169.254.169.254`, status: 404, code: 'NAME_UNKNOWN' },
    { why: 'ns given twice', path: `${manifest}?ns=docker.io&ns=quay.io`, status: 400, code: 'QUERY_INVALID' },
    { why: 'ns given twice, the same', path: `${blob}?ns=docker.io&ns=docker.io`, status: 400, code: 'QUERY_INVALID' },
    { why: 'an empty ns', path: `${manifest}?ns=`, status: 400, code: 'QUERY_INVALID' },
    { why: 'an ns that is not a host', path: `${manifest}?ns=not%20a%20host`, status: 400, code: 'QUERY_INVALID' },
    { why: 'an ns with a malformed %-escape', path: `${blob}?ns=%zz`, status: 400, code: 'QUERY_INVALID' },
    { why: 'an ns with a path in it', path: `${manifest}?ns=docker.io%2f..%2f`, status: 400, code: 'QUERY_INVALID' },

    // Host prefixes that are not configured: berth is not an open proxy.
    { why: 'an unconfigured host prefix', path: '/v2/evil.example.com/x/manifests/1', status: 404, code: 'NAME_UNKNOWN', message: /evil\.example\.com/ },
    { why: 'an unconfigured host prefix on a blob', path: `/v2/evil.example.com/x/blobs/${digest}`, status: 404, code: 'NAME_UNKNOWN', message: /evil\.example\.com/ },
    { why: 'an unconfigured host prefix on the tag list', path: '/v2/evil.example.com/x/tags/list', status: 404, code: 'NAME_UNKNOWN', message: /evil\.example\.com/ },
    { why: 'an unconfigured host prefix with a port', path: '/v2/evil.example.com:443/x/manifests/1', status: 404, code: 'NAME_UNKNOWN' },
    { why: "the upstream's own address as a prefix", path: `/v2/${upstreamHost}/lab/small/manifests/1`, status: 404, code: 'NAME_UNKNOWN' },
    { why: 'localhost as a prefix', path: '/v2/localhost/lab/small/manifests/1', status: 404, code: 'NAME_UNKNOWN' },
    { why: 'the cloud metadata address as a prefix', path: '/v2/169.254.169.254/latest/manifests/1', status: 404, code: 'NAME_UNKNOWN' },

    // Pull only.
    { why: 'pushing a manifest', method: 'PUT', path: manifest, status: 405, code: 'UNSUPPORTED' },
    { why: 'deleting a manifest', method: 'DELETE', path: manifest, status: 405, code: 'UNSUPPORTED' },
    { why: 'deleting a blob', method: 'DELETE', path: blob, status: 405, code: 'UNSUPPORTED' },
    { why: 'starting an upload', method: 'POST', path: '/v2/lab/small/blobs/uploads/', status: 405, code: 'UNSUPPORTED' },
    { why: 'patching an upload', method: 'PATCH', path: '/v2/lab/small/blobs/uploads/x', status: 405, code: 'UNSUPPORTED' },
    { why: 'deleting the API root', method: 'DELETE', path: '/v2/', status: 405, code: 'UNSUPPORTED' },

    // Tag list pagination.
    { why: 'n that is not a number', path: `${tags}?n=abc`, status: 400, code: 'PAGINATION_NUMBER_INVALID' },
    { why: 'a negative n', path: `${tags}?n=-1`, status: 400, code: 'PAGINATION_NUMBER_INVALID' },
    { why: 'a fractional n', path: `${tags}?n=1.5`, status: 400, code: 'PAGINATION_NUMBER_INVALID' },
    { why: 'a huge n', path: `${tags}?n=99999999`, status: 400, code: 'PAGINATION_NUMBER_INVALID' },
    { why: 'an empty n', path: `${tags}?n=`, status: 400, code: 'PAGINATION_NUMBER_INVALID' },
    { why: 'n given twice', path: `${tags}?n=1&n=2`, status: 400, code: 'QUERY_INVALID' },
    { why: 'a last that is not a tag', path: `${tags}?last=..%2f..`, status: 400, code: 'QUERY_INVALID' },
    { why: 'last given twice', path: `${tags}?last=a&last=b`, status: 400, code: 'QUERY_INVALID' },
  ];
  return r;
}

describe('bad requests', () => {
  let up: Upstream;
  let seeded: Seeded;
  let seedDir: string;
  let b: InProcessBerth;
  let mark = 0;

  before(async () => {
    seedDir = await makeTempDir('seed-bad');
    up = await startUpstream();
    seeded = await seedStandard(up, seedDir);
    b = await startBerth({
      upstreams: [
        { host: 'docker.io', url: up.url },
        { host: 'quay.io', url: up.url },
      ],
    });
    mark = up.logLineCount();
  });

  after(async () => {
    await b?.stop();
    await up?.stop();
    await removeTempDir(seedDir);
  });

  // The table needs the upstream's port and a seeded digest, known only after before(): one test per row,
  // generated from placeholders and filled in at run time.
  const table = rows('127.0.0.1:UPSTREAM_PORT', 'sha256:SEEDED_LAYER');
  const real = (row: Row): Row => {
    const fill = (s: string): string => s.replaceAll('127.0.0.1:UPSTREAM_PORT', up.host).replaceAll('sha256:SEEDED_LAYER', seeded.small.layers[2]!.digest);
    return { ...row, path: fill(row.path) };
  };

  for (const template of table) {
    const shown = template.path.length > 90 ? `${template.path.slice(0, 87)}...` : template.path;
    test(`${template.why} is refused: ${template.method ?? 'GET'} ${shown} -> ${template.status} ${template.code}`, async () => {
      const row = real(template);
      const res = await request(b.url, row.path, { method: row.method ?? 'GET', ...(row.headers ? { headers: row.headers } : {}) });
      const text = res.body.toString('utf8');
      assert.equal(res.status, row.status, `status; body: ${text.slice(0, 300)}`);
      assert.match(res.headers['content-type'] ?? '', /^application\/json/);
      const body = JSON.parse(text) as { errors?: Array<{ code?: unknown; message?: unknown }> };
      assert.ok(Array.isArray(body.errors) && body.errors.length === 1, `not an error envelope: ${text.slice(0, 300)}`);
      assert.equal(body.errors[0]!.code, row.code, `code; message: ${String(body.errors[0]!.message)}`);
      assert.equal(typeof body.errors[0]!.message, 'string');
      assert.ok((body.errors[0]!.message as string).length > 0, 'an empty message says nothing');
      if (row.message) assert.match(body.errors[0]!.message as string, row.message);
    });
  }

  test('none of the bad requests reached the upstream', async () => {
    const leaked = await upstreamTrafficSince(up, mark);
    assert.deepEqual(
      leaked.map((e) => `${e.method} ${e.path}`),
      [],
      'bad requests were forwarded upstream',
    );
  });

  test('after all that, berth still serves a valid pull', async () => {
    const since = up.logLineCount();
    const accept = [MediaTypes.oci.manifest, MediaTypes.oci.index].join(', ');
    const manifest = await request(b.url, '/v2/lab/small/manifests/1', { headers: { accept } });
    assert.equal(manifest.status, 200);
    assert.ok(manifest.body.equals(seeded.small.manifest));
    for (const blob of [seeded.small.config, ...seeded.small.layers]) {
      const res = await request(b.url, `/v2/lab/small/blobs/${blob.digest}`);
      assert.equal(res.status, 200);
      assert.ok(res.body.equals(blob.bytes!), `blob ${blob.digest} differs`);
    }
    const entries = await up.waitForAccess((es) => es.filter((e) => e.method === 'GET' && e.path.includes('/blobs/')).length === 4, { since });
    for (const e of entries) assert.match(e.path, /^\/v2\/lab\/small\/(manifests\/1|blobs\/sha256:[0-9a-f]{64})$/);
  });
});
