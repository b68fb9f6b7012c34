import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

const LARGE_FILL = 16 * 1024 * 1024;

/**
 * A fill turns every upstream chunk into a Buffer that is garbage once written. V8 collects such
 * external memory only under heap pressure, and a cache that goes on serving from disk creates almost
 * none (cached blobs are sent with reused buffers), so a 1 GiB fill could leave tens of MB resident
 * indefinitely. After each large fill berth asks for one collection: ~10 ms, once per fill. One instance
 * per server, built in the composition root.
 */
export class FillMemory {
  private collect: (() => void) | undefined;
  private pending: NodeJS.Timeout | undefined;

  private collector(): () => void {
    if (!this.collect) {
      setFlagsFromString('--expose-gc');
      this.collect = runInNewContext('gc') as () => void;
    }
    return this.collect;
  }

  /** Called when a fill of `bytes` ends; collections are coalesced so a burst of fills costs one. */
  afterFill(bytes: number): void {
    if (bytes < LARGE_FILL || this.pending) return;
    this.pending = setTimeout(() => {
      this.pending = undefined;
      this.collector()();
    }, 200);
    this.pending.unref();
  }

  close(): void {
    clearTimeout(this.pending);
    this.pending = undefined;
  }
}
