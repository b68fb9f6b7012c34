import { AbortMultipartUploadCommand, CompleteMultipartUploadCommand, CopyObjectCommand, CreateMultipartUploadCommand, UploadPartCopyCommand } from '@aws-sdk/client-s3';
import { SERVER_SIDE } from './client.ts';
import type { S3Bucket } from './s3-writer.ts';

/** CopyObject copies at most 5 GiB in one request; above that, a multipart copy. */
export const COPY_OBJECT_LIMIT = 5 * 1024 ** 3;
/** Parts of a multipart copy (server-side: nothing passes through berth). */
export const COPY_PART_SIZE = 1024 ** 3;

/** `bucket/key` as CopySource wants it: URL-encoded, `/` kept. */
function copySource(bucket: string, key: string): string {
  return `${bucket}/${key.split('/').map(encodeURIComponent).join('/')}`;
}

/**
 * Copies `from` (of `size` bytes) to `to` inside the bucket, server-side. Either way `to` appears only
 * whole: CopyObject is atomic, and a multipart copy's object exists only once it is completed (a failed
 * one is aborted). `limits` are for tests (a multipart copy of a small object).
 */
export async function copyObject(s3: S3Bucket, from: string, to: string, size: number, limits = { single: COPY_OBJECT_LIMIT, part: COPY_PART_SIZE }): Promise<void> {
  const { client, bucket } = s3;
  const CopySource = copySource(bucket, from);
  if (size <= limits.single) {
    await client.send(new CopyObjectCommand({ Bucket: bucket, Key: to, CopySource }), SERVER_SIDE);
    return;
  }
  const { UploadId } = await client.send(new CreateMultipartUploadCommand({ Bucket: bucket, Key: to }));
  try {
    const Parts: Array<{ PartNumber: number; ETag: string | undefined }> = [];
    for (let start = 0, PartNumber = 1; start < size; start += limits.part, PartNumber++) {
      const end = Math.min(size, start + limits.part) - 1;
      const r = await client.send(new UploadPartCopyCommand({ Bucket: bucket, Key: to, UploadId, PartNumber, CopySource, CopySourceRange: `bytes=${start}-${end}` }), SERVER_SIDE);
      Parts.push({ PartNumber, ETag: r.CopyPartResult?.ETag });
    }
    await client.send(new CompleteMultipartUploadCommand({ Bucket: bucket, Key: to, UploadId, MultipartUpload: { Parts } }), SERVER_SIDE);
  } catch (err) {
    await client.send(new AbortMultipartUploadCommand({ Bucket: bucket, Key: to, UploadId })).catch(() => undefined);
    throw err;
  }
}
