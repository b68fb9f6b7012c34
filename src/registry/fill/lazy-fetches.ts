import { RegistryError } from '../../oci/errors.ts';
import type { ByteRange } from '../../oci/range.ts';
import { failsFill } from '../fill-errors.ts';
import type { Extents } from './extents.ts';
import type { BlobSource } from './fill-options.ts';
import { type BodyTarget, writeBody } from './ingest-body.ts';

/** A reader this far ahead of the sequential fill asks the upstream for its bytes directly. */
export const LAZY_DISTANCE = 2 * 1024 * 1024;
/** A client's ranges closer than this are fetched by one upstream request (stargz aligns to 50,000 bytes). */
const RANGE_COALESCE_GAP = 64 * 1024;
/** At most this many upstream Range requests are started for one client request. */
const MAX_FETCHES_PER_REQUEST = 8;

/** The upstream requests (half-open spans) for what a client's `ranges` need and `extents` lack. */
export function planRequest(ranges: ByteRange[], extents: Extents): Array<[number, number]> {
  const missing = ranges.flatMap((r) => extents.missingIn(r.start, r.end + 1));
  return planFetches(missing, { gap: RANGE_COALESCE_GAP, max: MAX_FETCHES_PER_REQUEST });
}

/**
 * Which upstream Range requests serve a client's ranges of a blob still arriving: the missing parts of
 * the ranges, merged where they overlap or lie closer than `gap` bytes, then the closest neighbours merged
 * until at most `max` requests remain. So one request of 256 small ranges costs a few upstream GETs,
 * at the price of some bytes between them (never more than the span from the first to the last range).
 * Spans are half-open [start, end).
 */
export function planFetches(missing: Array<[number, number]>, o: { gap: number; max: number }): Array<[number, number]> {
  const sorted = missing.filter(([a, b]) => b > a).sort((x, y) => x[0] - y[0]);
  const out: Array<[number, number]> = [];
  for (const [a, b] of sorted) {
    const last = out[out.length - 1];
    if (last && a - last[1] <= o.gap) last[1] = Math.max(last[1], b);
    else out.push([a, b]);
  }
  while (out.length > o.max) {
    let best = 1;
    for (let i = 2; i < out.length; i++) if (out[i]![0] - out[i - 1]![1] < out[best]![0] - out[best - 1]![1]) best = i;
    out[best - 1]![1] = Math.max(out[best - 1]![1], out[best]![1]);
    out.splice(best, 1);
  }
  return out;
}

/** One upstream Range request of a fill, as readers see it. */
export interface LazyFetch {
  start: number;
  /** Inclusive. */
  end: number;
  /** Resolves once the first bytes are on disk (or the upstream answered without Range), rejects with the error otherwise. */
  answered: Promise<void>;
  /** Set when the fetch ended without bringing its bytes (readers then retry later, or fail). */
  error?: Error;
  /** Settles (never rejects) when the fetch is over. */
  done: Promise<void>;
}

/** The Range requests of one fill in flight: at most one per offset, each with its outcome for readers. */
export class LazyFetches {
  private readonly list: LazyFetch[] = [];

  /** The spans in flight (inclusive), for introspection. */
  spans(): Array<{ start: number; end: number }> {
    return this.list.map((f) => ({ start: f.start, end: f.end }));
  }

  /** The fetch in flight whose span covers `pos`. */
  covering(pos: number): LazyFetch | undefined {
    return this.list.find((r) => r.start <= pos && pos <= r.end);
  }

  /**
   * Runs `run(answered)` as the fetch of [start, end]; `run` calls `answered()` once the first bytes
   * landed. A failure is recorded on the fetch and given to `failed`; `ended` runs either way,
   * after the fetch left the list.
   */
  begin(start: number, end: number, run: (answered: () => void) => Promise<void>, failed: (err: Error) => void, ended: () => void): LazyFetch {
    let answered!: () => void;
    let refused!: (err: Error) => void;
    const f: LazyFetch = {
      start,
      end,
      answered: new Promise<void>((ok, fail) => {
        answered = ok;
        refused = fail;
      }),
      done: Promise.resolve(),
    };
    f.answered.catch(() => {}); // nobody may be waiting on it
    this.list.push(f);
    f.done = run(answered)
      .catch((err: Error) => {
        f.error = err;
        refused(err);
        failed(err);
      })
      .finally(() => {
        this.list.splice(this.list.indexOf(f), 1);
        ended();
      });
    return f;
  }
}

/** What the Range fetches need of their fill (fill.ts). */
export interface RangeFill {
  readonly digest: string;
  readonly source: BlobSource;
  readonly signal: AbortSignal;
  readonly extents: Extents;
  /** Where the bodies go (ingest-body.ts). */
  readonly target: BodyTarget;
  ended(): boolean;
  /** The upstream's size for the blob: sets it, or throws IntegrityError when it disagrees. */
  checkSize(size: number): void;
  /** The upstream ignored Range: only the sequential fill can bring these bytes, start it. */
  needsWhole(): void;
  /** A failure that dooms the blob (404, wrong bytes, disk full). */
  fail(err: Error): void;
  /** A fetch ended, either way: wake the readers; commit if every byte is there. */
  fetchEnded(): void;
  log(msg: string, extra?: Record<string, unknown>): void;
}

/**
 * The lazy ranges of a fill: bytes a reader wants far ahead of the sequential fill (or with none running),
 * fetched with upstream Range requests at foreground priority into the same ingest file.
 */
export class LazyRanges {
  private readonly inFlight = new LazyFetches();
  /** The upstream answered a Range request with the whole blob: only the sequential fill can help. */
  unsupported = false;

  constructor(private readonly f: RangeFill) {}

  /** The Range fetches in flight (inclusive spans). */
  inFlightSpans(): Array<{ start: number; end: number }> {
    return this.inFlight.spans();
  }

  /**
   * Fetches [start, end] (inclusive), unless a fetch already in flight covers `start` (that one is
   * returned). A fetch that fails sets its `error` and publishes a change, so its readers decide (retry
   * later, or fail); a failure that dooms the blob fails the fill.
   */
  fetch(start: number, end: number): LazyFetch {
    const running = this.inFlight.covering(start);
    if (running) return running;
    const f = this.f;
    const run = async (answered: () => void) => {
      const res = await f.source.open({ start, end }, () => 'foreground', f.signal);
      f.checkSize(res.size);
      if (!res.partial) {
        answered();
        // Without Range support the only way to these bytes is the whole blob: let the sequential fill do it.
        this.unsupported = true;
        (res.body as AsyncIterable<Buffer> & { destroy?: () => void }).destroy?.();
        f.needsWhole();
        return;
      }
      await writeBody(f.target, res.body, res.start, () => 'foreground', answered, res.fromPeer);
      answered();
      if (f.extents.availableFrom(start) === start && !f.ended()) {
        throw new RegistryError('UPSTREAM_ERROR', `upstream closed the Range body of ${f.digest} at ${start} before sending anything`);
      }
    };
    const failed = (err: Error) => {
      if (failsFill(err)) f.fail(err);
      else f.log('range fetch failed', { digest: f.digest, start, end, error: err.message });
    };
    return this.inFlight.begin(start, end, run, failed, () => f.fetchEnded());
  }
}
