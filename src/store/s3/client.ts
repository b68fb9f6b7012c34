import { Agent as HttpAgent } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import { S3Client } from '@aws-sdk/client-s3';
import { RegistryError } from '../../oci/errors.ts';

/** storage.s3 as the store needs it (src/config/schema.ts). */
export interface S3Settings {
  endpoint: string;
  region: string;
  bucket: string;
  prefix: string;
  accessKeyId?: string | undefined;
  secretAccessKey?: string | undefined;
  forcePathStyle: boolean;
  localCache?: { path: string; maxSize: number } | undefined;
}

/** A dead gateway must fail a request in seconds, not hang it: a miss then answers 503 promptly. */
const CONNECT_TIMEOUT_MS = 3000;
/**
 * A request that has had no response headers for this long fails (a gateway that accepts connections but
 * does not answer: wedged, or its process stopped, the kernel still completing the handshake). Reads a
 * client waits on are bounded sooner, by GatewayWatch (src/store/s3/gateway-watch.ts): a busy RGW can take
 * longer than any short limit to answer a GET, so what bounds them is whether it answers at all.
 */
export const ANSWER_TIMEOUT_MS = 30_000;
/** Requests whose answer comes after a body is sent (a part, a small blob's PUT: up to 64 MiB). */
export const SEND_BODY = { requestTimeout: 120_000 };
/** Listings (gc, quota, the ingest sweep: no client waits on them): a page of 1000 keys from a busy bucket index. */
export const LISTING = { requestTimeout: 30_000 };
/** Server-side work before the answer: CopyObject/UploadPartCopy of up to 5 GiB, CompleteMultipartUpload. */
export const SERVER_SIDE = { requestTimeout: 15 * 60_000 };
/** No byte moved on the socket for this long (a wedged gateway, or a client that stopped reading). */
const SOCKET_IDLE_MS = 30_000;
/**
 * Every client streaming a blob holds a socket for the whole transfer: the SDK's default of 50 would make
 * the 51st reader wait behind the others' layers.
 */
const MAX_SOCKETS = 1024;

/**
 * The AWS SDK v3 client as RGW 16.2 needs it: checksums only where an operation requires them (the SDK's
 * default since 3.729 sends aws-chunked bodies RGW refuses with 411), keep-alive sockets and timeouts.
 * Credentials from the config, else the SDK's default chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY…).
 */
export function makeS3Client(s: S3Settings): S3Client {
  const agent = { keepAlive: true, maxSockets: MAX_SOCKETS };
  return new S3Client({
    endpoint: s.endpoint,
    region: s.region,
    forcePathStyle: s.forcePathStyle,
    ...(s.accessKeyId && s.secretAccessKey ? { credentials: { accessKeyId: s.accessKeyId, secretAccessKey: s.secretAccessKey } } : {}),
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    // One retry: a refused or reset connection is retried at once, and a gateway that does not answer costs
    // 2 × ANSWER_TIMEOUT_MS (reads: GatewayWatch aborts sooner, and an abort is not retried; a body cut
    // mid-transfer is resumed by objectBytes instead).
    maxAttempts: 2,
    requestHandler: {
      connectionTimeout: CONNECT_TIMEOUT_MS,
      requestTimeout: ANSWER_TIMEOUT_MS,
      throwOnRequestTimeout: true,
      socketTimeout: SOCKET_IDLE_MS,
      httpAgent: new HttpAgent(agent),
      httpsAgent: new HttpsAgent(agent),
    },
  });
}

interface SdkError {
  name?: string;
  code?: string;
  $metadata?: { httpStatusCode?: number };
}

/** A 404 from S3: the object (or the upload) is not there. */
export function isNotFound(err: unknown): boolean {
  const e = err as SdkError | undefined;
  return e?.$metadata?.httpStatusCode === 404 || e?.name === 'NotFound' || e?.name === 'NoSuchKey' || e?.name === 'NoSuchUpload';
}

/** What went wrong, in a few words: the S3 error code, the HTTP status, or the socket's error code. */
export function s3Reason(err: unknown): string {
  const e = err as SdkError & { message?: string; cause?: Error & { code?: string } };
  // GatewayWatch's abort: its reason is what to say.
  if (e?.name === 'AbortError' && e.cause instanceof Error) return e.cause.message;
  const status = e?.$metadata?.httpStatusCode;
  const code = e?.code ?? e?.cause?.code;
  return [e?.name && e.name !== 'Error' ? e.name : undefined, code, status ? `HTTP ${status}` : undefined].filter(Boolean).join(', ') || e?.message || String(err);
}

/**
 * A failure of the object store seen by a request: UNAVAILABLE (503), so clients fall back or retry, and
 * never a 404 that would send them upstream for content berth has. The SDK error stays as the cause.
 */
export function s3Failure(what: string, endpoint: string, err: unknown): RegistryError {
  if (err instanceof RegistryError) return err;
  const e = new RegistryError('UNAVAILABLE', `berth's S3 store at ${endpoint} failed to ${what} (${s3Reason(err)}); try again`);
  (e as Error).cause = err;
  return e;
}

/** The bucket cannot be reached at start-up: `berth serve` ends with exit code 2 and this message. */
export class S3UnreachableError extends Error {
  override name = 'S3UnreachableError';
  readonly exitCode = 2;
}
