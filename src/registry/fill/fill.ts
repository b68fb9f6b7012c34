import { EventEmitter } from 'node:events';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { RegistryError } from '../../oci/errors.ts';
import type { Digest } from '../../oci/digest.ts';
import type { Priority } from '../../upstream/bandwidth.ts';
import type { Extents } from './extents.ts';
import { IntegrityError } from '../integrity.ts';
import { IngestFile } from './ingest-file.ts';
import { AbandonTimer } from './abandon-timer.ts';
import { until } from './fill-events.ts';
import { failpoint } from '../../failpoints.ts';
import { failsFill, isCircuitOpen, isDiskFull, isTransient } from '../fill-errors.ts';
import { type ReadableFill, readFill } from './fill-reader.ts';
import { LAZY_DISTANCE, type LazyFetch, LazyFetches, planRequest } from './lazy-fetches.ts';
import type { ByteRange } from '../../oci/range.ts';
import type { BlobSource, FillOptions } from './fill-options.ts';

export type { BlobSource, FillOptions, SourceBody } from './fill-options.ts';
export type FillState = 'running' | 'idle' | 'committed' | 'failed';

/**
 * One fill of one blob: a single upstream reader feeding any number of client readers through the
 * ingest file. Readers stream bytes as soon as they are on disk, each from its own offset; a reader
 * far ahead (a Range request) fetches its bytes with its own upstream Range request, which lands in
 * the same file. When every byte is there the digest is checked over the whole and the file committed.
 * A failure destroys every reader's stream: no client ever sees a clean-looking short body.
 */
export class Fill extends EventEmitter implements ReadableFill {
  state: FillState = 'idle';
  size: number | undefined;
  error: Error | undefined;
  readonly extents: Extents;
  readers = 0;
  /** Clients waiting in whenFlowing for their first bytes: as good as readers for priority. */
  private waiting = 0;
  private readonly abort = new AbortController();
  private file!: IngestFile;
  private sequential: Promise<void> | undefined;
  private readonly lazy = new LazyFetches();
  /** Prewarm wants the whole blob: keep going `abandonAfterMs` without readers. */
  private prewarmed = false;
  /** A lazy completion wants it: the same, if a background slot is free (FillOptions.backgroundSlotFree). */
  private lazyCompletion = false;
  /** Going on as a lazy completion with no reader: counts against fills.maxBackground, not the other caps. */
  background = false;
  /** The upstream answered a Range request with the whole blob: only the sequential fill can help. */
  private rangeUnsupported = false;
  private flowing = false;
  private readonly abandonTimer = new AbandonTimer((ms) => {
    if (this.readers === 0 && this.state !== 'committed') {
      void this.checkpoint().then(() => this.fail(new RegistryError('UNAVAILABLE', `fill of ${this.digest} abandoned: no reader for ${ms} ms`)));
    }
  });
  private finishing: Promise<void> | undefined;
  private seqPriority: Priority = 'background';
  private laterTimer: NodeJS.Timeout | undefined;

  private constructor(
    readonly digest: Digest,
    private readonly source: BlobSource,
    private readonly o: FillOptions,
    extents: Extents,
    size: number | undefined,
  ) {
    super();
    this.setMaxListeners(0);
    this.extents = extents;
    if (size !== undefined) this.setSize(size);
  }

  /** Opens the ingest file, picking up what an earlier fill (before a restart) left on disk. */
  static async open(digest: Digest, source: BlobSource, o: FillOptions): Promise<Fill> {
    const file = await IngestFile.open(o.dataFile, o.metaFile, o.expectedSize);
    const fill = new Fill(digest, source, o, file.extents, file.size ?? o.expectedSize);
    fill.file = file;
    if (file.extents.bytes > 0) o.log('resuming fill from checkpoint', { digest, bytes: file.extents.bytes, size: file.size });
    return fill;
  }

  /** Resolves with the blob's size once it is known (from the manifest or the upstream's headers). */
  async whenSized(): Promise<number> {
    if (this.size === undefined) await until(this, 'sized');
    return this.size!;
  }

  private setSize(n: number): void {
    if (this.size === undefined) {
      this.size = n;
      this.emit('sized');
    }
  }

  /**
   * Starts (or keeps) the sequential fill of every missing byte. Foreground when a client wants the
   * whole blob; background for prewarm and for completing a lazily-read blob.
   */
  start(priority: Priority = 'foreground'): void {
    if (priority === 'foreground') this.seqPriority = 'foreground';
    else this.prewarmed = true;
    this.startSequential();
  }

  private startSequential(): void {
    if (this.sequential || this.state === 'committed' || this.state === 'failed') return;
    this.state = 'running';
    this.sequential = this.runSequential().catch((err: Error) => this.fail(err));
  }

  /** Completes the blob in the background after `ms` while a reader is there (after, unused() decides). */
  startLater(ms: number): void {
    if (this.sequential || this.laterTimer) return;
    this.lazyCompletion = true;
    this.laterTimer = setTimeout(() => (this.readers > 0 || this.waiting > 0 || this.background || this.prewarmed) && this.startSequential(), ms);
    this.laterTimer.unref();
  }

  /**
   * Resolves once bytes flow (some are on disk); rejects if the fill fails first. Waiting for this before
   * sending headers turns a dead upstream (or a full disk) into a 503 instead of a 200 and a cut. A waiter
   * counts as a reader until the next turn of the event loop: its reader is made in the microtasks after.
   */
  whenFlowing(): Promise<void> {
    if (this.flowing || this.extents.bytes > 0 || this.state === 'committed') return Promise.resolve();
    this.waiting++;
    return until(this, 'flowing').finally(() => setImmediate(() => this.waiting--));
  }

  /** Resolves when the blob is committed; rejects when the fill fails. */
  whenDone(): Promise<void> {
    if (this.state === 'committed') return Promise.resolve();
    return until(this, 'committed');
  }

  get running(): boolean {
    return this.sequential !== undefined && this.state === 'running';
  }

  /** Bytes of the sequential fill are foreground while a client that wants the whole blob is reading. */
  private priority(): Priority {
    return (this.readers > 0 || this.waiting > 0) && this.seqPriority === 'foreground' ? 'foreground' : 'background';
  }

  private async runSequential(): Promise<void> {
    let failures = 0;
    for (;;) {
      if (this.abort.signal.aborted) throw this.abort.signal.reason as Error;
      const gap = this.size === undefined ? ([0, Infinity] as [number, number]) : this.extents.gaps(this.size)[0];
      if (!gap) break;
      const [start, end] = gap;
      try {
        const wanted = start > 0 || (this.size !== undefined && end < this.size) ? { start, ...(Number.isFinite(end) ? { end: end - 1 } : {}) } : undefined;
        const res = await this.source.open(wanted, () => this.priority(), this.abort.signal);
        failpoint('fill.headers');
        this.checkSize(res.size);
        if (wanted && !res.partial) {
          // The upstream ignored Range: the body is the whole blob again, so start over from zero.
          this.rangeUnsupported = true;
          this.o.log('upstream ignored Range; restarting fill from zero', { digest: this.digest });
          this.file.reset();
        }
        await this.consume(res.body, res.partial ? res.start : 0, this.priority.bind(this), () => this.flow());
        this.flow(); // an empty body
        if (this.size !== undefined && this.extents.gaps(this.size)[0]?.[0] === start) {
          throw new Error(`upstream closed the body after ${this.extents.availableFrom(start) - start} bytes`);
        }
        failures = 0;
      } catch (err) {
        if (this.abort.signal.aborted) throw this.abort.signal.reason as Error;
        if (err instanceof RegistryError && !['UNAVAILABLE', 'UPSTREAM_ERROR'].includes(err.code)) throw err;
        if (!isTransient(err)) throw err;
        // Nothing ever arrived, or the upstream is marked down: fail now, so the client hears 503 and
        // falls back, instead of waiting through every retry. Retries are for transfers that broke.
        if (this.extents.bytes === 0 || isCircuitOpen(err)) throw err;
        failures++;
        if (failures > this.o.retries.attempts) throw err;
        const delay = this.o.retries.backoff * 2 ** (failures - 1);
        this.o.log('fill interrupted; resuming', { digest: this.digest, at: this.extents.availableFrom(0), attempt: failures, delayMs: delay, error: (err as Error).message });
        await this.checkpoint();
        await sleep(delay, undefined, { signal: this.abort.signal }).catch(() => {});
      }
    }
    await this.finish();
  }

  private checkSize(size: number): void {
    if (this.size === undefined) this.setSize(size);
    else if (size !== this.size) throw new IntegrityError(`upstream says blob ${this.digest} has ${size} bytes, expected ${this.size}`);
  }

  /**
   * Bytes are on disk: response headers may go. Not before: a full disk is then a 503 "disk full"
   * instead of a 200 cut before its first byte.
   */
  private flow(): void {
    if (this.flowing) return;
    this.flowing = true;
    this.emit('flowing');
  }

  /** Writes a body that starts at `offset` into the file, publishing each chunk as it lands; `landed` after the first. */
  private async consume(body: AsyncIterable<Buffer>, offset: number, priority: () => Priority, landed: () => void = () => {}): Promise<void> {
    let pos = offset;
    for await (const chunk of body) {
      if (this.state === 'failed' || this.state === 'committed') return;
      if (this.size !== undefined && pos + chunk.length > this.size) {
        throw new IntegrityError(`upstream sent more than the ${this.size} bytes of blob ${this.digest}`);
      }
      this.o.onUpstreamBytes?.(chunk.length, priority());
      // Only what really is in the file is published: a short write (a full disk) must not leave the
      // extents claiming bytes that a later Range would read back as zeros.
      const due = await this.file.write(chunk, pos, `blob ${this.digest}`);
      pos += chunk.length;
      landed();
      if (this.size !== undefined && pos * 2 >= this.size && (pos - chunk.length) * 2 < this.size) failpoint('fill.mid-body');
      this.emit('progress');
      if (due) await this.checkpoint();
    }
  }

  /** Records what is on disk, after syncing it, so a restarted berth resumes instead of starting over. */
  private async checkpoint(): Promise<void> {
    if (this.size === undefined || this.state === 'failed') return;
    try {
      await this.file.checkpoint(this.size);
    } catch (err) {
      this.o.log('could not checkpoint fill', { digest: this.digest, error: (err as Error).message });
    }
  }

  /**
   * Fetches [start, end] (inclusive) from the upstream with a Range request, at foreground priority,
   * unless a fetch already in flight covers `start` (that one is returned). A fetch that fails sets its
   * `error` and publishes a change, so its readers decide (retry later, or fail); a failure that dooms
   * the blob (404, wrong bytes, disk full) fails the fill.
   */
  fetchRange(start: number, end: number): LazyFetch {
    const running = this.lazy.covering(start);
    if (running) return running;
    const run = async (answered: () => void) => {
      const res = await this.source.open({ start, end }, () => 'foreground', this.abort.signal);
      this.checkSize(res.size);
      if (!res.partial) {
        answered();
        // Without Range support the only way to these bytes is the whole blob: let the sequential fill do it.
        this.rangeUnsupported = true;
        (res.body as AsyncIterable<Buffer> & { destroy?: () => void }).destroy?.();
        this.start();
        return;
      }
      await this.consume(res.body, res.start, () => 'foreground', answered);
      answered();
      if (this.extents.availableFrom(start) === start && this.state !== 'failed' && this.state !== 'committed') {
        throw new RegistryError('UPSTREAM_ERROR', `upstream closed the Range body of ${this.digest} at ${start} before sending anything`);
      }
    };
    const failed = (err: Error) => {
      if (failsFill(err)) this.fail(err);
      else this.o.log('range fetch failed', { digest: this.digest, start, end, error: err.message });
    };
    return this.lazy.begin(start, end, run, failed, () => {
      this.emit('progress');
      void this.maybeFinish();
    });
  }

  /**
   * Before a Range response's headers: starts the upstream requests for the missing parts of `ranges`
   * (merged into a few, see lazy-plan.ts) and waits until the first of them answered, or the sequential
   * fill flows. So an unreachable upstream is a 503 and a blob it does not have a 404, not a 206 followed
   * by a cut.
   */
  async prefetch(ranges: ByteRange[]): Promise<void> {
    if (this.state === 'committed') return;
    if (this.state === 'failed') throw this.error;
    const first: Array<Promise<void>> = [];
    for (const [a, b] of planRequest(ranges, this.extents)) {
      if (this.sequentialWillBring(a)) first.push(this.whenFlowing());
      else first.push(this.fetchRange(a, b - 1).answered);
    }
    if (first.length > 0) await first[0];
  }

  /** The sequential fill will bring `pos` soon: waiting for it beats a Range request of our own. */
  sequentialWillBring(pos: number): boolean {
    return this.running && (pos - this.extents.availableFrom(0) < LAZY_DISTANCE || this.rangeUnsupported);
  }

  read(buf: Buffer, pos: number): Promise<number> {
    return this.file.read(buf, pos);
  }

  get retries(): { attempts: number; backoff: number } {
    return this.o.retries;
  }

  /** When lazily fetched ranges have covered the whole blob, verify and commit it. */
  private async maybeFinish(): Promise<void> {
    if (this.size !== undefined && this.state !== 'committed' && this.state !== 'failed' && !this.sequential && this.extents.covers(this.size)) {
      await this.finish().catch((err: Error) => this.fail(err));
    }
  }

  private finish(): Promise<void> {
    this.finishing ??= (async () => {
      const size = this.size!;
      const actual = await this.file.digestHex(size);
      if (`sha256:${actual}` !== this.digest) {
        throw new IntegrityError(`upstream bytes hash to sha256:${actual}, not ${this.digest}`);
      }
      failpoint('fill.before-rename');
      await this.o.commit(this.file.path, size);
      await this.file.removeCheckpoint();
      this.state = 'committed';
      this.clearAbandonTimer();
      this.emit('progress');
      this.emit('committed');
      await this.closeWhenUnread();
    })();
    return this.finishing;
  }

  /** Fails the fill: every reader is destroyed, and a corrupt ingest file is removed. */
  fail(err: Error): void {
    if (this.state === 'failed' || this.state === 'committed') return;
    this.state = 'failed';
    this.error = err;
    this.abort.abort(err);
    this.clearAbandonTimer();
    this.o.log('fill failed', { digest: this.digest, error: err.message });
    this.emit('failed', err);
    this.emit('progress');
    // Wrong bytes must go; so must a partial that a full disk stopped (it only holds space) and a data
    // file with nothing in it (a GET of a digest the upstream does not have).
    const discard = err instanceof IntegrityError || isDiskFull(err) || this.extents.bytes === 0;
    void (async () => {
      if (discard) await this.file.discard();
      // best effort: without a checkpoint the next fill starts from zero
      else if (this.size !== undefined) await this.file.checkpoint(this.size, false).catch(() => {});
      await this.closeWhenUnread();
    })();
  }

  private async closeWhenUnread(): Promise<void> {
    if (this.readers === 0) await this.file.close();
  }

  private clearAbandonTimer(): void {
    if (this.laterTimer && (this.state === 'committed' || this.state === 'failed')) clearTimeout(this.laterTimer);
    this.abandonTimer.clear();
  }

  /** Waits for the next published change (bytes landed, commit or failure). */
  changed(): Promise<void> {
    return new Promise((resolve) => this.once('progress', resolve));
  }

  /**
   * A stream of [start, end] (inclusive). It yields bytes as they land; bytes far ahead of the
   * sequential fill (or with no sequential fill at all) are fetched by Range at foreground priority.
   * A reader whose request covers the whole blob (`verified`) holds back its last byte until the digest is
   * checked: wrong bytes from the upstream cut the client's connection instead of a clean-looking body.
   */
  reader(start: number, end: number, opts: { verified?: boolean } = {}): Readable {
    if (this.state === 'committed') return this.o.readCommitted(start, end);
    this.readers++;
    this.background = false;
    this.clearAbandonTimer();
    const holdBack = opts.verified === true;
    const stream = Readable.from(readFill(this, start, end, holdBack), { objectMode: false, highWaterMark: 256 * 1024 });
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      this.readers--;
      this.unused();
    };
    stream.once('close', release);
    return stream;
  }

  /**
   * Nothing reads the fill now: its last reader left, or its request read nothing (a 416), so no reader
   * will release it. Close the file once done, else arm the abandon timer (or it holds a slot and an fd).
   */
  unused(): void {
    if (this.readers > 0) return;
    if (this.state === 'committed' || this.state === 'failed') void this.closeWhenUnread();
    else if (!this.abandonTimer.armed) {
      // Prewarm keeps it `abandonAfterMs`; a lazy completion too if it gets a background slot; else the grace.
      const goOn = this.prewarmed || (this.lazyCompletion && (this.background || this.o.backgroundSlotFree?.() !== false));
      if (goOn && !this.prewarmed && !this.background) {
        this.background = true;
        this.emit('background');
        this.startSequential(); // now, if not yet: its client left, so its own reads no longer go first
      }
      this.abandonTimer.arm(goOn ? this.o.abandonAfterMs : this.o.abandonGraceMs);
    }
  }
}
