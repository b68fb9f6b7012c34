import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

/**
 * A fill turns every upstream chunk into a Buffer that is garbage once written. V8 collects such
 * external memory only under heap pressure, and a cache that goes on serving from disk creates almost
 * none (cached blobs are sent with reused buffers), so a 1 GiB fill could leave tens of MB resident
 * indefinitely. After each large fill berth asks for one collection: ~10 ms, once per fill.
 */
let collect: (() => void) | undefined;

function collector(): () => void {
  if (!collect) {
    setFlagsFromString('--expose-gc');
    collect = runInNewContext('gc') as () => void;
  }
  return collect;
}

const LARGE_FILL = 16 * 1024 * 1024;
let pending: NodeJS.Timeout | undefined;

/** Called when a fill of `bytes` ends; collections are coalesced so a burst of fills costs one. */
export function afterFill(bytes: number): void {
  if (bytes < LARGE_FILL || pending) return;
  pending = setTimeout(() => {
    pending = undefined;
    collector()();
  }, 200);
  pending.unref();
}
