import type { EventEmitter } from 'node:events';

/**
 * What a fill publishes, in this order for one fill: `sized` (once), `flowing` (once, the sequential fill's
 * first bytes are on disk), `progress` (many: bytes landed, a fetch ended), then `committed` or `failed`
 * (once, the last of these). `background`: its readers left and it goes on as background work.
 */
export interface FillEvents {
  sized: [size: number];
  flowing: [];
  progress: [];
  committed: [];
  failed: [err: Error];
  background: [];
}

/** Resolves on `event` of `fill`, rejects if it fails first (or has failed); the listeners go either way. */
export function until<E extends Exclude<keyof FillEvents, 'failed'>>(fill: EventEmitter<FillEvents> & { readonly state: string; readonly error: Error | undefined }, event: E): Promise<void> {
  if (fill.state === 'failed') return Promise.reject(fill.error);
  return new Promise((resolve, reject) => {
    const ok = () => {
      fill.off('failed', fail);
      resolve();
    };
    const fail = (err: Error) => {
      (fill as EventEmitter).off(event, ok);
      reject(err);
    };
    (fill as EventEmitter).once(event, ok);
    fill.once('failed', fail);
  });
}
