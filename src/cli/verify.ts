import type { Command } from 'commander';
import { formatBytes } from '../config/units.ts';
import { scrub } from '../store/scrub.ts';
import { run, withConfigOptions } from './common.ts';
import { openBerth } from './open.ts';
import { createProgress } from './progress.ts';

/** `berth verify [--repair]`: scrub the cache; exit 1 naming every blob that does not hash to its name. */
export function verifyCommand(program: Command): void {
  withConfigOptions(
    program
      .command('verify')
      .description('re-hash every cached blob; name (and with --repair quarantine) those that do not match their digest')
      .option('--repair', 'move bad blobs to storage/quarantine/ and forget them, so the next pull fetches them again'),
  ).action(
    run(async (opts) => {
      const berth = await openBerth(opts, opts.repair === true ? { lock: 'verify', createStorage: false } : { lock: false, createStorage: false });
      const progress = createProgress();
      let started = false;
      try {
        const r = await scrub(berth.store, {
          repair: opts.repair === true,
          onProgress: (done, total) => {
            if (!started) progress.image('blobs', total);
            started = true;
            progress.update('blobs', done);
          },
        });
        progress.finish('blobs', r.bad.length === 0, `${r.blobs} blobs hashed`);
        progress.stop();
        process.stdout.write(`verified ${r.blobs} blobs, ${formatBytes(r.bytes)}: ${r.bad.length === 0 ? 'all ok' : `${r.bad.length} bad`}\n`);
        for (const b of r.bad) process.stdout.write(`BAD ${b.digest}${b.quarantinedTo ? ` (quarantined to ${b.quarantinedTo})` : ''}\n`);
        if (r.bad.length > 0 && opts.repair !== true) process.stdout.write('run `berth verify --repair` to quarantine them; the next pull fetches them again\n');
        return r.bad.length > 0 ? 1 : 0;
      } finally {
        progress.stop();
        await berth.close();
      }
    }),
  );
}
