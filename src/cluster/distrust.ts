import { LRUCache } from 'lru-cache';
import type { Digest } from '../oci/digest.ts';
import type { SourceBody } from '../registry/fill/fill.ts';

/** How many (upstream, digest, owner) a replica remembers as failed it: bounded, whatever peers do. */
const REMEMBERED = 1000;
/** Owner ids are per process, so a restarted peer is a new owner anyway; this only bounds the memory's age. */
const REMEMBER_MS = 10 * 60_000;
/** A heartbeat is a second apart: a stale time that moved by more than this means the owner heartbeated. */
const MOVED_MS = 250;
/** A failure that took this long left room for a heartbeat of a live owner (they are a second apart). */
const SLOW_FAILURE_MS = 1500;

/**
 * The peers that failed this replica for one blob: bytes that did not verify, a 206 for another range than
 * asked, or alive (heartbeating) but never answering. Such an owner's lease says "someone fetches this", but
 * nothing we get from it can be used: waiting on it would hold every pull of the blob until its lease goes,
 * which a live liar's never does. A replica that remembers it reads the upstream itself, as without a
 * cluster (docs/decisions.md "Cluster fills").
 */
export class Distrust {
  private readonly failed = new LRUCache<string, string>({ max: REMEMBERED, ttl: REMEMBER_MS });
  private readonly strikes = new LRUCache<string, number>({ max: REMEMBERED, ttl: REMEMBER_MS });

  private static key(upstream: string, d: Digest, owner: string): string {
    return `${upstream.toLowerCase()} ${d} ${owner}`;
  }

  has(upstream: string, d: Digest, owner: string): boolean {
    return this.failed.has(Distrust.key(upstream, d, owner));
  }

  /** Remembers the owner as failed for this blob, with why (for the log line that says it is skipped). */
  add(upstream: string, d: Digest, owner: string, why: string): void {
    this.failed.set(Distrust.key(upstream, d, owner), why);
  }

  /** One more broken body from this owner for this blob; how many so far. */
  strike(upstream: string, d: Digest, owner: string): number {
    const k = Distrust.key(upstream, d, owner);
    const n = (this.strikes.get(k) ?? 0) + 1;
    this.strikes.set(k, n);
    return n;
  }
}

/**
 * An owner we could not reach, and where its lease goes stale. Looking again, a later stale time means it
 * heartbeated meanwhile: alive, and just not answering us (a black hole, a wrong advertise URL, a
 * partition); the same one means it is presumably dead and its lease is about to go. A fast failure (a
 * refused connection) says nothing of the stale time seen before it: the owner may have heartbeated once
 * more between that look and its death. Then the first look after the failure sets the mark.
 */
export class Suspect {
  private staleAt: number | undefined;

  constructor(
    readonly owner: string,
    seenStaleAt: number,
    failedAfterMs: number,
  ) {
    if (failedAfterMs >= SLOW_FAILURE_MS) this.staleAt = seenStaleAt;
  }

  /** Whether the owner heartbeated since the mark (setting the mark if there is none yet). */
  heartbeatedSince(expiresInMs: number): boolean {
    const now = Date.now() + expiresInMs;
    if (this.staleAt === undefined) {
      this.staleAt = now;
      return false;
    }
    return now > this.staleAt + MOVED_MS;
  }
}

/**
 * A peer's body, marked as such (not upstream bytes), with `onBytes` told of each chunk and `onFailure` when
 * it breaks (not when it is cancelled by its own reader).
 */
export function observeBody(src: SourceBody, signal: AbortSignal, onFailure: (err: unknown) => void, onBytes: (n: number) => void = () => {}): SourceBody {
  const inner = src.body as AsyncIterable<Buffer> & { destroy?: () => void };
  async function* watched(): AsyncGenerator<Buffer> {
    try {
      for await (const chunk of inner) {
        onBytes(chunk.length);
        yield chunk;
      }
    } catch (err) {
      if (!signal.aborted) onFailure(err);
      throw err;
    }
  }
  return { ...src, fromPeer: true, body: Object.assign(watched(), { destroy: inner.destroy }) };
}
