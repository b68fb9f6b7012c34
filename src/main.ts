import { Command } from 'commander';
import { exportCommand } from './cli/export.ts';
import { hostsCommand } from './cli/hosts.ts';
import { importCommand } from './cli/import.ts';
import { indexCommand } from './cli/index-cmd.ts';
import { maintenanceCommands } from './cli/maintenance.ts';
import { prewarmCommand } from './cli/prewarm.ts';
import { serveCommand } from './cli/serve.ts';
import { verifyCommand } from './cli/verify.ts';

/** berth's command line: `berth serve` and the operator commands, all with the same config options. */
const program = new Command('berth')
  .description('A pull-through caching OCI registry for limited, isolated and constrained sites')
  .version('0.1.0')
  .showHelpAfterError()
  .configureOutput({ outputError: (s, write) => write(s) })
  .exitOverride((err) => process.exit(err.exitCode === 0 ? 0 : 2));

serveCommand(program);
prewarmCommand(program);
exportCommand(program);
importCommand(program);
maintenanceCommands(program);
hostsCommand(program);
indexCommand(program);
verifyCommand(program);

await program.parseAsync(process.argv);
