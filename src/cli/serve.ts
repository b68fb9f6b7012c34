import type { Command } from 'commander';
import { createBerth } from '../server.ts';
import { configFrom, run, withConfigOptions } from './common.ts';

export function serveCommand(program: Command): void {
  withConfigOptions(program.command('serve').description('run the registry cache'))
    .option('-l, --listen <host:port>', 'address to listen on (default :5000)')
    .action(
      run(async (opts) => {
        const config = configFrom(opts);
        const berth = await createBerth(config);
        await berth.listen();
        let stopping = false;
        const stop = (signal: string) => {
          if (stopping) return;
          stopping = true;
          berth.ctx.log.info({ signal }, 'shutting down');
          void berth.close().then(() => process.exit(0));
        };
        process.on('SIGINT', () => stop('SIGINT'));
        process.on('SIGTERM', () => stop('SIGTERM'));
        process.on('SIGHUP', () => {
          try {
            berth.reloadTls();
          } catch (err) {
            berth.ctx.log.error({ err }, 'TLS reload failed; keeping the old certificate');
          }
        });
        await new Promise(() => {});
      }),
    );
}
