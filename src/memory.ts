import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

const LARGE_FILL = 16 * 1024 * 1024;
/** While fills run: collect when this much more external (Buffer) memory is held than after the last one. */
const GROWTH = 32 * 1024 * 1024;
const WATCH_MS = 250;

/**
 * A fill turns every upstream chunk into a Buffer that is garbage once written. V8 collects such
 * external memory only under heap pressure, and a cache that goes on serving from disk creates almost
 * none (cached blobs are sent with reused buffers), so a 1 GiB fill could leave tens of MB resident
 * indefinitely. After each large fill berth asks for one collection: ~10 ms, once per fill; while fills run,
 * a watch collects whenever Buffer memory grew by 32 MiB (on Node.js 24 a single 95 MiB fill otherwise
 * left ~65 MB of chunks resident at its peak). One instance per server, built in the composition root.
 */
export class FillMemory {
  private collect: (() => void) | undefined;
  private pending: NodeJS.Timeout | undefined;
  private active = 0;
  private watch: NodeJS.Timeout | undefined;
  private held = 0;

  private collector(): () => void {
    if (!this.collect) {
      setFlagsFromString('--expose-gc');
      this.collect = runInNewContext('gc') as () => void;
    }
    return this.collect;
  }

  /** Called when a fill starts: watch Buffer memory until the last fill ends. */
  fillStarted(): void {
    this.active++;
    if (this.watch) return;
    this.held = process.memoryUsage().arrayBuffers;
    this.watch = setInterval(() => {
      if (process.memoryUsage().arrayBuffers - this.held < GROWTH) return;
      this.collector()();
      this.held = process.memoryUsage().arrayBuffers;
    }, WATCH_MS);
    this.watch.unref();
  }

  /** Called when a fill of `bytes` ends; collections are coalesced so a burst of fills costs one. */
  afterFill(bytes: number): void {
    this.active = Math.max(0, this.active - 1);
    if (this.active === 0) this.stopWatch();
    if (bytes < LARGE_FILL || this.pending) return;
    this.pending = setTimeout(() => {
      this.pending = undefined;
      this.collector()();
    }, 200);
    this.pending.unref();
  }

  private stopWatch(): void {
    clearInterval(this.watch);
    this.watch = undefined;
  }

  close(): void {
    this.stopWatch();
    clearTimeout(this.pending);
    this.pending = undefined;
  }
}
