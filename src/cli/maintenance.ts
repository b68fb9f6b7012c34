import type { Command } from 'commander';
import { formatBytes, parseDuration } from '../config/units.ts';
import type { Digest } from '../oci/digest.ts';
import { formatImageReference, parseImageReference } from '../oci/image-reference.ts';
import { localImageName, localImageReference } from '../registry/local/image-name.ts';
import { LOCAL_UPSTREAM } from '../registry/local-names.ts';
import type { Berth, OpenMode } from '../server.ts';
import { collectGarbage } from '../store/gc.ts';
import { imageClosure } from '../store/pins.ts';
import { run, withConfigOptions } from './common.ts';
import { openBerth } from './open.ts';
import { runningServer, viaServer } from './prewarm.ts';

async function withBerth<T>(opts: Record<string, unknown>, mode: OpenMode, body: (b: Berth) => Promise<T>): Promise<T> {
  const berth = await openBerth(opts, mode);
  try {
    return await body(berth);
  } finally {
    await berth.close();
  }
}

export function maintenanceCommands(program: Command): void {
  withConfigOptions(program.command('ls').description('list cached repositories and tags').option('--json', 'machine-readable output')).action(
    run(async (opts) =>
      // Read-only: runs beside a running server.
      withBerth(opts, { lock: false, createStorage: false }, async (berth) => {
        const { index, pins } = berth;
        await index.flushAccess();
        const pinned = new Set(await pins.references());
        // Converted images (issue #11): what they were converted from, and the learned start-up set.
        const converted = new Map((await index.estargz.images()).map((r) => [r.digest, r]));
        const estargzOf = async (d: Digest) => {
          const c = converted.get(d);
          if (!c) return undefined;
          const startup = await index.estargz.startup(c.source);
          return { source: c.source, learned: startup?.learnedAt != null, startupFiles: startup?.files.length ?? 0, startupBytes: startup?.bytes ?? 0 };
        };
        const estargz = new Map<string, Awaited<ReturnType<typeof estargzOf>>>();
        const tags = await index.allTags();
        for (const t of tags) if (converted.has(t.digest)) estargz.set(t.digest, await estargzOf(t.digest));
        // One tag after the other: a PostgreSQL index answers each read over the network, in order.
        const rowOf = async (t: (typeof tags)[number]) => {
          // A local repository's tag is named as clients pull it: no host.
          const local = t.upstream === LOCAL_UPSTREAM;
          const name = local ? `${t.repository}:${t.tag}` : `${t.upstream}/${t.repository}:${t.tag}`;
          const digests = await imageClosure(index, t.digest);
          const cached = (await Promise.all(digests.map((d) => index.getBlob(d)))).filter((r) => r !== undefined);
          const manifest = await index.getBlob(t.digest);
          return {
            reference: name,
            digest: t.digest,
            mediaType: t.mediaType,
            size: cached.reduce((n, r) => n + r.size, 0),
            complete: cached.length === digests.length && manifest !== undefined,
            lastPulled: manifest ? new Date(manifest.accessedAt).toISOString() : null,
            checked: new Date(t.checkedAt).toISOString(),
            pinned: pinned.has(name) || (await pins.isPinned(t.digest)),
            local,
            ...(estargz.has(t.digest) ? { estargz: estargz.get(t.digest) } : {}),
          };
        };
        const rows: Array<Awaited<ReturnType<typeof rowOf>>> = [];
        for (const t of tags) rows.push(await rowOf(t));
        if (opts.json) {
          process.stdout.write(`${JSON.stringify(rows, null, 2)}\n`);
          return;
        }
        const totals = await index.totals();
        const line = (r: (typeof rows)[number]) =>
          process.stdout.write(`${r.reference}\t${r.digest.slice(0, 19)}\t${formatBytes(r.size)}${r.complete ? '' : ' (partial)'}\t${r.lastPulled ?? '-'}${r.pinned ? '\tpinned' : ''}\n`);
        // Local images (the site's own, pushed or imported) apart from the cache: they are never evicted.
        const local = rows.filter((r) => r.local);
        if (local.length > 0) {
          process.stdout.write('local repositories (never evicted):\n');
          for (const r of local) line(r);
          process.stdout.write('cached:\n');
        }
        for (const r of rows) if (!r.local) line(r);
        process.stdout.write(`${rows.length} tags, ${totals.count} blobs, ${formatBytes(totals.total)}${local.length > 0 ? `; ${local.length} local` : ''}\n`);
      }),
    ),
  );

  withConfigOptions(
    program
      .command('gc')
      .description('remove unfinished downloads and blobs no tag or pin reaches')
      .option('--dry-run', 'only list what would be removed')
      .option('--min-age <duration>', 'leave partial downloads, and pushed blobs no manifest names yet, younger than this (a running server may own them)', '1h'),
  ).action(
    run(async (opts) =>
      withBerth(opts, opts.dryRun === true ? { lock: false, createStorage: false } : { lock: 'gc', createStorage: false }, async (berth) => {
        const minAgeMs = parseDuration(String(opts.minAge));
        if (minAgeMs === undefined) throw new Error(`--min-age: "${String(opts.minAge)}" is not a duration`);
        const { index, pins, store } = berth;
        // With PostgreSQL the lock held here covers this working directory only: replicas and other
        // working directories go on writing the index (and the bucket) meanwhile.
        const shared = berth.config.index.driver === 'postgres';
        const r = await collectGarbage({ index, pins, store, staging: [store.paths.ingest, store.paths.tmp], shared }, { dryRun: opts.dryRun === true, minAgeMs });
        const verb = opts.dryRun ? 'would remove' : 'removed';
        process.stdout.write(`${verb} ${r.partials.length} partial downloads, ${r.blobs.length} unreferenced blobs, ${r.orphans.length} unindexed files: ${formatBytes(r.freed)}\n`);
      }),
    ),
  );

  withConfigOptions(program.command('pin').description('keep an image in the cache whatever the quota').argument('<ref>')).action(
    run(async (opts, ref) => {
      // Beside a running server, pinning is a prewarm through it (which also fetches what is missing).
      const server = await runningServer(opts);
      if (server !== undefined) {
        const summary = await viaServer(server, [ref as string], undefined, true, () => {});
        for (const name of summary?.ok ?? []) process.stdout.write(`pinned ${name} (through the running berth at ${server})\n`);
        for (const f of summary?.failed ?? []) process.stdout.write(`FAILED ${f.ref}: ${f.message}\n`);
        return summary && summary.failed.length === 0 ? 0 : 1;
      }
      return withBerth(opts, { lock: 'pin', createStorage: false }, async (berth) => {
        const img = await berth.walker.walk(ref as string, undefined);
        await berth.pins.pin(img.name, [...img.manifests.map((m) => m.digest), ...img.blobs.map((b) => b.digest)]);
        process.stdout.write(`pinned ${img.name} (${img.manifests.length + img.blobs.length} digests)\n`);
      });
    }),
  );

  withConfigOptions(program.command('unpin').description('let an image be evicted again').argument('<ref>')).action(
    run(async (opts, ref) =>
      withBerth(opts, { lock: 'unpin', createStorage: false }, async (berth) => {
        // A local image's pin is named as the image is (`site/app:1`: prewarm, import).
        const local = localImageReference(ref as string, berth.upstreams.local);
        const name = local ? localImageName(local) : formatImageReference(parseImageReference(ref as string, berth.upstreams.defaultHost));
        const n = await berth.pins.unpin(name);
        process.stdout.write(n > 0 ? `unpinned ${name}\n` : `${name} was not pinned\n`);
        return n > 0 ? 0 : 1;
      }),
    ),
  );

  withConfigOptions(program.command('rm').description('remove an image (its tag, and content nothing else uses)').argument('<ref>').option('--force', 'remove it even when it is pinned')).action(
    run(async (opts, refText) =>
      withBerth(opts, { lock: 'rm', createStorage: false }, async (berth) => {
        const { index, pins, store, upstreams } = berth;
        if (localImageReference(refText as string, upstreams.local)) {
          // The site's own content goes the registry's way, which keeps repositories consistent.
          throw new Error(`${refText as string} is a local image: delete it with DELETE /v2/<name>/manifests/<reference> (delete.enabled: true), then run berth gc`);
        }
        const ref = parseImageReference(refText as string, upstreams.defaultHost);
        const name = formatImageReference(ref);
        const upstream = upstreams.get(ref.host)?.host ?? ref.host;
        const tag = ref.tag ? await index.getTag(upstream, ref.repository, ref.tag) : undefined;
        const root = ref.digest ?? tag?.digest;
        if (!root) throw new Error(`${name} is not cached`);
        // A pin is an operator's promise that the image stays: breaking it takes saying so.
        if (opts.force !== true && ((await pins.references()).includes(name) || (ref.digest !== undefined && (await pins.isPinned(root))))) {
          throw new Error(`${name} is pinned: \`berth unpin ${name}\` first, or \`berth rm --force ${name}\``);
        }
        if (ref.tag) await index.deleteTag(upstream, ref.repository, ref.tag);
        await pins.unpin(name);
        let removed = 0;
        let freed = 0;
        // Top down: a manifest goes (and lets go of its children) only when nothing else holds it, so a
        // second tag on the same manifest, or another image sharing a layer, keeps what it needs.
        const queue: Digest[] = [root];
        for (let d = queue.shift(); d; d = queue.shift()) {
          if ((await index.isReferenced(d)) || (await pins.isPinned(d)) || store.busy(d)) continue;
          const children = (await index.childrenOf(d)).map((c) => c.digest);
          await index.deleteChildren(d);
          const size = (await index.getBlob(d))?.size;
          if (size !== undefined) {
            freed += size;
            removed++;
            await index.deleteBlob(d);
            await store.remove(d);
          }
          queue.push(...children);
        }
        process.stdout.write(`removed ${name}: ${removed} blobs, ${formatBytes(freed)}\n`);
      }),
    ),
  );
}
