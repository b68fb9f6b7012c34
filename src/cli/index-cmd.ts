import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import type { Command } from 'commander';
import { StorageLock } from '../store/lock.ts';
import { StoragePaths } from '../store/paths.ts';
import { type RebuildReport, rebuildIndex } from '../store/rebuild.ts';
import { configFrom, run, withConfigOptions } from './common.ts';
import { announceStorage } from './open.ts';

export function indexCommand(program: Command): void {
  const index = program.command('index').description('maintain the SQLite index of the storage directory');
  withConfigOptions(
    index.command('rebuild').description('rebuild a damaged index from the blob files (stop berth first)').option('--verify', 're-hash every blob and remove those that do not match their name'),
  ).action(
    run(async (opts) => {
      const config = configFrom(opts);
      const paths = new StoragePaths(resolve(config.storage.path));
      announceStorage(opts, config);
      // Rebuilding writes a SQLite berth.db that a PostgreSQL-indexed berth would never read.
      if (config.index.driver === 'postgres') throw new Error('index.driver is postgres: `berth index rebuild` rebuilds the SQLite index only (PostgreSQL keeps its own, see its backups)');
      if (!existsSync(paths.root))
        throw new Error(`storage directory ${paths.root} does not exist (relative paths are from the current directory; set it with --storage, BERTH_STORAGE or storage.path)`);
      const lock = await StorageLock.acquire(paths, 'index rebuild');
      let r: RebuildReport;
      try {
        r = await rebuildIndex(paths, { verify: opts.verify === true });
      } finally {
        await lock.release();
      }
      if (r.movedAside) process.stdout.write(`old index moved to ${r.movedAside}\n`);
      process.stdout.write(`indexed ${r.blobs} blobs (${r.manifests} manifests), restored ${r.tags} tags${r.removed.length ? `, removed ${r.removed.length} corrupt files` : ''}\n`);
    }),
  );
}
