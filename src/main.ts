import { Command } from 'commander';
import { serveCommand } from './cli/serve.ts';

/** berth's command line: `berth serve` and the operator commands, all with the same config options. */
const program = new Command('berth')
  .description('A pull-through caching OCI registry for limited, isolated and constrained sites')
  .showHelpAfterError()
  .configureOutput({ outputError: (s, write) => write(s) })
  .exitOverride((err) => process.exit(err.exitCode === 0 ? 0 : 2));

serveCommand(program);

await program.parseAsync(process.argv);
