import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { AbortMultipartUploadCommand, DeleteObjectCommand, HeadBucketCommand, ListMultipartUploadsCommand, ListObjectsV2Command } from '@aws-sdk/client-s3';
import type { StoragePaths } from '../paths.ts';
import { LISTING, makeS3Client, type S3Settings, S3UnreachableError, s3Reason } from './client.ts';
import { GatewayWatch } from './gateway-watch.ts';
import { S3Keys } from './keys.ts';
import { LocalBlobCache } from './local-cache.ts';
import { S3BlobStore, type S3StoreOptions } from './s3-store.ts';
import type { S3Bucket } from './s3-writer.ts';

/** Another replica's ingest leftovers older than this are from a replica that died and never came back. */
const FOREIGN_INGEST_AGE_MS = 24 * 3600_000;

/**
 * This storage directory's replica id (made once, kept in the directory): the name of its ingest/ objects,
 * so that a restart on the same directory can clear what a killed process left there, without touching the
 * uploads of other replicas sharing the bucket.
 */
async function replicaId(paths: StoragePaths, create: boolean): Promise<string> {
  const file = join(paths.root, 's3-replica');
  const known = (await readFile(file, 'utf8').catch(() => '')).trim();
  if (/^[0-9a-f]{16}$/.test(known)) return known;
  const id = randomBytes(8).toString('hex');
  if (create) await writeFile(file, `${id}\n`, { flag: 'w' });
  return id;
}

/**
 * Opens the bucket for the s3 driver: fails with S3UnreachableError (exit code 2, naming S3, the endpoint and
 * the bucket) when it cannot be reached, and with `sweep` (a process holding the storage lock) clears this
 * replica's leftovers under ingest/.
 */
export async function openS3Store(settings: S3Settings, paths: StoragePaths, opts: S3StoreOptions & { sweep: boolean }): Promise<S3BlobStore> {
  const client = makeS3Client(settings);
  const s3: S3Bucket = { client, bucket: settings.bucket, endpoint: settings.endpoint, watch: new GatewayWatch(client, settings.bucket) };
  try {
    await client.send(new HeadBucketCommand({ Bucket: settings.bucket }));
  } catch (err) {
    client.destroy();
    const status = (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
    const why = status === 404 ? 'no such bucket' : status === 403 ? 'access denied (check storage.s3 credentials or AWS_ACCESS_KEY_ID)' : s3Reason(err);
    throw new S3UnreachableError(`cannot reach S3 bucket "${settings.bucket}" at ${settings.endpoint} (storage.s3): ${why}`);
  }
  const lc = settings.localCache;
  const cache = lc ? new LocalBlobCache(resolve(lc.path), lc.maxSize, opts.verifyReads ?? true) : undefined;
  const store = new S3BlobStore(s3, new S3Keys(settings.prefix, await replicaId(paths, opts.sweep)), paths, { ...opts, ...(cache ? { cache } : {}) });
  await store.init();
  if (opts.sweep) await sweepIngest(s3, store.keys);
  return store;
}

/** Aborts multipart uploads and deletes objects under ingest/: all of this replica's, and other replicas' old ones. */
export async function sweepIngest(s3: S3Bucket, keys: S3Keys, now = Date.now()): Promise<number> {
  const { client, bucket } = s3;
  const stale = (key: string, at: Date | undefined) => key.startsWith(keys.ownIngest) || (at !== undefined && now - at.getTime() > FOREIGN_INGEST_AGE_MS);
  let swept = 0;
  let KeyMarker: string | undefined;
  let UploadIdMarker: string | undefined;
  do {
    const page = await client.send(new ListMultipartUploadsCommand({ Bucket: bucket, Prefix: keys.ingest, ...(KeyMarker ? { KeyMarker, UploadIdMarker } : {}) }), LISTING);
    for (const u of page.Uploads ?? []) {
      if (!u.Key || !stale(u.Key, u.Initiated)) continue;
      await client.send(new AbortMultipartUploadCommand({ Bucket: bucket, Key: u.Key, UploadId: u.UploadId })).catch(() => undefined);
      swept++;
    }
    KeyMarker = page.IsTruncated ? page.NextKeyMarker : undefined;
    UploadIdMarker = page.NextUploadIdMarker;
  } while (KeyMarker);
  let ContinuationToken: string | undefined;
  do {
    const page = await client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: keys.ingest, ...(ContinuationToken ? { ContinuationToken } : {}) }), LISTING);
    for (const o of page.Contents ?? []) {
      if (!o.Key || !stale(o.Key, o.LastModified)) continue;
      await client.send(new DeleteObjectCommand({ Bucket: bucket, Key: o.Key })).catch(() => undefined);
      swept++;
    }
    ContinuationToken = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (ContinuationToken);
  return swept;
}
