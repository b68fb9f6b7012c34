import type { Priority } from '../../upstream/bandwidth.ts';
import { AbandonTimer } from './abandon-timer.ts';

/** What the demand of a fill acts on (fill.ts). */
export interface DemandHooks {
  /** How long the fill may go on after its last reader left, when background work wants it. */
  abandonAfterMs: number;
  /** …and when nobody else wants it. */
  abandonGraceMs: number;
  /** Whether a lazy completion whose readers all left may go on as background work (fills.maxBackground). */
  backgroundSlotFree?: () => boolean;
  /** Committed or failed. */
  ended(): boolean;
  startSequential(): void;
  /** Its readers left and it goes on as background work (Fills stops counting it against its client). */
  wentBackground(): void;
  /** Nobody read it for `ms`: checkpoint and drop it. */
  abandoned(ms: number): void;
  /** Nothing reads the ended fill any more: close its file. */
  unread(): void;
}

/**
 * Who wants a fill, and so its priority and how long it lives: readers streaming from it, clients waiting
 * for its first bytes, a client that asked for the whole blob (foreground), prewarm and lazy completion
 * (background). A fill nobody wants is dropped after a grace; prewarm, or a lazy completion that gets a
 * background slot, keeps it `abandonAfterMs`.
 */
export class FillDemand {
  readers = 0;
  /** Clients waiting in whenFlowing for their first bytes: as good as readers for priority. */
  private waiting = 0;
  /** A client wants the whole blob: the sequential fill is foreground while it reads. */
  private whole = false;
  /** Prewarm wants the whole blob: keep going `abandonAfterMs` without readers. */
  private prewarmed = false;
  /** A lazy completion wants it: the same, if a background slot is free (backgroundSlotFree). */
  private lazyCompletion = false;
  /** Going on as a lazy completion with no reader: counts against fills.maxBackground, not the other caps. */
  background = false;
  private laterTimer: NodeJS.Timeout | undefined;
  private readonly abandonTimer: AbandonTimer;

  constructor(private readonly h: DemandHooks) {
    this.abandonTimer = new AbandonTimer((ms) => {
      if (this.readers === 0 && !h.ended()) h.abandoned(ms);
    });
  }

  /** Foreground: a client wants the whole blob; background: prewarm does. */
  wantWhole(priority: Priority): void {
    if (priority === 'foreground') this.whole = true;
    else this.prewarmed = true;
  }

  /** Completes the blob in the background after `ms` while someone wants it (after, unused() decides). */
  completeLater(ms: number, started: boolean): void {
    if (started || this.laterTimer) return;
    this.lazyCompletion = true;
    this.laterTimer = setTimeout(() => (this.readers > 0 || this.waiting > 0 || this.background || this.prewarmed) && this.h.startSequential(), ms);
    this.laterTimer.unref();
  }

  /**
   * A client waits for the first bytes. It counts as a reader until the next turn of the event loop after
   * the wait: its reader is made in the microtasks after.
   */
  waitFor<T>(wait: Promise<T>): Promise<T> {
    this.waiting++;
    return wait.finally(() => setImmediate(() => this.waiting--));
  }

  /** Bytes of the sequential fill are foreground while a client that wants the whole blob is reading. */
  priority(): Priority {
    return (this.readers > 0 || this.waiting > 0) && this.whole ? 'foreground' : 'background';
  }

  /** A reader starts; the returned function (idempotent) ends it. */
  reader(): () => void {
    this.readers++;
    this.background = false;
    this.abandonTimer.clear();
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.readers--;
      this.unused();
    };
  }

  /** The fill ended: no timer of its own may outlive it. */
  ended(): void {
    if (this.laterTimer) clearTimeout(this.laterTimer);
    this.abandonTimer.clear();
  }

  /**
   * Nothing reads the fill now: its last reader left, or its request read nothing (a 416), so no reader
   * will release it. Close the file once ended, else arm the abandon timer (or it holds a slot and an fd).
   */
  unused(): void {
    if (this.readers > 0) return;
    if (this.h.ended()) this.h.unread();
    else if (!this.abandonTimer.armed) {
      // Prewarm keeps it `abandonAfterMs`; a lazy completion too if it gets a background slot; else the grace.
      const goOn = this.prewarmed || (this.lazyCompletion && (this.background || this.h.backgroundSlotFree?.() !== false));
      if (goOn && !this.prewarmed && !this.background) {
        this.background = true;
        this.h.wentBackground();
        this.h.startSequential(); // now, if not yet: its client left, so its own reads no longer go first
      }
      this.abandonTimer.arm(goOn ? this.h.abandonAfterMs : this.h.abandonGraceMs);
    }
  }
}
