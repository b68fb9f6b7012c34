// The bucket prefix's claim (src/store/prefix-claim.ts) in tests that look at a whole prefix, or that start a
// second instance with its own SQLite index on a prefix to read what the first stored (the claim refuses that
// in a deployment; test/s3-prefix-claim tests the refusal).
import { DeleteObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { PREFIX_CLAIM_KEY } from '../../src/store/prefix-claim.ts';

/** Whether `key` is a prefix's claim rather than content. */
export const isPrefixClaim = (key: string): boolean => key.endsWith(`/${PREFIX_CLAIM_KEY}`) || key === PREFIX_CLAIM_KEY;

/** Deletes the claim of `prefix`, so that another index may start there (as an operator would, knowingly). */
export async function forgetPrefixClaim(client: S3Client, bucket: string, prefix: string): Promise<void> {
  await client.send(new DeleteObjectCommand({ Bucket: bucket, Key: `${prefix}${PREFIX_CLAIM_KEY}` }));
}
