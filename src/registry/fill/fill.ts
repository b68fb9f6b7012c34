import { Readable } from 'node:stream';
import type { Failpoints } from '../../failpoints.ts';
import type { Digest } from '../../oci/digest.ts';
import { RegistryError } from '../../oci/errors.ts';
import type { ByteRange } from '../../oci/range.ts';
import type { Priority } from '../../upstream/bandwidth.ts';
import { isDiskFull } from '../fill-errors.ts';
import { IntegrityError } from '../integrity.ts';
import type { Extents } from './extents.ts';
import { FillDemand } from './fill-demand.ts';
import type { FillEvents } from './fill-events.ts';
import type { BlobSource, FillOptions } from './fill-options.ts';
import { type ReadableFill, readFill, sendFill } from './fill-reader.ts';
import { type FillPhase, FillState } from './fill-state.ts';
import { type BodyTarget, writeBody } from './ingest-body.ts';
import { IngestFile } from './ingest-file.ts';
import { LAZY_DISTANCE, type LazyFetch, LazyRanges, planRequest } from './lazy-fetches.ts';
import { fillSequentially, type SequentialFill } from './sequential.ts';

export type { BlobSource, FillOptions, SourceBody } from './fill-options.ts';
export type { FillPhase as FillState } from './fill-state.ts';

type Listener<E extends keyof FillEvents> = (...args: FillEvents[E]) => void;

/**
 * One fill of one blob: a single upstream reader feeding any number of client readers through the
 * ingest file. Readers stream bytes as soon as they are on disk, each from its own offset; a reader
 * far ahead (a Range request) fetches its bytes with its own upstream Range request, which lands in
 * the same file. When every byte is there the digest is checked over the whole and the file committed.
 * A failure destroys every reader's stream: no client ever sees a clean-looking short body.
 *
 * The pieces: the ingest file (ingest-file.ts), the state machine and its events (fill-state.ts), the
 * sequential fill (sequential.ts), the Range fetches (lazy-fetches.ts), who wants the fill (fill-demand.ts)
 * and the readers (fill-reader.ts). This class wires them together; only it changes the state.
 */
export class Fill implements ReadableFill {
  private readonly s = new FillState();
  private readonly abort = new AbortController();
  private sequential: Promise<void> | undefined;
  private readonly ranges: LazyRanges;
  private readonly demand: FillDemand;
  private finishing: Promise<void> | undefined;
  private readonly failpoints: Pick<Failpoints, 'hit'>;
  /** Where upstream bodies are written (ingest-body.ts). */
  private readonly target: BodyTarget;
  /** Resolved once a failed fill has removed or checkpointed its ingest file (see `settled`). */
  private readonly cleanup = Promise.withResolvers<void>();

  private constructor(
    readonly digest: Digest,
    private readonly source: BlobSource,
    private readonly o: FillOptions,
    private readonly file: IngestFile,
  ) {
    this.failpoints = o.failpoints ?? { hit: () => {} };
    this.demand = new FillDemand({
      abandonAfterMs: o.abandonAfterMs,
      abandonGraceMs: o.abandonGraceMs,
      ...(o.backgroundSlotFree ? { backgroundSlotFree: o.backgroundSlotFree } : {}),
      ended: () => this.s.ended,
      startSequential: () => this.startSequential(),
      wentBackground: () => this.s.emit('background'),
      // Not while it commits: its bytes are all in, and its commit (an upload, the owner's commit on shared
      // storage: longer than the grace) ends it; failed meanwhile, a new fill would refetch what is committing.
      abandoned: (ms) => {
        const committing = () => this.finishing !== undefined;
        if (committing()) return;
        void this.checkpoint().then(() => committing() || this.fail(new RegistryError('UNAVAILABLE', `fill of ${this.digest} abandoned: no reader for ${ms} ms`)));
      },
      unread: () => void this.closeWhenUnread(),
    });
    this.target = {
      file,
      digest,
      size: () => this.s.size,
      ended: () => this.s.ended,
      ...(o.onUpstreamBytes ? { onUpstreamBytes: o.onUpstreamBytes } : {}),
      progress: () => this.s.progress(),
      halfway: () => this.failpoints.hit('fill.mid-body'),
      checkpoint: () => this.checkpoint(),
    };
    this.ranges = new LazyRanges({
      digest,
      source,
      signal: this.abort.signal,
      extents: file.extents,
      target: this.target,
      ended: () => this.s.ended,
      checkSize: (n) => this.checkSize(n),
      needsWhole: () => this.start(),
      fail: (err) => this.fail(err),
      fetchEnded: () => {
        this.s.progress();
        void this.maybeFinish();
      },
      log: o.log,
    });
    const size = file.size ?? o.expectedSize;
    if (size !== undefined) this.s.sized(size);
  }

  /** Opens the ingest file, picking up what an earlier fill (before a restart) left on disk. */
  static async open(digest: Digest, source: BlobSource, o: FillOptions): Promise<Fill> {
    const file = await IngestFile.open(o.dataFile, o.metaFile, o.expectedSize);
    if (file.extents.bytes > 0) o.log('resuming fill from checkpoint', { digest, bytes: file.extents.bytes, size: file.size });
    return new Fill(digest, source, o, file);
  }

  get state(): FillPhase {
    return this.s.state;
  }
  get size(): number | undefined {
    return this.s.size;
  }
  get error(): Error | undefined {
    return this.s.error;
  }
  get extents(): Extents {
    return this.file.extents;
  }
  get readers(): number {
    return this.demand.readers;
  }
  /** Going on as a lazy completion with no reader: counts against fills.maxBackground, not the other caps. */
  get background(): boolean {
    return this.demand.background;
  }
  get retries(): { attempts: number; backoff: number } {
    return this.o.retries;
  }
  /** The repository the fill was started for, when its starter said (status page). */
  get repository(): string | undefined {
    return this.o.repository;
  }
  /** The priority the sequential fill reads at now (status page). */
  get priority(): Priority {
    return this.demand.priority();
  }
  /** The Range fetches in flight, inclusive byte spans (status page). */
  get lazyRanges(): Array<{ start: number; end: number }> {
    return this.ranges.inFlightSpans();
  }

  on<E extends keyof FillEvents>(event: E, listener: Listener<E>): this {
    this.s.on(event, listener as never);
    return this;
  }
  once<E extends keyof FillEvents>(event: E, listener: Listener<E>): this {
    this.s.once(event, listener as never);
    return this;
  }
  off<E extends keyof FillEvents>(event: E, listener: Listener<E>): this {
    this.s.off(event, listener as never);
    return this;
  }

  /** Resolves with the blob's size once it is known (from the manifest or the upstream's headers). */
  whenSized(): Promise<number> {
    return this.s.whenSized();
  }

  /**
   * Resolves once bytes flow (some are on disk); rejects if the fill fails first. Waiting for this before
   * sending headers turns a dead upstream (or a full disk) into a 503 instead of a 200 and a cut.
   */
  whenFlowing(): Promise<void> {
    if (this.s.state === 'flowing' || this.extents.bytes > 0 || this.s.state === 'committed') return Promise.resolve();
    return this.demand.waitFor(this.s.whenFlowing());
  }

  /** Resolves when the blob is committed; rejects when the fill fails. */
  whenDone(): Promise<void> {
    return this.s.whenDone();
  }

  /** Waits for the next published change (bytes landed, commit or failure). */
  changed(): Promise<void> {
    return this.s.changed();
  }

  /**
   * Starts (or keeps) the sequential fill of every missing byte. Foreground when a client wants the
   * whole blob; background for prewarm and for completing a lazily-read blob.
   */
  start(priority: Priority = 'foreground'): void {
    this.demand.wantWhole(priority);
    this.startSequential();
  }

  /** Completes the blob in the background after `ms` while a reader is there (after, unused() decides). */
  startLater(ms: number): void {
    this.demand.completeLater(ms, this.sequential !== undefined);
  }

  get running(): boolean {
    return this.sequential !== undefined && !this.s.ended;
  }

  private startSequential(): void {
    if (this.sequential || this.s.ended) return;
    const f: SequentialFill = {
      digest: this.digest,
      extents: this.extents,
      source: this.source,
      signal: this.abort.signal,
      retries: this.o.retries,
      size: () => this.s.size,
      priority: () => this.demand.priority(),
      checkSize: (n) => this.checkSize(n),
      restartFromZero: () => {
        this.ranges.unsupported = true;
        this.o.log('upstream ignored Range; restarting fill from zero', { digest: this.digest });
        this.file.reset();
      },
      write: (body, offset, priority, landed, fromPeer) => writeBody(this.target, body, offset, priority, landed, fromPeer),
      flow: () => this.s.flowing(),
      checkpoint: () => this.checkpoint(),
      headersArrived: () => this.failpoints.hit('fill.headers'),
      log: this.o.log,
    };
    this.sequential = fillSequentially(f)
      .then(() => this.finish())
      .catch((err: Error) => this.fail(err));
  }

  private checkSize(size: number): void {
    if (this.s.size === undefined) this.s.sized(size);
    else if (size !== this.s.size) throw new IntegrityError(`upstream says blob ${this.digest} has ${size} bytes, expected ${this.s.size}`);
  }

  /** Records what is on disk, after syncing it, so a restarted berth resumes instead of starting over. */
  private async checkpoint(): Promise<void> {
    if (this.s.size === undefined || this.s.state === 'failed') return;
    try {
      await this.file.checkpoint(this.s.size);
    } catch (err) {
      this.o.log('could not checkpoint fill', { digest: this.digest, error: (err as Error).message });
    }
  }

  /** Fetches [start, end] (inclusive) by Range, or joins the fetch in flight that covers `start` (lazy-fetches.ts). */
  fetchRange(start: number, end: number): LazyFetch {
    return this.ranges.fetch(start, end);
  }

  /**
   * Before a Range response's headers: starts the upstream requests for the missing parts of `ranges`
   * (merged into a few, see lazy-fetches.ts) and waits until the first of them answered, or the sequential
   * fill flows. So an unreachable upstream is a 503 and a blob it does not have a 404, not a 206 followed
   * by a cut.
   */
  async prefetch(ranges: ByteRange[]): Promise<void> {
    if (this.s.state === 'committed') return;
    if (this.s.state === 'failed') throw this.s.error;
    const first: Array<Promise<void>> = [];
    for (const [a, b] of planRequest(ranges, this.extents)) {
      if (this.sequentialWillBring(a)) first.push(this.whenFlowing());
      else first.push(this.fetchRange(a, b - 1).answered);
    }
    if (first.length > 0) await first[0];
  }

  /** The sequential fill will bring `pos` soon: waiting for it beats a Range request of our own. */
  sequentialWillBring(pos: number): boolean {
    return this.running && (pos - this.extents.availableFrom(0) < LAZY_DISTANCE || this.ranges.unsupported);
  }

  read(buf: Buffer, pos: number): Promise<number> {
    return this.file.read(buf, pos);
  }

  /** When lazily fetched ranges have covered the whole blob, verify and commit it. */
  private async maybeFinish(): Promise<void> {
    if (this.s.size !== undefined && !this.s.ended && !this.sequential && this.extents.covers(this.s.size)) {
      await this.finish().catch((err: Error) => this.fail(err));
    }
  }

  private finish(): Promise<void> {
    this.finishing ??= (async () => {
      const size = this.s.size!;
      const actual = await this.file.digestHex(size);
      if (`sha256:${actual}` !== this.digest) {
        throw new IntegrityError(`upstream bytes hash to sha256:${actual}, not ${this.digest}`);
      }
      this.failpoints.hit('fill.before-rename');
      // The store checks the claim again: the one commit path keeps "a blob hashes to its name" itself.
      await this.o.commit(this.file.path, size, `sha256:${actual}` as Digest);
      await this.file.removeCheckpoint();
      this.demand.ended();
      this.s.committed();
      await this.closeWhenUnread();
    })();
    return this.finishing;
  }

  /**
   * Resolves once the failed fill is done with its ingest file's path: removed (wrong bytes, a full disk),
   * checkpointed, or moved into the store by a commit that was in flight when it failed. A new fill of the same blob through the same upstream uses the same path and must
   * wait for this, or the removal unlinks the new fill's file under it (its commit then fails with ENOENT).
   * A committed fill's file was moved into the store before it left the table: it resolves at once.
   */
  get settled(): Promise<void> {
    return this.s.state === 'failed' ? this.cleanup.promise : Promise.resolve();
  }

  /** Fails the fill: every reader is destroyed, and a corrupt ingest file is removed. Ignored once ended. */
  fail(err: Error): void {
    if (this.s.ended) return;
    this.o.log('fill failed', { digest: this.digest, error: err.message });
    // Failed first: anything the abort below runs at once sees an ended fill, and a second fail() is ignored.
    this.s.failed(err);
    this.abort.abort(err);
    this.demand.ended();
    // Wrong bytes must go; so must a partial that a full disk stopped (it only holds space) and a data
    // file with nothing in it (a GET of a digest the upstream does not have).
    void (async () => {
      // A commit in flight (failed meanwhile: shutdown, a lazy fetch's wrong bytes) still uses the file and
      // its path: once it moved the file into the store there is nothing left to clean; until it ended, a
      // new fill of the blob must not open the path (see `settled`).
      const commit = await this.finishing?.then(
        () => ({ moved: true, error: undefined }),
        (error: unknown) => ({ moved: false, error }),
      );
      if (commit?.moved) return await this.closeWhenUnread();
      const discard = [err, commit?.error].some((e) => e instanceof IntegrityError || isDiskFull(e)) || this.extents.bytes === 0;
      if (discard) await this.file.discard();
      // best effort: without a checkpoint the next fill starts from zero
      else if (this.s.size !== undefined) await this.file.checkpoint(this.s.size, false).catch(() => {});
      await this.closeWhenUnread();
    })()
      .catch((e: Error) => this.o.log('could not clean up after a failed fill', { digest: this.digest, error: e.message }))
      .finally(() => this.cleanup.resolve());
  }

  private async closeWhenUnread(): Promise<void> {
    if (this.demand.readers === 0) await this.file.close();
  }

  /**
   * A stream of [start, end] (inclusive). It yields bytes as they land; bytes far ahead of the
   * sequential fill (or with no sequential fill at all) are fetched by Range at foreground priority.
   * A reader whose request covers the whole blob (`verified`) holds back its last byte until the digest is
   * checked: wrong bytes from the upstream cut the client's connection instead of a clean-looking body.
   */
  reader(start: number, end: number, opts: { verified?: boolean } = {}): Readable {
    if (this.s.state === 'committed') return this.o.readCommitted(start, end);
    const release = this.demand.reader();
    const stream = Readable.from(readFill(this, start, end, opts.verified === true), { objectMode: false, highWaterMark: 256 * 1024 });
    stream.once('close', release);
    return stream;
  }

  /**
   * [start, end] through `write` (resolves once the socket took a chunk), as `reader` streams it but with two
   * reused buffers (fill-reader.ts sendFill); `verified` as for `reader`. The hot path of a cold blob.
   */
  async send(start: number, end: number, write: (chunk: Buffer) => Promise<void>, opts: { verified?: boolean } = {}): Promise<void> {
    if (this.s.state === 'committed') {
      for await (const chunk of this.o.readCommitted(start, end)) await write(chunk as Buffer);
      return;
    }
    const release = this.demand.reader();
    try {
      await sendFill(this, start, end, opts.verified === true, write);
    } finally {
      release();
    }
  }

  /**
   * Nothing reads the fill now: its last reader left, or its request read nothing (a 416), so no reader
   * will release it. Close the file once done, else arm the abandon timer (or it holds a slot and an fd).
   */
  unused(): void {
    this.demand.unused();
  }
}
