import { resolve } from 'node:path';
import type { Command } from 'commander';
import { writeBundle } from '../bundle/export.ts';
import { formatBytes } from '../config/units.ts';
import { parsePlatforms } from '../oci/platform.ts';
import type { WalkedImage } from '../registry/image-walk.ts';
import { run, withConfigOptions } from './common.ts';
import { openBerth } from './open.ts';
import { createProgress, showPrewarmEvent } from './progress.ts';
import { collectReferences } from './references.ts';

export function exportCommand(program: Command): void {
  withConfigOptions(
    program
      .command('export')
      .description('write images as an OCI image layout archive for the two-step copy to an isolated site')
      .argument('[refs...]', 'image references, e.g. registry.k8s.io/pause:3.9')
      .option('-f, --file <file>', 'image list (as for prewarm)')
      .option('--skip-bad-lines', 'go on when lines of the image list hold no reference (each is still named)')
      .requiredOption('-o, --output <file>', 'the archive to write, e.g. bundle.tar')
      .option('--platform <list>', 'platforms to include from an index (default: all)')
      .option('--with-referrers', "also carry each image's referrers (signatures, SBOMs), which `berth import` keeps")
      .option('--estargz', 'also carry the eStargz form of each image (its <tag>-esgz tag, converted now if need be)'),
  ).action(
    run(async (opts, args) => {
      const refs = collectReferences(opts.file as string | undefined, args as string[], opts.skipBadLines === true);
      const platforms = parsePlatforms(typeof opts.platform === 'string' ? opts.platform : undefined);
      const berth = await openBerth(opts, { lock: 'export', createStorage: true });
      const progress = createProgress();
      const failed: string[] = [];
      // What is fetched for the bundle must still be there when the bundle is written: held against the quota.
      const holds: Array<() => void> = [];
      try {
        const images: WalkedImage[] = [];
        for (const ref of refs) {
          try {
            const img = await berth.prewarmer.withReferrers(await berth.walker.walk(ref, platforms), opts.withReferrers === true);
            holds.push(berth.quota.protect([...img.manifests.map((m) => m.digest), ...img.blobs.map((b) => b.digest)]));
            // Anything not cached yet is fetched on the way, as prewarm would (without pinning).
            await berth.prewarmer.warm(img, (e) => showPrewarmEvent(progress, e));
            progress.finish(img.name, true);
            images.push(img);
            if (opts.estargz === true) {
              const converted = await berth.estargz.convertWalked(img, (name) => berth.walker.walk(name, platforms));
              holds.push(berth.quota.protect([...converted.manifests.map((m) => m.digest), ...converted.blobs.map((b) => b.digest)]));
              progress.finish(converted.name, true);
              images.push(converted);
            }
          } catch (err) {
            failed.push(`${ref}: ${(err as Error).message}`);
            progress.finish(ref, false, (err as Error).message);
          }
        }
        if (images.length === 0) throw new Error(`nothing to export:\n${failed.join('\n')}`);
        const out = resolve(opts.output as string);
        const r = await writeBundle(images, berth.store, out);
        progress.stop();
        process.stdout.write(`wrote ${out}: ${images.length} images, ${r.blobs} blobs, ${formatBytes(r.bytes)}\n`);
        for (const f of failed) process.stdout.write(`FAILED ${f}\n`);
        return failed.length > 0 ? 1 : 0;
      } finally {
        for (const release of holds) release();
        progress.stop();
        await berth.close();
      }
    }),
  );
}
