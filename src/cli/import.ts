import type { Command } from 'commander';
import { stat } from 'node:fs/promises';
import { formatBytes } from '../config/units.ts';
import { importBundle } from '../bundle/import.ts';
import { run, withConfigOptions } from './common.ts';
import { openBerth } from './open.ts';
import { createProgress } from './progress.ts';

export function importCommand(program: Command): void {
  withConfigOptions(
    program
      .command('import')
      .description('load an OCI image layout (archive or directory) into the cache, verifying every digest')
      .argument('<sources...>', 'bundle.tar from `berth export` or `skopeo copy … oci-archive:`, or an OCI layout directory'),
  ).action(
    run(async (opts, args) => {
      const sources = args as string[];
      const berth = await openBerth(opts, { lock: 'import', createStorage: true });
      const progress = createProgress();
      let failed = 0;
      try {
        for (const source of sources) {
          try {
            const st = await stat(source);
            progress.image(source, st.isDirectory() ? 0 : st.size);
            let done = 0;
            const r = await importBundle(berth.ctx, source, (n) => progress.update(source, (done += n)));
            progress.finish(source, true, `${r.images.length} images, ${r.added} of ${r.blobs} blobs new (${formatBytes(r.bytes)})`);
            progress.stop();
            for (const img of r.images) process.stdout.write(`imported ${img.name} ${img.digest}\n`);
            for (const s of r.skipped) process.stdout.write(`note: ${s.name}: ${s.reason}\n`);
          } catch (err) {
            failed++;
            progress.finish(source, false, (err as Error).message);
            process.stdout.write(`FAILED ${source}: ${(err as Error).message}\n`);
          }
        }
      } finally {
        progress.stop();
        await berth.close();
      }
      return failed > 0 ? 1 : 0;
    }),
  );
}
