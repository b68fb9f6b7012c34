import type { Readable } from 'node:stream';
import type { Failpoints } from '../../failpoints.ts';
import type { Digest } from '../../oci/digest.ts';
import type { Priority } from '../../upstream/bandwidth.ts';

/** Where a fill gets bytes: the upstream, bound to one blob. */
export interface BlobSource {
  /**
   * GET the blob, or [start, end] of it. `partial` says the upstream honoured the range (206);
   * `size` is the whole blob's size; `start` is the offset of the body's first byte.
   */
  open(range: { start: number; end?: number } | undefined, priority: () => Priority, signal: AbortSignal): Promise<SourceBody>;
}

export interface SourceBody {
  partial: boolean;
  start: number;
  size: number;
  body: AsyncIterable<Buffer>;
  /**
   * The bytes come from a peer replica, not the upstream (src/cluster/): they are not counted as upstream
   * bytes (berth_upstream_bytes_total, the status page); the cluster counts them as peer bytes.
   */
  fromPeer?: boolean;
}

export interface FillOptions {
  dataFile: string;
  metaFile: string;
  /** The size the manifest declared, when known: an upstream that disagrees is wrong. */
  expectedSize?: number;
  retries: { attempts: number; backoff: number };
  /** How long the fill may go on after its last reader left, when background work wants it (prewarm, lazy completion). */
  abandonAfterMs: number;
  /** …and when nobody else wants it: a client that walked away must not hold an upstream connection for long. */
  abandonGraceMs: number;
  /** Whether a lazy completion whose readers all left may go on as background work (fills.maxBackground). */
  backgroundSlotFree?: () => boolean;
  /** Moves the verified data file into the blob store and indexes it. */
  commit: (dataFile: string, size: number, hashed: Digest) => Promise<void>;
  /** Reads the committed blob (for a reader that arrives after the commit). */
  readCommitted: (start: number, end: number) => Readable;
  log: (msg: string, extra?: Record<string, unknown>) => void;
  onUpstreamBytes?: (n: number, priority: Priority) => void;
  /** The repository the fill was started for (only shown: the status page). */
  repository?: string;
  /** Crash points for the fault tests (set by Fills from the config). */
  failpoints?: Pick<Failpoints, 'hit'>;
}
