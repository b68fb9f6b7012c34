import { type Command, Option } from 'commander';
import { ConfigError, type ConfigFlags, loadConfig } from '../config/load.ts';
import type { Config } from '../config/schema.ts';

/** The options every berth command takes, so an operator writes them the same way everywhere. */
export function withConfigOptions(cmd: Command): Command {
  return cmd
    .option('-c, --config <file>', 'configuration file (default: config/berth.yaml when present)')
    .option('--storage <dir>', 'storage directory (default: ./storage)')
    .option('--upstream <host=url>', 'an upstream registry; repeatable; replaces the configured upstreams', (v: string, acc: string[] = []) => [...acc, v])
    .option('--default-upstream <host>', 'upstream for names without a registry host (default: docker.io when configured)')
    .option('--offline', 'contact no upstream at all')
    .addOption(new Option('--log-level <level>', 'log level').choices(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']));
}

export function configFrom(opts: Record<string, unknown>): Readonly<Config> {
  const flags: ConfigFlags = {};
  if (typeof opts.config === 'string') flags.config = opts.config;
  if (typeof opts.storage === 'string') flags.storage = opts.storage;
  if (Array.isArray(opts.upstream)) flags.upstream = opts.upstream as string[];
  if (typeof opts.defaultUpstream === 'string') flags.defaultUpstream = opts.defaultUpstream;
  if (opts.offline === true) flags.offline = true;
  if (typeof opts.logLevel === 'string') flags.logLevel = opts.logLevel;
  if (typeof opts.listen === 'string') flags.listen = opts.listen;
  return loadConfig(flags);
}

/** Runs a command body; configuration errors end the process with exit code 2 and the message alone. */
// biome-ignore lint/suspicious/noConfusingVoidType: commands that exit 0 return nothing, others a status
export function run(body: (opts: Record<string, unknown>, ...args: unknown[]) => Promise<number | void>) {
  return async (...args: unknown[]) => {
    const cmd = args[args.length - 1] as Command;
    const opts = cmd.opts();
    try {
      const code = await body(opts, ...args.slice(0, -2));
      if (typeof code === 'number') process.exitCode = code;
    } catch (err) {
      if (err instanceof ConfigError) {
        process.stderr.write(`berth: invalid configuration:\n${err.message}\n`);
        process.exit(2);
      }
      process.stderr.write(`berth: ${(err as Error).message}\n`);
      // The storage backend or the index cannot be reached at start-up (S3UnreachableError,
      // IndexUnavailableError): as a configuration error, the operator must act.
      process.exit((err as { exitCode?: unknown } | null | undefined)?.exitCode === 2 ? 2 : 1);
    }
  };
}
