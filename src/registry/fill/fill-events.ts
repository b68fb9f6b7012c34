import type { EventEmitter } from 'node:events';

/** Resolves on `event` of `fill`, rejects if it fails first (or has failed); the listeners go either way. */
export function until(fill: EventEmitter & { state: string; error: Error | undefined }, event: string): Promise<void> {
  if (fill.state === 'failed') return Promise.reject(fill.error);
  return new Promise((resolve, reject) => {
    const ok = () => {
      fill.off('failed', fail);
      resolve();
    };
    const fail = (err: Error) => {
      fill.off(event, ok);
      reject(err);
    };
    fill.once(event, ok);
    fill.once('failed', fail);
  });
}
