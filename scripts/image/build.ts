// `npm run image`: berth's OCI image as an oci-archive (dist/image.tar), built from files alone — no Docker, no
// buildah, no network: the runtime and the production tree come from node_modules, the libraries and CA
// certificates from the build machine's Debian packages. Reproducible: the same commit on the same Debian gives
// the same digest (every time in the image is SOURCE_DATE_EPOCH, the commit's time unless set).
//
// Usage: node scripts/image/build.ts [--out dist/image.tar] [--json]   (after `npm run build`)
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, renameSync, rmSync, statSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { APP_DIR, berthLayer, CONFIG_FILE } from './berth-layer.ts';
import { type LayerBlob, writeLayer } from './layer.ts';
import { configDocument, indexDocument, jsonBlob, MediaTypes, manifestDocument, writeArchive } from './oci.ts';
import { BERTH_UID, NODE_PATH, runtimeLayer, STORAGE_DIR } from './runtime-layer.ts';

export const ROOT = path.resolve(import.meta.dirname, '../..');
const ARCH: Record<string, string> = { x64: 'amd64', arm64: 'arm64' };

export interface ImageSummary {
  archive: string;
  /** The image's name in index.json: what podman load, ctr import and berth import call it. */
  name: string;
  manifestDigest: string;
  configDigest: string;
  architecture: string;
  /** Compressed (what is stored and pulled) and uncompressed (what is unpacked) bytes of all layers. */
  compressedSize: number;
  uncompressedSize: number;
  archiveSize: number;
  layers: Array<Pick<LayerBlob, 'digest' | 'size' | 'uncompressedSize' | 'entries'>>;
  debianPackages: string[];
  seconds: number;
}

function git(args: string[]): string | undefined {
  try {
    return execFileSync('git', args, { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim() || undefined;
  } catch {
    return undefined;
  }
}

/** SOURCE_DATE_EPOCH (reproducible-builds.org) when set, else the commit's time, else 0. */
function sourceDateEpoch(): number {
  const given = process.env.SOURCE_DATE_EPOCH;
  if (given !== undefined && given !== '') {
    if (!/^\d+$/.test(given)) throw new Error(`SOURCE_DATE_EPOCH must be whole seconds, not ${JSON.stringify(given)}`);
    return Number(given);
  }
  return Number(git(['log', '-1', '--format=%ct']) ?? 0);
}

interface Pkg {
  name: string;
  version: string;
  description?: string;
  license?: string;
  repository?: string | { url?: string };
}

function sourceOf(pkg: Pkg): string | undefined {
  const repo = typeof pkg.repository === 'string' ? pkg.repository : pkg.repository?.url;
  return repo ?? git(['config', '--get', 'remote.origin.url']);
}

export async function buildImage(out: string): Promise<ImageSummary> {
  const started = performance.now();
  const pkg = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as Pkg;
  const architecture = ARCH[process.arch];
  if (process.platform !== 'linux' || architecture === undefined) throw new Error(`images are built on linux/x64 or linux/arm64, not ${process.platform}/${process.arch}`);
  // The image runs on the runtime package berth locks for this machine's architecture (scripts/runtime.mjs):
  // its libraries and better-sqlite3's addon are this machine's, so another architecture cannot be built here.
  const runtimePkg = `node-linux-${process.arch}`;
  let nodeBinary: string;
  try {
    nodeBinary = path.join(path.dirname(createRequire(path.join(ROOT, 'package.json')).resolve(`${runtimePkg}/package.json`)), 'bin/node');
  } catch {
    throw new Error(`${runtimePkg} is not installed: run npm ci`);
  }
  const epoch = sourceDateEpoch();
  const created = new Date(epoch * 1000).toISOString().replace(/\.000Z$/, 'Z');
  const revision = git(['rev-parse', 'HEAD']) ?? 'unknown';
  const name = `docker.io/library/${pkg.name}:${pkg.version}`;

  const app = berthLayer(ROOT);
  const runtime = runtimeLayer(nodeBinary, app.addons);
  mkdirSync(path.dirname(out), { recursive: true });
  const work = await mkdtemp(path.join(path.dirname(out), '.image-build-'));
  try {
    const [base, top] = await Promise.all([writeLayer(runtime.entries, path.join(work, 'runtime.tar.gz'), epoch), writeLayer(app.entries, path.join(work, 'berth.tar.gz'), epoch)]);
    const debianPackages = runtime.packages.map((p) => `${p.name}=${p.version}`);
    const labels: Record<string, string> = {
      'org.opencontainers.image.title': pkg.name,
      'org.opencontainers.image.description': pkg.description ?? '',
      'org.opencontainers.image.version': pkg.version,
      'org.opencontainers.image.revision': revision,
      'org.opencontainers.image.created': created,
      'org.opencontainers.image.licenses': pkg.license ?? '',
    };
    const source = sourceOf(pkg);
    if (source !== undefined) labels['org.opencontainers.image.source'] = source;
    else process.stderr.write('image: no source label (package.json has no repository and git no remote.origin)\n');
    // Where the runtime layer's files came from: the Debian packages, for whoever must track their updates.
    labels['dev.berth.image.debian-packages'] = debianPackages.join(' ');
    const config = jsonBlob(
      configDocument({
        architecture,
        created,
        config: {
          User: `${BERTH_UID}:${BERTH_UID}`,
          ExposedPorts: { '5000/tcp': {} },
          Env: [
            'PATH=/usr/local/bin:/usr/bin:/bin',
            'NODE_ENV=production',
            // As `npm start` and bin/berth.js run berth: glibc returns freed read buffers to the system.
            'MALLOC_ARENA_MAX=2',
            'MALLOC_MMAP_THRESHOLD_=131072',
            // Every berth command run in the container (`berth hosts`, `berth ls` by exec) reads the same file as serve.
            `BERTH_CONFIG=${CONFIG_FILE}`,
          ],
          Entrypoint: [NODE_PATH, `${APP_DIR}/bin/berth.js`],
          Cmd: ['serve', '--config', CONFIG_FILE],
          Volumes: { [STORAGE_DIR]: {} },
          // The volume: a relative path in an operator's berth.yaml (berth's default is ./storage) lands on it,
          // not in the image's read-only (or, without --read-only, thrown-away) root filesystem.
          WorkingDir: STORAGE_DIR,
          Labels: labels,
          StopSignal: 'SIGTERM',
        },
        layers: [
          { diffId: base.diffId, createdBy: `scripts/image: Node.js ${runtimePkg} and Debian's ${debianPackages.join(', ')}` },
          { diffId: top.diffId, createdBy: `scripts/image: berth ${pkg.version} and its production node_modules (${app.packages} packages)` },
        ],
      }),
    );
    const manifest = jsonBlob(manifestDocument(config, [base, top]));
    const index = jsonBlob(
      indexDocument([
        {
          mediaType: MediaTypes.manifest,
          digest: manifest.digest,
          size: manifest.size,
          annotations: { 'org.opencontainers.image.ref.name': name, 'io.containerd.image.name': name },
          platform: { architecture, os: 'linux' },
        },
      ]),
    );
    // Written beside and renamed: dist/image.tar is either the previous image or the whole new one.
    const partial = path.join(work, 'image.tar');
    await writeArchive(partial, index.data, [config, manifest, base, top], epoch);
    renameSync(partial, out);
    return {
      archive: out,
      name,
      manifestDigest: manifest.digest,
      configDigest: config.digest,
      architecture,
      compressedSize: base.size + top.size,
      uncompressedSize: base.uncompressedSize + top.uncompressedSize,
      archiveSize: statSync(out).size,
      layers: [base, top].map(({ digest, size, uncompressedSize, entries }) => ({ digest, size, uncompressedSize, entries })),
      debianPackages,
      seconds: Math.round(performance.now() - started) / 1000,
    };
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

const MiB = 1024 * 1024;

if (import.meta.main) {
  const { values } = parseArgs({ options: { out: { type: 'string', default: path.join(ROOT, 'dist/image.tar') }, json: { type: 'boolean', default: false } } });
  try {
    const s = await buildImage(path.resolve(values.out!));
    if (values.json) process.stdout.write(`${JSON.stringify(s)}\n`);
    else {
      process.stdout.write(
        `${s.archive}: ${s.name} linux/${s.architecture} manifest ${s.manifestDigest}\n` +
          `  layers ${(s.compressedSize / MiB).toFixed(1)} MiB compressed, ${(s.uncompressedSize / MiB).toFixed(1)} MiB uncompressed; built in ${s.seconds} s\n` +
          `  from Debian: ${s.debianPackages.join(' ')}\n`,
      );
    }
  } catch (err) {
    process.stderr.write(`image: ${(err as Error).message}\n`);
    process.exit(1);
  }
}
