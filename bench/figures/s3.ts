// The s3 storage driver (issue #12): the cached 200 MB blob to 1 client and to 8 at once from berth on a
// one-node Ceph RADOS Gateway (test/support/ceph.ts, memstore), without and with storage.s3.localCache,
// against berth on the filesystem driver, docker-registry (proxy mode) and nginx, all warm, turn by turn.
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { HeadObjectCommand } from '@aws-sdk/client-s3';
import { makeS3Client } from '../../src/store/s3/client.ts';
import { type Ceph, startCeph } from '../../test/support/ceph.ts';
import { guarded } from '../cleanup.ts';
import type { BenchContext } from '../context.ts';
import { blobUrl, curl, curlMany, expectComplete, median, upstreamBlobBytes, warmBlob } from '../measure.ts';
import { mb, mbps, num, type Row, times } from '../row.ts';
import { type Server, startBerthServer } from '../systems.ts';

/** Ceph's port block (ten ports from here, below 32768); the tests use others. */
const CEPH_PORT = 31270;

const blobKey = (prefix: string, d: string) => `${prefix}blobs/sha256/${d.slice(7, 9)}/${d.slice(7)}`;

async function fileHasSize(file: string, size: number): Promise<boolean> {
  return (await stat(file).catch(() => undefined))?.size === size;
}

/** berth with storage.driver s3 on `ceph` (its own prefix), with a local cache of `localCache` bytes or none. */
async function s3Berth(ctx: BenchContext, ceph: Ceph, prefix: string, localCache: number | undefined): Promise<Server> {
  const s3 = { endpoint: ceph.endpoint, bucket: ceph.bucket, prefix, accessKeyId: ceph.accessKeyId, secretAccessKey: ceph.secretAccessKey };
  const client = makeS3Client({ ...s3, region: 'us-east-1', forcePathStyle: true });
  const server = await startBerthServer(ctx.bed.up.url, undefined, (storagePath) => {
    const cacheDir = path.join(storagePath, 'local-cache');
    return {
      config: { path: storagePath, driver: 's3', s3: { ...s3, ...(localCache ? { localCache: { path: cacheDir, maxSize: localCache } } : {}) } },
      hasBlob: async (d, size) => {
        if (localCache) return fileHasSize(path.join(cacheDir, 'blobs', 'sha256', d.slice(7, 9), d.slice(7)), size);
        const head = await client.send(new HeadObjectCommand({ Bucket: ceph.bucket, Key: blobKey(prefix, d) })).catch(() => undefined);
        return head?.ContentLength === size;
      },
    };
  });
  const stop = server.stop;
  return { ...server, stop: () => stop().finally(() => client.destroy()) };
}

type Kind = 's3' | 's3+local' | 'fs' | 'registry' | 'nginx';

export async function s3Driver(ctx: BenchContext): Promise<Row[]> {
  const img = ctx.bed.big;
  ctx.log('starting Ceph RGW (memstore)');
  const ceph = guarded('ceph', await startCeph({ port: CEPH_PORT, sizeGb: 4 }));
  const started: Server[] = [];
  try {
    const w = await ctx.warm();
    const plain = await s3Berth(ctx, ceph, 'plain/', undefined);
    started.push(plain);
    const local = await s3Berth(ctx, ceph, 'local/', 4 * img.layer.size);
    started.push(local);
    const systems: Array<[Kind, Server]> = [
      ['s3', plain],
      ['s3+local', local],
      ['fs', w.berth],
      ['registry', w.registry],
      ['nginx', w.nginx],
    ];
    for (const [kind, s] of systems) {
      ctx.log(`warming ${kind} with ${img.repository} (${mb(img.layer.size)})`);
      await warmBlob(s, img.repository, img.layer.digest, img.layer.size);
    }
    const mark = ctx.bed.up.logLineCount();
    const one: Partial<Record<Kind, number[]>> = {};
    const eight: Partial<Record<Kind, number[]>> = {};
    // Turn by turn within each repetition, so drift hits every system alike; round 0 is a warm-up.
    for (let rep = 0; rep <= ctx.opts.repeats; rep++) {
      for (const [kind, s] of systems) {
        const url = blobUrl(s, img.repository, img.layer.digest);
        const r = await curl(url, { maxTimeSec: 300 });
        expectComplete(`${kind} 1 client`, [r], 200, img.layer.size);
        const m = await curlMany(url, 8, { maxTimeSec: 300 });
        expectComplete(`${kind} 8 clients`, m.results, 200, img.layer.size);
        if (rep === 0) continue;
        (one[kind] ??= []).push(mbps(r.bytes, r.seconds));
        (eight[kind] ??= []).push(mbps(8 * img.layer.size, m.wallSeconds));
        ctx.log(`s3 ${kind}: 1 client ${num(mbps(r.bytes, r.seconds))} MB/s, 8 clients ${num(mbps(8 * img.layer.size, m.wallSeconds))} MB/s`);
      }
    }
    const { bytes } = await upstreamBlobBytes(ctx.bed.up, mark, img.layer.digest, 100);
    const warn = bytes > 0 ? [`WARNING: the upstream sent ${mb(bytes)} of this blob during the measurement`] : [];
    const spread = (rates: Partial<Record<Kind, number[]>>) =>
      Object.entries(rates)
        .map(([k, xs]) => `${k} ${xs!.map((x) => num(x)).join(' / ')}`)
        .join('; ');
    const row = (clients: 1 | 8, rates: Partial<Record<Kind, number[]>>): Row[] => {
      const m = (k: Kind) => median(rates[k] ?? []);
      const versus = (k: Kind) => `${times(m(k), m('fs'))} filesystem driver, ${times(m(k), m('registry'))} docker-registry, ${times(m(k), m('nginx'))} nginx`;
      const what = `cached blob ${img.nominal}, ${clients === 1 ? '1 client' : '8 clients (aggregate)'} MB/s`;
      const cells = (k: Kind) => ({ berth: num(m(k)), registry: num(m('registry')), nginx: num(m('nginx')) });
      return [
        { figure: 's3', label: `s3 driver, no local cache: ${what}`, cells: cells('s3'), ratio: versus('s3') },
        {
          figure: 's3',
          label: `s3 driver with localCache: ${what}`,
          cells: cells('s3+local'),
          ratio: versus('s3+local'),
          target: '≥ 0.9x filesystem driver',
          pass: m('s3+local') >= 0.9 * m('fs'),
        },
        {
          figure: 's3',
          label: `filesystem driver: ${what}`,
          cells: cells('fs'),
          ratio: `${times(m('fs'), m('registry'))} docker-registry, ${times(m('fs'), m('nginx'))} nginx`,
          notes: [
            `median of ${ctx.opts.repeats} runs after a warm-up run; all: ${spread(rates)}`,
            'Ceph 16.2 RGW on memstore on this machine, one OSD; the bench, RGW and berth share its 2 cores',
            ...warn,
          ],
        },
      ];
    };
    return [...row(1, one), ...row(8, eight)];
  } finally {
    for (const s of started) await s.stop();
    await ceph.stop();
  }
}
