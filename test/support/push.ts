// Pushing test images to a registry over the distribution HTTP API, without skopeo: monolithic uploads
// (POST, then PUT <location>&digest=), HEAD to skip blobs that are already there, manifests by tag or digest.
import { readFile } from 'node:fs/promises';
import { Agent, type Dispatcher, request } from 'undici';
import { type Blob, blobStream, type Image, type Index } from './blobs.ts';
import type { Credentials } from './upstream.ts';

/** An Upstream fits; so does any registry URL with an optional CA (PEM file) and basic-auth credentials. */
export interface PushTarget {
  url: string;
  caFile?: string;
  auth?: Credentials;
}

export async function pushImage(target: PushTarget, repository: string, reference: string, image: Image): Promise<void> {
  await withRepositoryLock(target, repository, () => withClient(target, (client) => pushImageWith(client, repository, reference, image)));
}

/** Child manifests by digest, then the index under `reference`. */
export async function pushIndex(target: PushTarget, repository: string, reference: string, index: Index): Promise<void> {
  await withRepositoryLock(target, repository, () =>
    withClient(target, async (client) => {
      for (const image of index.images) await pushImageWith(client, repository, image.manifestDigest, image);
      await client.putManifest(repository, reference, index.index, index.mediaType);
    }),
  );
}

async function pushImageWith(client: RegistryClient, repository: string, reference: string, image: Image): Promise<void> {
  const distinct = new Map([image.config, ...image.layers].map((b) => [b.digest, b]));
  await Promise.all([...distinct.values()].map((b) => client.pushBlob(repository, b)));
  await client.putManifest(repository, reference, image.manifest, image.mediaType);
}

// docker-registry's filesystem driver rewrites a repository's blob link files in place (truncate, then
// write): two concurrent uploads of one blob into one repository can make a manifest PUT see the link
// empty (MANIFEST_BLOB_UNKNOWN). So pushes into the same repository take turns; other repositories run
// in parallel.
const repositoryLocks = new Map<string, Promise<void>>();

async function withRepositoryLock(target: PushTarget, repository: string, fn: () => Promise<void>): Promise<void> {
  const key = `${target.url} ${repository}`;
  const previous = repositoryLocks.get(key) ?? Promise.resolve();
  const mine = previous.then(fn, fn);
  const settled = mine.then(
    () => undefined,
    () => undefined,
  );
  repositoryLocks.set(key, settled);
  try {
    await mine;
  } finally {
    if (repositoryLocks.get(key) === settled) repositoryLocks.delete(key);
  }
}

async function withClient<T>(target: PushTarget, fn: (c: RegistryClient) => Promise<T>): Promise<T> {
  const ca = target.caFile === undefined ? undefined : await readFile(target.caFile, 'utf8');
  // Own dispatcher: HTTP/1.1 (docker-registry offers h2 over TLS; undici stays on 1.1 unless allowH2).
  const agent = new Agent(ca === undefined ? {} : { connect: { ca } });
  try {
    return await fn(new RegistryClient(target, agent));
  } finally {
    await agent.close();
  }
}

class RegistryClient {
  private readonly base: string;
  private readonly authHeader: Record<string, string>;
  constructor(
    target: PushTarget,
    private readonly agent: Dispatcher,
  ) {
    this.base = target.url.replace(/\/+$/, '');
    this.authHeader = target.auth === undefined ? {} : { authorization: `Basic ${Buffer.from(`${target.auth.username}:${target.auth.password}`).toString('base64')}` };
  }

  async pushBlob(repository: string, blob: Blob): Promise<void> {
    const head = await this.call('HEAD', `${this.base}/v2/${repository}/blobs/${blob.digest}`);
    if (head.status === 200) return;
    const start = await this.call('POST', `${this.base}/v2/${repository}/blobs/uploads/`);
    const location = start.headers.location;
    if (start.status !== 202 || typeof location !== 'string') {
      throw new Error(`POST upload ${repository}: ${start.status} ${start.body}`);
    }
    const url = new URL(location, this.base);
    url.searchParams.set('digest', blob.digest);
    const put = await this.call('PUT', url.toString(), blobStream(blob), {
      'content-type': 'application/octet-stream',
      'content-length': String(blob.size),
    });
    if (put.status !== 201) throw new Error(`PUT blob ${blob.digest} to ${repository}: ${put.status} ${put.body}`);
  }

  async putManifest(repository: string, reference: string, bytes: Buffer, mediaType: string): Promise<void> {
    const res = await this.call('PUT', `${this.base}/v2/${repository}/manifests/${reference}`, bytes, {
      'content-type': mediaType,
    });
    if (res.status !== 201) throw new Error(`PUT manifest ${repository}:${reference}: ${res.status} ${res.body}`);
  }

  private async call(
    method: Dispatcher.HttpMethod,
    url: string,
    body?: Dispatcher.DispatchOptions['body'],
    headers: Record<string, string> = {},
  ): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: string }> {
    const res = await request(url, { method, body, headers: { ...this.authHeader, ...headers }, dispatcher: this.agent });
    const text = await res.body.text();
    return { status: res.statusCode, headers: res.headers, body: text.slice(0, 500) };
  }
}
