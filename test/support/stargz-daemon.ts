// Where the stargz-snapshotter daemon comes from (test/tools/README.md): $BERTH_STARGZ_GRPC, the copy beside the
// repository (../shared/tools), or the compressed copy kept in test/tools, unpacked into the caller's temp dir and
// checked against its recorded digest, so a damaged or swapped file fails loudly instead of running.
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, existsSync } from 'node:fs';
import { chmod, readFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { createGunzip } from 'node:zlib';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const KEPT = join(REPO, 'test/tools/containerd-stargz-grpc.gz');

async function recordedDigest(): Promise<string> {
  const m = /sha256 \(uncompressed\) ([0-9a-f]{64})/.exec(await readFile(join(REPO, 'test/tools/README.md'), 'utf8'));
  if (!m) throw new Error('test/tools/README.md records no sha256 for containerd-stargz-grpc');
  return m[1]!;
}

async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** The path of a runnable containerd-stargz-grpc; `work` is where the kept copy is unpacked when needed. */
export async function stargzDaemonPath(work: string): Promise<string> {
  const given = process.env.BERTH_STARGZ_GRPC;
  if (given) return given;
  const beside = resolve(REPO, '../shared/tools/containerd-stargz-grpc');
  if (existsSync(beside)) return beside;
  const out = join(work, 'containerd-stargz-grpc');
  await pipeline(createReadStream(KEPT), createGunzip(), createWriteStream(out, { mode: 0o755 }));
  const [want, got] = [await recordedDigest(), await sha256File(out)];
  if (want !== got) throw new Error(`unpacked containerd-stargz-grpc hashes to ${got}, test/tools/README.md says ${want}`);
  await chmod(out, 0o755);
  return out;
}
