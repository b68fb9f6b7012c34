// What a shared tag means must not depend on which client asked first (issue #8 item 4, "Accept
// poisoning"). A two-platform Docker manifest list is `library/multi:latest` on a real docker-registry.
// A client that accepts only the Docker v2 manifest type gets the amd64 manifest from the upstream (the
// registry rewrites the list for it); a containerd-style client (every manifest type) gets the list. berth
// keys tag rows by what was negotiated, so each kind of client gets what the upstream would give it, in
// either order, from cache, offline and while the upstream is down. Also: an existing berth.db with the
// old tags table is migrated, and `berth index rebuild` restores both kinds of rows from tags.jsonl.
import assert from 'node:assert/strict';
import { appendFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import fc from 'fast-check';
import { StoragePaths } from '../src/store/paths.ts';
import { rebuildIndex } from '../src/store/rebuild.ts';
import { type InProcessBerth, startBerth } from './support/berth.ts';
import { ACCEPT_ALL_MANIFESTS, baseLayer, buildImage, buildIndex, type Image, type Index, MediaTypes, pushIndex } from './support/images.ts';
import { httpRequest, type TimedResponse } from './support/links.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const NARROW = MediaTypes.docker.manifest;
/** What containerd sends. */
const FULL = `${ACCEPT_ALL_MANIFESTS}, */*`;

let up: Upstream;
let work: string;
/** One list per repository, so each test starts from a tag berth has never seen. */
const lists = new Map<string, Index>();
const berths: InProcessBerth[] = [];

async function twoPlatformList(repository: string): Promise<Index> {
  const base = await baseLayer();
  const image = (arch: string, variant?: string): Promise<Image> =>
    buildImage({ format: 'docker', layers: [base, { files: { 'arch/name': `${arch} ${repository}\n` } }], arch, ...(variant ? { variant } : {}) });
  const list = buildIndex({ format: 'docker', images: [await image('amd64'), await image('arm64', 'v8')] });
  await pushIndex(up, repository, 'latest', list);
  return list;
}

async function berthOn(storage: string, extra: Record<string, unknown> = {}): Promise<InProcessBerth> {
  const b = await startBerth({ upstreams: [{ host: 'docker.io', url: up.url }], storage, ...extra });
  berths.push(b);
  return b;
}

async function stop(b: InProcessBerth): Promise<void> {
  berths.splice(berths.indexOf(b), 1);
  await b.stop();
}

function manifestOf(b: InProcessBerth, repo: string, accept: string, method = 'GET'): Promise<TimedResponse> {
  return httpRequest(b.url, `/v2/${repo}/manifests/latest`, { method, headers: { accept }, timeoutMs: 20_000 });
}

/** The response is the whole list, with the list's type and digest. */
function assertList(r: TimedResponse, list: Index, what: string): void {
  assert.equal(r.status, 200, `${what}: ${r.body.toString().slice(0, 200)}`);
  assert.equal(r.headers['docker-content-digest'], list.digest, `${what}: got ${r.headers['content-type']} instead of the manifest list`);
  assert.equal(r.headers['content-type'], MediaTypes.docker.index, what);
}

/** The response is the amd64 manifest, as the upstream answers a client that cannot take a list. */
function assertAmd64(r: TimedResponse, list: Index, what: string): void {
  assert.equal(r.status, 200, `${what}: ${r.body.toString().slice(0, 200)}`);
  assert.equal(r.headers['docker-content-digest'], list.images[0]!.manifestDigest, `${what}: not the amd64 manifest`);
  assert.equal(r.headers['content-type'], MediaTypes.docker.manifest, what);
}

function manifestGetsSince(mark: number, repo: string): number {
  return up.accessLogSince(mark).filter((e) => e.method === 'GET' && e.path.startsWith(`/v2/${repo}/manifests/`)).length;
}

before(async () => {
  work = await makeTempDir('tag-negotiation');
  up = await startUpstream();
  for (const repo of ['library/narrow-first', 'library/full-first', 'library/offline', 'library/migrated', 'library/fuzzed']) lists.set(repo, await twoPlatformList(repo));
});

after(async () => {
  for (const b of [...berths]) await b.stop().catch(() => undefined);
  await up?.stop();
  if (work) await removeTempDir(work);
});

describe('a shared tag under different Accept lists', () => {
  test('the upstream really rewrites the list for a narrow client (what the other tests rely on)', async () => {
    const list = lists.get('library/narrow-first')!;
    const direct = await httpRequest(up.url, '/v2/library/narrow-first/manifests/latest', { headers: { accept: NARROW } });
    assertAmd64(direct, list, 'docker-registry, narrow Accept');
  });

  test('narrow client first: a later containerd client still gets the manifest list, and both are served from cache', async () => {
    const b = await berthOn(path.join(work, 'narrow-first'));
    const repo = 'library/narrow-first';
    const list = lists.get(repo)!;
    assertAmd64(await manifestOf(b, 'narrow-first', NARROW), list, 'narrow client');
    assertList(await manifestOf(b, 'narrow-first', FULL), list, 'containerd client after a narrow one');
    assertList(await manifestOf(b, 'narrow-first', FULL, 'HEAD'), list, 'containerd HEAD after a narrow one');
    const mark = up.logLineCount();
    assertAmd64(await manifestOf(b, 'narrow-first', NARROW), list, 'narrow client again');
    assertList(await manifestOf(b, 'narrow-first', FULL), list, 'containerd client again');
    assert.equal(manifestGetsSince(mark, repo), 0, 'both answers were fresh in the cache');
    await stop(b);
  });

  test('containerd client first: a narrow client does not replace the cached, fresh list', async () => {
    const b = await berthOn(path.join(work, 'full-first'));
    const list = lists.get('library/full-first')!;
    assertList(await manifestOf(b, 'full-first', FULL), list, 'containerd client');
    assertAmd64(await manifestOf(b, 'full-first', NARROW), list, 'narrow client after containerd');
    assertList(await manifestOf(b, 'full-first', FULL), list, 'containerd client after a narrow one');
    assertList(await manifestOf(b, 'full-first', FULL, 'HEAD'), list, 'containerd HEAD after a narrow one');
    await stop(b);
  });

  test('offline and stale-if-error serve each kind of client its own answer', async () => {
    const storage = path.join(work, 'offline');
    const list = lists.get('library/offline')!;
    let b = await berthOn(storage, { tagTtl: '1ms' });
    assertAmd64(await manifestOf(b, 'offline', NARROW), list, 'narrow client, online');
    assertList(await manifestOf(b, 'offline', FULL), list, 'containerd client, online');
    await stop(b);

    b = await berthOn(storage, { offline: true });
    assertAmd64(await manifestOf(b, 'offline', NARROW), list, 'narrow client, offline');
    assertList(await manifestOf(b, 'offline', FULL), list, 'containerd client, offline');
    await stop(b);

    b = await berthOn(storage, { tagTtl: '1ms' });
    await up.halt();
    try {
      const narrow = await manifestOf(b, 'offline', NARROW);
      assertAmd64(narrow, list, 'narrow client, upstream down');
      assert.match(String(narrow.headers.warning), /stale/i);
      const full = await manifestOf(b, 'offline', FULL);
      assertList(full, list, 'containerd client, upstream down');
      assert.match(String(full.headers.warning), /stale/i);
    } finally {
      await up.restart();
    }
    await stop(b);
  });
});

describe('any sequence of Accept lists (property, seeded)', () => {
  const TYPES = [
    MediaTypes.oci.manifest,
    MediaTypes.oci.index,
    MediaTypes.docker.manifest,
    MediaTypes.docker.index,
    'application/vnd.docker.distribution.manifest.v1+prettyjws',
    'application/vnd.docker.distribution.manifest.v1+json',
    '*/*',
    'application/json',
  ];
  const acceptList = fc.record({ types: fc.shuffledSubarray(TYPES, { minLength: 1 }), params: fc.boolean(), lines: fc.boolean() }).map(({ types, params, lines }) => {
    const parts = types.map((t, i) => (params && i % 2 === 1 ? `${t}; q=0.${9 - i}` : t));
    return lines ? parts : parts.join(', ');
  });

  test('berth answers each one as the upstream does, whatever came before', async () => {
    const b = await berthOn(path.join(work, 'fuzzed'));
    await fc.assert(
      fc.asyncProperty(fc.array(fc.record({ accept: acceptList, method: fc.constantFrom('GET', 'HEAD') }), { minLength: 1, maxLength: 5 }), async (requests) => {
        for (const { accept, method } of requests) {
          const direct = await httpRequest(up.url, '/v2/library/fuzzed/manifests/latest', { method, headers: { accept } });
          const via = await httpRequest(b.url, '/v2/fuzzed/manifests/latest', { method, headers: { accept }, timeoutMs: 20_000 });
          const what = `${method} with Accept ${JSON.stringify(accept)}`;
          if (String(direct.headers['content-type']).includes('v1+prettyjws')) {
            // A schema 1 rewrite: its Docker-Content-Digest is not the hash of its bytes, which berth refuses.
            assert.ok(via.status === 200 || via.status === 502, `${what}: ${via.status}`);
            continue;
          }
          assert.equal(via.status, direct.status, what);
          assert.equal(via.headers['docker-content-digest'], direct.headers['docker-content-digest'], what);
          assert.equal(via.headers['content-type'], direct.headers['content-type'], what);
        }
      }),
      { seed: 0x7a65, numRuns: 60 },
    );
    const list = lists.get('library/fuzzed')!;
    assertList(await manifestOf(b, 'fuzzed', FULL), list, 'containerd client after the property');
    assertAmd64(await manifestOf(b, 'fuzzed', NARROW), list, 'narrow client after the property');
    await stop(b);
  });
});

/** The tags table and journal lines as berth wrote them before tags were keyed by negotiation. */
const OLD_SCHEMA = `
CREATE TABLE blobs (digest TEXT PRIMARY KEY, size INTEGER NOT NULL, media_type TEXT, created_at INTEGER NOT NULL, accessed_at INTEGER NOT NULL);
CREATE TABLE tags (upstream TEXT NOT NULL, repository TEXT NOT NULL, tag TEXT NOT NULL,
  digest TEXT NOT NULL, media_type TEXT NOT NULL, size INTEGER NOT NULL, checked_at INTEGER NOT NULL,
  PRIMARY KEY (upstream, repository, tag));
CREATE TABLE refs (digest TEXT NOT NULL, upstream TEXT NOT NULL, repository TEXT NOT NULL, PRIMARY KEY (digest, upstream, repository));
CREATE TABLE children (parent TEXT NOT NULL, child TEXT NOT NULL, size INTEGER NOT NULL, media_type TEXT NOT NULL, PRIMARY KEY (parent, child));
CREATE TABLE pins (digest TEXT NOT NULL, reference TEXT NOT NULL, PRIMARY KEY (digest, reference));
`;

describe('an index written before tags were keyed by negotiation', () => {
  test('is migrated in place: its tags are served offline, and rebuild restores both kinds of rows', async () => {
    const storage = path.join(work, 'migrated');
    const repo = 'library/migrated';
    const list = lists.get(repo)!;
    // Fill the cache with the current code, then turn its index back into the old schema.
    let b = await berthOn(storage);
    assertList(await manifestOf(b, 'migrated', FULL), list, 'containerd client');
    assertAmd64(await manifestOf(b, 'migrated', NARROW), list, 'narrow client');
    await stop(b);
    const dbFile = path.join(storage, 'berth.db');
    const db = new Database(dbFile);
    const blobs = db.prepare('SELECT * FROM blobs').all();
    const children = db.prepare('SELECT * FROM children').all();
    db.close();
    for (const suffix of ['', '-wal', '-shm']) await import('node:fs/promises').then((fs) => fs.rm(`${dbFile}${suffix}`, { force: true }));
    const old = new Database(dbFile);
    old.exec(OLD_SCHEMA);
    const putBlob = old.prepare('INSERT INTO blobs VALUES (@digest, @size, @media_type, @created_at, @accessed_at)');
    for (const r of blobs) putBlob.run(r);
    const putChild = old.prepare('INSERT INTO children VALUES (@parent, @child, @size, @media_type)');
    for (const r of children) putChild.run(r);
    old.prepare('INSERT INTO tags VALUES (?, ?, ?, ?, ?, ?, ?)').run('docker.io', repo, 'latest', list.digest, list.mediaType, list.index.length, Date.now());
    old.close();

    b = await berthOn(storage, { offline: true });
    assertList(await manifestOf(b, 'migrated', FULL), list, 'containerd client, offline, old index');
    const version = await b.berth.index.schemaVersion();
    assert.ok(Number(version) >= 1, `user_version after migration: ${version}`);
    await stop(b);

    // A journal line of the old format (no negotiation key) is read as the tag's own content.
    const paths = new StoragePaths(storage);
    await mkdir(storage, { recursive: true });
    appendFileSync(paths.tagJournal, `${JSON.stringify({ upstream: 'docker.io', repository: repo, tag: 'old-line', digest: list.digest, mediaType: list.mediaType, size: list.index.length })}\n`);
    const report = await rebuildIndex(paths, { verify: false });
    assert.ok(report.tags >= 3, `rows restored: ${report.tags}`);
    b = await berthOn(storage, { offline: true });
    assertList(await manifestOf(b, 'migrated', FULL), list, 'containerd client, offline, rebuilt index');
    assertAmd64(await manifestOf(b, 'migrated', NARROW), list, 'narrow client, offline, rebuilt index');
    const oldLine = await httpRequest(b.url, '/v2/migrated/manifests/old-line', { headers: { accept: FULL } });
    assert.equal(oldLine.headers['docker-content-digest'], list.digest, 'the old journal line');
    await stop(b);
  });
});
