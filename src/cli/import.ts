import { stat } from 'node:fs/promises';
import type { Command } from 'commander';
import { importBundle } from '../bundle/import.ts';
import { formatBytes } from '../config/units.ts';
import type { Digest } from '../oci/digest.ts';
import { formatImageReference, parseImageReference } from '../oci/image-reference.ts';
import { localImageReference } from '../registry/local/image-name.ts';
import type { Berth } from '../server.ts';
import { imageClosure } from '../store/pins.ts';
import { run, withConfigOptions } from './common.ts';
import { openBerth } from './open.ts';
import { createProgress } from './progress.ts';

/** Pins an imported image under its normalised reference, as prewarm names its pins. */
async function pinImported(berth: Berth, name: string, root: Digest): Promise<void> {
  let reference = name;
  try {
    // A local image's pin is named as the image is (`site/app:1`), as prewarm names it.
    if (!localImageReference(name, berth.upstreams.local)) reference = formatImageReference(parseImageReference(name, berth.upstreams.defaultHost));
  } catch {
    // register() already parsed it; keep the name as written
  }
  await berth.pins.pin(reference, await imageClosure(berth.index, root));
}

export function importCommand(program: Command): void {
  withConfigOptions(
    program
      .command('import')
      .description('load an OCI image layout (archive or directory) into the cache, verifying every digest')
      .argument('<sources...>', 'bundle.tar from `berth export` or `skopeo copy … oci-archive:`, or an OCI layout directory')
      .option('--no-pin', 'do not pin the imported images (pinned by default, as prewarm does: an isolated site cannot fetch them again)'),
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
            const { store, index, upstreams } = berth;
            const r = await importBundle({ store, index, upstreams }, source, (n) => progress.update(source, (done += n)));
            progress.finish(source, true, `${r.images.length} images, ${r.added} of ${r.blobs} blobs new (${formatBytes(r.bytes)})`);
            progress.stop();
            for (const img of r.images) {
              if (opts.pin !== false) await pinImported(berth, img.name, img.digest as Digest);
              process.stdout.write(`imported ${img.name} ${img.digest}${opts.pin !== false ? ' (pinned)' : ''}\n`);
            }
            for (const s of r.skipped) {
              if (s.incomplete) failed++;
              process.stdout.write(`${s.incomplete ? 'FAILED' : 'note:'} ${s.name}: ${s.reason}\n`);
            }
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
