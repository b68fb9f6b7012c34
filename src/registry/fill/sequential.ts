import { setTimeout as sleep } from 'node:timers/promises';
import { RegistryError } from '../../oci/errors.ts';
import type { Priority } from '../../upstream/bandwidth.ts';
import { isCircuitOpen, isTransient } from '../fill-errors.ts';
import type { Extents } from './extents.ts';
import type { BlobSource } from './fill-options.ts';

/** What the sequential fill needs of its fill (fill.ts). */
export interface SequentialFill {
  readonly digest: string;
  readonly extents: Extents;
  readonly source: BlobSource;
  readonly signal: AbortSignal;
  readonly retries: { attempts: number; backoff: number };
  size(): number | undefined;
  priority(): Priority;
  /** The upstream's size for the blob: sets it, or throws IntegrityError when it disagrees. */
  checkSize(size: number): void;
  /** The upstream ignored Range and sends the whole blob again: forget what is on disk. */
  restartFromZero(): void;
  /** Writes a body starting at `offset`; `landed` after each chunk is in the file. */
  write(body: AsyncIterable<Buffer>, offset: number, priority: () => Priority, landed: () => void, fromPeer?: boolean): Promise<void>;
  /** Bytes of the sequential fill are on disk: response headers may go. */
  flow(): void;
  checkpoint(): Promise<void>;
  headersArrived(): void;
  log(msg: string, extra?: Record<string, unknown>): void;
}

/**
 * Fetches every missing byte, gap by gap from the first, resuming with a Range request after a transfer
 * broke (up to `retries.attempts` times in a row, with doubling pauses). Resolves once every byte is on
 * disk; the caller verifies and commits.
 */
export async function fillSequentially(f: SequentialFill): Promise<void> {
  let failures = 0;
  for (;;) {
    if (f.signal.aborted) throw f.signal.reason as Error;
    const size = f.size();
    const gap = size === undefined ? ([0, Infinity] as [number, number]) : f.extents.gaps(size)[0];
    if (!gap) return;
    const [start, end] = gap;
    try {
      const wanted = start > 0 || (size !== undefined && end < size) ? { start, ...(Number.isFinite(end) ? { end: end - 1 } : {}) } : undefined;
      const res = await f.source.open(wanted, () => f.priority(), f.signal);
      f.headersArrived();
      f.checkSize(res.size);
      if (wanted && !res.partial) {
        // The upstream ignored Range: the body is the whole blob again, so start over from zero.
        f.restartFromZero();
      }
      await f.write(
        res.body,
        res.partial ? res.start : 0,
        () => f.priority(),
        () => f.flow(),
        res.fromPeer,
      );
      f.flow(); // an empty body
      const now = f.size();
      if (now !== undefined && f.extents.gaps(now)[0]?.[0] === start) {
        throw new Error(`upstream closed the body after ${f.extents.availableFrom(start) - start} bytes`);
      }
      failures = 0;
    } catch (err) {
      if (f.signal.aborted) throw f.signal.reason as Error;
      if (err instanceof RegistryError && !['UNAVAILABLE', 'UPSTREAM_ERROR'].includes(err.code)) throw err;
      if (!isTransient(err)) throw err;
      // Nothing ever arrived, or the upstream is marked down: fail now, so the client hears 503 and
      // falls back, instead of waiting through every retry. Retries are for transfers that broke.
      if (f.extents.bytes === 0 || isCircuitOpen(err)) throw err;
      failures++;
      if (failures > f.retries.attempts) throw err;
      const delay = f.retries.backoff * 2 ** (failures - 1);
      f.log('fill interrupted; resuming', { digest: f.digest, at: f.extents.availableFrom(0), attempt: failures, delayMs: delay, error: (err as Error).message });
      await f.checkpoint();
      await sleep(delay, undefined, { signal: f.signal }).catch(() => {});
    }
  }
}
