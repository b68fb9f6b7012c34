import type { Command } from 'commander';
import pino from 'pino';
import { createBerth } from '../server.ts';
import { configFrom, run, withConfigOptions } from './common.ts';

export function serveCommand(program: Command): void {
  withConfigOptions(program.command('serve').description('run the registry cache'))
    .option('-l, --listen <host:port>', 'address to listen on (default :5000)')
    .action(
      run(async (opts) => {
        const config = configFrom(opts);
        // One log line per request: buffered (4 KiB) rather than a write per line on the hot path,
        // flushed every second so a quiet server's lines still show up promptly, and on exit.
        const destination = pino.destination({ dest: 1, sync: false, minLength: 4096 });
        setInterval(() => destination.flush(), 1000).unref();
        const berth = await createBerth(config, pino({ level: config.log.level }, destination));
        let stopping = false;
        const stop = (signal: string) => {
          if (stopping) return;
          stopping = true;
          berth.log.info({ signal }, 'shutting down');
          void berth.close().then(
            () => {
              destination.flushSync();
              process.exit(0);
            },
            (err: unknown) => {
              // A stop that cannot finish must still end the process, saying why.
              berth.log.error({ err }, 'shutdown failed');
              destination.flushSync();
              process.exit(1);
            },
          );
        };
        process.on('SIGINT', () => stop('SIGINT'));
        process.on('SIGTERM', () => stop('SIGTERM'));
        process.on('SIGHUP', () => {
          try {
            berth.reloadTls();
          } catch (err) {
            berth.log.error({ err }, 'TLS reload failed; keeping the old certificate');
          }
        });
        // Listen only once the handlers are in: a SIGTERM that arrives as the port opens (a supervisor that
        // saw it answer) must still stop berth cleanly, lock released, not end it mid-start by default.
        await berth.listen();
        await new Promise(() => {});
      }),
    );
}
