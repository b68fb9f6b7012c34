import { resolve } from 'node:path';
import type { Command } from 'commander';
import { request } from 'undici';
import { formatBytes } from '../config/units.ts';
import { parsePlatforms } from '../oci/platform.ts';
import type { PrewarmEvent } from '../registry/prewarm.ts';
import { lockHolder, StorageLockedError } from '../store/lock.ts';
import { StoragePaths } from '../store/paths.ts';
import { configFrom, run, withConfigOptions } from './common.ts';
import { openBerth } from './open.ts';
import { createProgress, showPrewarmEvent } from './progress.ts';
import { collectReferences } from './references.ts';

export function prewarmCommand(program: Command): void {
  withConfigOptions(
    program
      .command('prewarm')
      .description('fetch images into the cache ahead of need (at background priority) and pin them')
      .argument('[refs...]', 'image references, e.g. registry.k8s.io/pause:3.9')
      .option('-f, --file <file>', 'image list: kubeadm/clusterctl output, helm "image:" lines, one per line (- for stdin)')
      .option('--skip-bad-lines', 'go on when lines of the image list hold no reference (each is still named)')
      .option('--platform <list>', 'platforms to fetch from an index, e.g. linux/amd64,linux/arm64 (default: all)')
      .option('--server <url>', 'ask this running berth to do it (its own fills), e.g. http://127.0.0.1:5000')
      .option('--no-pin', 'do not pin the prewarmed images')
      .option('--with-referrers', "also fetch each image's referrers (signatures, SBOMs: referrers API or the sha256-<hex> tag) and pin them with it")
      .option('--estargz', 'also convert each image to eStargz (the <tag>-esgz tag, estargz.suffix) and pin that too'),
  ).action(
    run(async (opts, args) => {
      const refs = collectReferences(opts.file as string | undefined, args as string[], opts.skipBadLines === true);
      const platforms = typeof opts.platform === 'string' ? opts.platform : undefined;
      parsePlatforms(platforms);
      const progress = createProgress();
      const onEvent = (e: PrewarmEvent) => showPrewarmEvent(progress, e);
      let summary: (PrewarmEvent & { type: 'summary' }) | undefined;
      const server = typeof opts.server === 'string' ? opts.server : await runningServer(opts);
      if (server !== undefined) {
        summary = await viaServer(server, refs, platforms, opts.pin !== false, onEvent, opts.withReferrers === true, opts.estargz === true);
      } else {
        const berth = await openBerth(opts, { lock: 'prewarm', createStorage: true });
        try {
          summary = await berth.prewarmer.run(refs, parsePlatforms(platforms), onEvent, { pin: opts.pin !== false, withReferrers: opts.withReferrers === true, estargz: opts.estargz === true });
        } finally {
          await berth.close();
        }
      }
      progress.stop();
      if (!summary) throw new Error('the server ended the prewarm without a summary');
      process.stdout.write(`prewarmed ${summary.ok.length} of ${refs.length} images, ${formatBytes(summary.bytes)} in all, ${formatBytes(summary.fetched)} fetched\n`);
      for (const f of summary.failed) process.stdout.write(`FAILED ${f.ref}: ${f.message}\n`);
      return summary.failed.length > 0 ? 1 : 0;
    }),
  );
}

/**
 * The running `berth serve` that holds this storage, if any: prewarm then goes through it (its fills,
 * its quota), exactly as with --server, instead of writing the storage beside it.
 */
export async function runningServer(opts: Record<string, unknown>): Promise<string | undefined> {
  const root = resolve(configFrom(opts).storage.path);
  const holder = await lockHolder(new StoragePaths(root));
  if (!holder) return undefined;
  const url = holder.adminUrl ?? holder.url;
  if (holder.command !== 'serve' || url === undefined) throw new StorageLockedError(root, holder);
  process.stderr.write(`${new Date().toISOString()} storage ${root} is served by berth (pid ${holder.pid}): going through it at ${url}\n`);
  return url;
}

export async function viaServer(server: string, refs: string[], platforms: string | undefined, pin: boolean, onEvent: (e: PrewarmEvent) => void, withReferrers = false, estargz = false) {
  const res = await request(new URL('/_berth/prewarm', server), {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ references: refs, platforms, pin, ...(withReferrers ? { referrers: true } : {}), ...(estargz ? { estargz: true } : {}) }),
    bodyTimeout: 0,
  });
  if (res.statusCode !== 200) throw new Error(`${server} answered ${res.statusCode}: ${(await res.body.text()).slice(0, 300)}`);
  let buffered = '';
  let summary: (PrewarmEvent & { type: 'summary' }) | undefined;
  for await (const chunk of res.body) {
    buffered += (chunk as Buffer).toString('utf8');
    let nl: number;
    while ((nl = buffered.indexOf('\n')) >= 0) {
      const line = buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
      if (!line.trim()) continue;
      const e = JSON.parse(line) as PrewarmEvent;
      if (e.type === 'summary') summary = e;
      else onEvent(e);
    }
  }
  return summary;
}
