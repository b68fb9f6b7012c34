import type { Logger } from 'pino';

/**
 * undici 7 (the last line that runs on Node 20) throws an uncatchable `assert(!this.paused)` from a
 * socket 'end' handler when an upstream closes the connection (`Connection: close`) right after the
 * last body chunk while berth is applying backpressure (writing to disk, or holding the bandwidth
 * budget): nodejs/undici#5360, fixed in undici 8 (#5474), which needs Node 22.
 *
 * Only that exact error is absorbed: the body's data was already parsed, so the transfer completes when
 * berth resumes reading, and if it did not, the fill's idle timeout and Range resume take over. Any
 * other uncaught exception still ends the process.
 */
let installed = false;

export function isUndiciPausedParserAssert(err: unknown): boolean {
  const e = err as Error & { code?: string };
  return e?.code === 'ERR_ASSERTION' && /assert\(!this\.paused\)/.test(e.message) && /onHttpSocketEnd|client-h1/.test(e.stack ?? '');
}

export function installUndiciWorkaround(log: Logger): void {
  if (installed) return;
  installed = true;
  // Without other listeners (berth serve), every other uncaught exception keeps Node's default: log and exit.
  // Under a test runner, its own listener handles them.
  const alone = process.listenerCount('uncaughtException') === 0;
  process.on('uncaughtException', (err) => {
    if (isUndiciPausedParserAssert(err)) {
      log.warn('undici: upstream closed the connection while its body was paused (nodejs/undici#5360); the fill continues');
      return;
    }
    if (!alone) return;
    log.fatal({ err }, 'uncaught exception');
    process.exit(1);
  });
}
