import { EventEmitter } from 'node:events';
import { type FillEvents, until } from './fill-events.ts';

/**
 * The phases of one fill:
 *
 *   waiting ──▶ sized ──▶ flowing ──▶ committed
 *      │          │  └───────┼───────────▲
 *      └──────────┴──────────┴──▶ failed
 *
 * waiting: the blob's size is not known yet. sized: it is (from the manifest, a checkpoint or the
 * upstream's headers), no byte of the sequential fill is on disk yet. flowing: the sequential fill's first
 * bytes are on disk, so response headers may go. committed: verified and in blobs/.
 * failed: every reader is cut. A fill completed by Range fetches alone goes from sized to committed.
 */
export type FillPhase = 'waiting' | 'sized' | 'flowing' | 'committed' | 'failed';

const NEXT: Readonly<Record<FillPhase, readonly FillPhase[]>> = {
  waiting: ['sized', 'failed'],
  sized: ['flowing', 'committed', 'failed'],
  flowing: ['committed', 'failed'],
  committed: [],
  failed: [],
};

/** A transition the table above does not allow: a bug in the fill, never the upstream's doing. */
export class IllegalTransition extends Error {
  constructor(from: FillPhase, to: FillPhase) {
    super(`a fill cannot go from ${from} to ${to}`);
  }
}

/** What other modules see of a fill's state: they read it, only the fill (through FillState) changes it. */
export interface FillStateView {
  readonly state: FillPhase;
  readonly size: number | undefined;
  readonly error: Error | undefined;
}

/**
 * The state machine of a fill, and the events it publishes (FillEvents). Once committed or failed a fill
 * stays so: a later request to change (a shutdown failing every fill, a Range fetch answering after the
 * failure) is ignored and answered `false`. A transition out of the table throws IllegalTransition.
 */
export class FillState extends EventEmitter<FillEvents> implements FillStateView {
  #state: FillPhase = 'waiting';
  #size: number | undefined;
  #error: Error | undefined;

  constructor() {
    super();
    // Every reader of a fill waits on its events: there may be hundreds.
    this.setMaxListeners(0);
  }

  get state(): FillPhase {
    return this.#state;
  }

  get size(): number | undefined {
    return this.#size;
  }

  get error(): Error | undefined {
    return this.#error;
  }

  /** Committed or failed: nothing changes any more. */
  get ended(): boolean {
    return this.#state === 'committed' || this.#state === 'failed';
  }

  private move(to: FillPhase): boolean {
    if (this.#state === to || this.ended) return false;
    if (!NEXT[this.#state].includes(to)) throw new IllegalTransition(this.#state, to);
    this.#state = to;
    return true;
  }

  /** waiting → sized. A size already known stays (the caller compares sizes: a mismatch is the upstream's fault). */
  sized(size: number): boolean {
    if (this.#state !== 'waiting') return false;
    this.move('sized');
    this.#size = size;
    this.emit('sized', size);
    return true;
  }

  /** sized → flowing: bytes of the sequential fill are on disk. */
  flowing(): boolean {
    if (!this.move('flowing')) return false;
    this.emit('flowing');
    return true;
  }

  /** Bytes landed or a fetch ended: wakes every reader waiting in changed(). */
  progress(): void {
    this.emit('progress');
  }

  /** → committed: readers wake (progress) and find the blob in the store. */
  committed(): boolean {
    if (!this.move('committed')) return false;
    this.emit('progress');
    this.emit('committed');
    return true;
  }

  /** → failed with `err`: waiters reject, readers wake and throw it. False (and ignored) once ended. */
  failed(err: Error): boolean {
    if (!this.move('failed')) return false;
    this.#error = err;
    this.emit('failed', err);
    this.emit('progress');
    return true;
  }

  /** Resolves with the size once known; rejects if the fill fails first. */
  async whenSized(): Promise<number> {
    if (this.#size === undefined) await until(this, 'sized');
    return this.#size!;
  }

  /** Resolves once flowing (at once when committed); rejects if the fill fails first (or has failed). */
  whenFlowing(): Promise<void> {
    if (this.#state === 'flowing' || this.#state === 'committed') return Promise.resolve();
    return until(this, 'flowing');
  }

  /** Resolves when committed; rejects when the fill fails. */
  whenDone(): Promise<void> {
    if (this.#state === 'committed') return Promise.resolve();
    return until(this, 'committed');
  }

  /** The next published change (bytes landed, a fetch ended, commit or failure). */
  changed(): Promise<void> {
    return new Promise((resolve) => this.once('progress', () => resolve()));
  }
}
