import { HeadBucketCommand, type S3Client } from '@aws-sdk/client-s3';

/**
 * A read with no answer yet asks whether the gateway still answers at all this often. 2 s (and 2 s for the
 * probe) was too eager on this loaded machine: a HeadBucket beside eight streaming 200 MB reads went
 * unanswered that long, and reads were aborted that would have been served.
 */
const CHECK_EVERY_MS = 4000;
/** A HeadBucket that gets no answer in this long: the gateway is not answering. */
export const PROBE_MS = 4000;
/** One probe's answer is shared by every read waiting meanwhile. */
const PROBE_SHARED_MS = 1000;
/** A read the gateway is working on (it answers probes) still ends here. */
const READ_ANSWER_MS = 120_000;

/** The gateway is alive (any HTTP answer, even 403) or not (no connection, no answer within PROBE_MS). */
function answered(err: unknown): boolean {
  return typeof (err as { $metadata?: { httpStatusCode?: number } })?.$metadata?.httpStatusCode === 'number';
}

/**
 * Tells a busy gateway from a dead one, for reads a client is waiting on. A fixed time-to-headers limit
 * cannot: Ceph RGW on a loaded machine took more than 5 s to answer a GET while eight other 200 MB reads
 * streamed (its objecter throttles in-flight bytes), yet a frozen radosgw accepts connections and never
 * answers. So a read waits as long as the gateway answers a HeadBucket (no object data: not behind that
 * throttle), checked every CHECK_EVERY_MS while the read has no answer, and is aborted as soon as a probe
 * gets none: a 503 in about 8 s from a frozen gateway, none from a busy one.
 */
export class GatewayWatch {
  private probe: Promise<boolean> | undefined;
  private probedAt = 0;

  constructor(
    private readonly client: S3Client,
    private readonly bucket: string,
  ) {}

  /** Whether the gateway answers now (probes shared for PROBE_SHARED_MS). */
  alive(): Promise<boolean> {
    if (this.probe && Date.now() - this.probedAt < PROBE_SHARED_MS) return this.probe;
    this.probedAt = Date.now();
    this.probe = this.client.send(new HeadBucketCommand({ Bucket: this.bucket }), { abortSignal: AbortSignal.timeout(PROBE_MS), requestTimeout: PROBE_MS }).then(
      () => true,
      (err: unknown) => answered(err),
    );
    return this.probe;
  }

  /**
   * `client.send(command)` for a read: up to READ_ANSWER_MS while the gateway answers probes, aborted (an
   * AbortError whose cause says why) once one gets no answer. The SDK does not retry an aborted request.
   */
  async send<T>(run: (opts: { abortSignal: AbortSignal; requestTimeout: number }) => Promise<T>): Promise<T> {
    const ac = new AbortController();
    // Once the answer is here the signal must never fire: it would cut the body the caller now streams.
    let settled = false;
    const timer = setInterval(() => {
      void this.alive().then((ok) => {
        if (!ok && !settled) ac.abort(new Error(`no answer, and none to a HeadBucket within ${PROBE_MS} ms either`));
      });
    }, CHECK_EVERY_MS);
    try {
      return await run({ abortSignal: ac.signal, requestTimeout: READ_ANSWER_MS });
    } finally {
      settled = true;
      clearInterval(timer);
    }
  }
}
