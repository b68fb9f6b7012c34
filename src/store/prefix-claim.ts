import { hostname } from 'node:os';
import { GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import pg from 'pg';
import { isNotFound } from './s3/client.ts';
import type { S3Keys } from './s3/keys.ts';
import type { S3Bucket } from './s3/s3-writer.ts';

/**
 * Who the blobs under a bucket prefix belong to: `<prefix>berth-index.json`, written by the first berth that
 * writes there. gc removes objects under blobs/ its index does not know, and eviction deletes what its
 * index says is least recently used, so two indexes over one prefix destroy each other's cache (two
 * instances with their own SQLite, or two clusters with two databases). The claim names one index: one
 * SQLite instance (its working directory's id, the `s3-replica` file the S3 driver keeps there, so the same
 * directory restarted and its operator commands are the same instance) or one PostgreSQL database (every
 * replica and operator command of a cluster shares it). docs/decisions.md "One index per bucket prefix".
 */
export type PrefixClaim = { index: 'sqlite'; instance: string; path: string; host: string; since: string } | { index: 'postgres'; database: string; since: string };

/** The prefix is claimed by another index: start-up ends, exit code 2, naming both. */
export class PrefixClaimedError extends Error {
  override name = 'PrefixClaimedError';
  readonly exitCode = 2;
}

/** The claim's key under the prefix (outside blobs/, ingest/ and quarantine/, which berth lists). */
export const PREFIX_CLAIM_KEY = 'berth-index.json';

/** `host:port/database` of a PostgreSQL URL, as the replicas of one cluster all write it (never the user or password). */
export function databaseOf(url: string): string {
  const c = new pg.Client({ connectionString: url });
  return `${c.host}:${c.port}/${c.database}`;
}

function describe(c: PrefixClaim): string {
  return c.index === 'sqlite'
    ? `a berth with its own SQLite index (working directory ${c.path} on ${c.host}, instance ${c.instance}, since ${c.since})`
    : `berth on the PostgreSQL index ${c.database} (since ${c.since})`;
}

function same(a: PrefixClaim, b: PrefixClaim): boolean {
  return a.index === 'sqlite' ? b.index === 'sqlite' && a.instance === b.instance : b.index === 'postgres' && a.database === b.database;
}

async function read(s3: S3Bucket, key: string): Promise<PrefixClaim | undefined> {
  try {
    const r = await s3.client.send(new GetObjectCommand({ Bucket: s3.bucket, Key: key }));
    return JSON.parse(await r.Body!.transformToString()) as PrefixClaim;
  } catch (err) {
    if (isNotFound(err)) return undefined;
    throw err;
  }
}

/**
 * Claims the prefix for `ours`, or throws PrefixClaimedError when another index has it. The write is a
 * conditional PUT (If-None-Match: *) where the gateway honours it; one that ignores it (Ceph RGW before
 * Squid) makes this check-then-write, and the read back after the write tells which of two instances
 * starting at the same moment won (the loser stops; the window is one round trip).
 */
export async function claimPrefix(s3: S3Bucket, keys: S3Keys, ours: PrefixClaim): Promise<void> {
  const key = `${keys.prefix}${PREFIX_CLAIM_KEY}`;
  const where = `s3://${s3.bucket}/${keys.prefix}`;
  const refuse = (theirs: PrefixClaim) =>
    new PrefixClaimedError(
      `storage.s3 ${where} is claimed by ${describe(theirs)}; this is ${describe(ours)}. Two indexes over one prefix would each gc and evict the other's blobs: ` +
        `give this one its own storage.s3.prefix, or share the other's index (index.driver postgres with cluster). If that berth is gone for good, delete ${where}${PREFIX_CLAIM_KEY}.`,
    );
  let theirs = await read(s3, key);
  if (!theirs) {
    try {
      await s3.client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: key, Body: `${JSON.stringify(ours)}\n`, ContentType: 'application/json', IfNoneMatch: '*' }));
    } catch (err) {
      // 412: another berth wrote it between our read and our write.
      if ((err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode !== 412) throw err;
    }
    theirs = await read(s3, key);
    if (!theirs) throw new Error(`${where}${PREFIX_CLAIM_KEY} is not there right after writing it`);
  }
  if (!same(ours, theirs)) throw refuse(theirs);
}

/** What this process claims: its SQLite instance (working directory) or its PostgreSQL database. */
export function claimOf(index: { driver: string; postgres?: { url: string } | undefined }, keys: S3Keys, root: string): PrefixClaim {
  const since = new Date().toISOString();
  if (index.driver === 'postgres' && index.postgres) return { index: 'postgres', database: databaseOf(index.postgres.url), since };
  return { index: 'sqlite', instance: keys.replica, path: root, host: hostname(), since };
}
