/**
 * Layer conversions on worker threads, so that gzip work never holds the event loop that serves clients.
 *
 * - At most `concurrency` conversions run at once, each on a worker of its own (started for it, ended
 *   after it: a crash, a hang or an abort costs only that conversion, and nothing is left to leak); the
 *   rest wait in FIFO order.
 * - Bytes cross by postMessage with transferred ArrayBuffers, and both directions are pulled: the worker
 *   asks for the next piece of source (at most one request outstanding, ≤ PIECE bytes), and waits for the
 *   main thread's ack (the sink's promise) before it sends the next member. Memory stays one chunk deep.
 * - Priority: Node has no per-thread nice, but on Linux setpriority(PRIO_PROCESS, tid) is per thread, so the
 *   worker renices its own thread (os.setPriority with its tid from /proc/thread-self) to 19 and deflates
 *   on that thread (zlib's sync API). Gunzip of the source stays on libuv's pool: a small share of the work.
 * - Entry point: the worker runs this same module (`import.meta.url`): from the sources that is pool.ts; in
 *   the esbuild bundle it is dist/berth.mjs, which holds this module ahead of the CLI, and the top-level
 *   await below keeps the rest of the bundle (the CLI's parseAsync) from ever running in the worker.
 */
import { readlinkSync } from 'node:fs';
import os from 'node:os';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { convertLayerWith } from './convert-layer.ts';
import { deflateSync } from './gzip-member.ts';
import { ConversionError, type ConvertedLayer, type LayerConversion, type LayerConverter, type SourceCompression } from './types.ts';

const WORKER_FLAG = 'berthEstargzWorker';
/** Source bytes per message to the worker. */
const PIECE = 512 << 10;

type ToWorker = { t: 'data'; chunk: Uint8Array } | { t: 'end' } | { t: 'ack' };
type FromWorker = { t: 'pull' } | { t: 'out'; chunk: Uint8Array } | { t: 'done'; result: ConvertedLayer } | { t: 'fail'; conversion: boolean; message: string };

interface Job {
  [WORKER_FLAG]: true;
  compression: SourceCompression;
  options: LayerConversion;
  spoolDir?: string;
}

/** Whether b is the whole of its ArrayBuffer (so transferring it takes nobody else's bytes). */
const ownsMemory = (b: Uint8Array): boolean => b.byteOffset === 0 && b.byteLength === b.buffer.byteLength && b.buffer instanceof ArrayBuffer && b.byteLength >= 4096;
/** A Uint8Array whose ArrayBuffer can be transferred (copied when it is a view into a larger or pooled one). */
const transferable = (b: Uint8Array): Uint8Array => (ownsMemory(b) ? b : new Uint8Array(b));

export interface PoolOptions {
  concurrency: number;
  /**
   * Where conversions with prioritised files spool the layer's entries (uncompressed, removed after):
   * berth's own temporary directory on the storage volume, not a possibly read-only or small /tmp.
   * Default os.tmpdir().
   */
  spoolDir?: string;
  /** Sees each worker as it starts (tests end one to check that a crash fails only its conversion). */
  onWorker?: (worker: Worker) => void;
}

export class ConversionPool implements LayerConverter {
  private running = 0;
  private readonly waiting: Array<() => void> = [];
  private readonly workers = new Set<Worker>();
  private closed = false;

  constructor(private readonly opts: PoolOptions) {
    if (!Number.isInteger(opts.concurrency) || opts.concurrency < 1) throw new RangeError(`concurrency must be a positive integer, not ${opts.concurrency}`);
  }

  async convert(source: AsyncIterable<Buffer>, compression: SourceCompression, options: LayerConversion, sink: (chunk: Buffer) => Promise<void>, signal?: AbortSignal): Promise<ConvertedLayer> {
    if (this.closed) throw new Error('the conversion pool is closed');
    signal?.throwIfAborted();
    if (this.running >= this.opts.concurrency) {
      await new Promise<void>((resolve, reject) => {
        const go = () => {
          signal?.removeEventListener('abort', leave);
          resolve();
        };
        const leave = () => {
          const i = this.waiting.indexOf(go);
          if (i >= 0) this.waiting.splice(i, 1);
          reject(signal!.reason);
        };
        signal?.addEventListener('abort', leave, { once: true });
        this.waiting.push(go);
      });
    } else this.running++;
    try {
      if (this.closed) throw new Error('the conversion pool is closed');
      return await this.run(source, compression, options, sink, signal);
    } finally {
      const next = this.waiting.shift();
      if (next)
        next(); // the slot passes on directly, so `running` stays the same
      else this.running--;
    }
  }

  private run(source: AsyncIterable<Buffer>, compression: SourceCompression, options: LayerConversion, sink: (chunk: Buffer) => Promise<void>, signal?: AbortSignal): Promise<ConvertedLayer> {
    return new Promise((resolve, reject) => {
      const job: Job = { [WORKER_FLAG]: true, compression, spoolDir: this.opts.spoolDir, options: { chunkSize: options.chunkSize, prioritizedFiles: [...options.prioritizedFiles] } };
      // A small young generation: a conversion makes few JS objects, so scavenges would be rare and the spent
      // source and gunzip buffers (freed only by a GC) would pile up; at 4 MB they go every few MB of data.
      const worker = new Worker(new URL(import.meta.url), { workerData: job, resourceLimits: { maxYoungGenerationSizeMb: 4 } });
      this.workers.add(worker);
      this.opts.onWorker?.(worker);
      const input = source[Symbol.asyncIterator]();
      let settled = false;
      const finish = (err: unknown, result?: ConvertedLayer) => {
        if (settled) return;
        settled = true;
        signal?.removeEventListener('abort', onAbort);
        void input.return?.()?.catch(() => {});
        // Settle once the thread is gone, so the next conversion's worker never overlaps this one.
        const settle = () => {
          this.workers.delete(worker);
          if (err) reject(err);
          else resolve(result!);
        };
        worker.terminate().then(settle, settle);
      };
      const onAbort = () => finish(signal!.reason);
      signal?.addEventListener('abort', onAbort, { once: true });
      const send = (m: ToWorker, transfer: ArrayBuffer[] = []) => {
        if (!settled) worker.postMessage(m, transfer);
      };
      // A piece of source: a buffer that owns its memory goes as it is (transferred), small ones are joined.
      const pull = async () => {
        const parts: Buffer[] = [];
        let length = 0;
        while (length < PIECE) {
          const r = await input.next();
          if (r.done) break;
          if (r.value.length === 0) continue;
          if (parts.length === 0 && ownsMemory(r.value)) return send({ t: 'data', chunk: r.value }, [r.value.buffer as ArrayBuffer]);
          parts.push(r.value);
          length += r.value.length;
        }
        if (length === 0) return send({ t: 'end' });
        const chunk = new Uint8Array(length);
        let at = 0;
        for (const p of parts) {
          chunk.set(p, at);
          at += p.length;
        }
        send({ t: 'data', chunk }, [chunk.buffer]);
      };
      worker.on('message', (m: FromWorker) => {
        if (settled) return;
        if (m.t === 'pull') pull().catch((err) => finish(err));
        else if (m.t === 'out') {
          sink(Buffer.from(m.chunk.buffer, m.chunk.byteOffset, m.chunk.byteLength)).then(
            () => {
              // Free the member now rather than at this isolate's next GC, which V8 puts off until
              // ~64 MB of such buffers have piled up: the sink is done with it once its promise resolves.
              (m.chunk.buffer as ArrayBuffer).transfer(0);
              send({ t: 'ack' });
            },
            (err) => finish(err),
          );
        } else if (m.t === 'done') finish(null, m.result);
        else finish(m.conversion ? new ConversionError(m.message) : new Error(`layer conversion failed: ${m.message}`));
      });
      worker.on('error', (err) => finish(new Error(`the layer conversion worker crashed: ${err.message}`, { cause: err })));
      worker.on('exit', (code) => finish(new Error(`the layer conversion worker exited (code ${code}) before it finished`)));
    });
  }

  /** Ends the running conversions' workers (their promises reject) and refuses new ones. */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.all([...this.workers].map((w) => w.terminate()));
  }
}

/** Renices this thread (Linux: a thread's tid works as setpriority's pid); elsewhere it stays as it is. */
function lowerThreadPriority(): void {
  try {
    const tid = Number(readlinkSync('/proc/thread-self').split('/').pop());
    if (Number.isInteger(tid) && tid > 0) os.setPriority(tid, 19);
  } catch {
    // not Linux, or not permitted: the conversion still runs, at normal priority
  }
}

async function runWorker(job: Job): Promise<void> {
  const port = parentPort!;
  lowerThreadPriority();
  const inputs: Array<(m: ToWorker) => void> = [];
  const acks: Array<() => void> = [];
  port.on('message', (m: ToWorker) => {
    if (m.t === 'ack') acks.shift()?.();
    else inputs.shift()?.(m);
  });
  const nextInput = () =>
    new Promise<ToWorker>((resolve) => {
      inputs.push(resolve);
      port.postMessage({ t: 'pull' } satisfies FromWorker);
    });
  async function* source(): AsyncGenerator<Buffer> {
    for (;;) {
      const m = await nextInput();
      if (m.t !== 'data') return;
      yield Buffer.from(m.chunk.buffer, m.chunk.byteOffset, m.chunk.byteLength);
    }
  }
  const sink = (b: Buffer) =>
    new Promise<void>((resolve) => {
      acks.push(resolve);
      const chunk = transferable(b);
      port.postMessage({ t: 'out', chunk } satisfies FromWorker, [chunk.buffer as ArrayBuffer]);
    });
  try {
    const result = await convertLayerWith(source(), job.compression, job.options, sink, undefined, deflateSync, job.spoolDir);
    port.postMessage({ t: 'done', result } satisfies FromWorker);
  } catch (err) {
    port.postMessage({ t: 'fail', conversion: err instanceof ConversionError, message: err instanceof Error ? err.message : String(err) } satisfies FromWorker);
  }
  // The main thread ends this worker once it has the answer; until then nothing else may run here.
  await new Promise(() => {});
}

if (!isMainThread && (workerData as Partial<Job> | null)?.[WORKER_FLAG] === true) await runWorker(workerData as Job);
