// Cost of storage.verifyReads (issue #8 item 16): a cached 1 GiB blob to one curl, berth as its own
// process, with the re-hash on and off; median MB/s of 3 GETs each. Offline, no upstream is contacted.
//   node --import tsx bench/verify-reads.ts [sizeMiB]
import { execFileSync, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, mkdirSync, mkdtempSync, openSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { freePort, waitForHttp } from '../test/support/ports.ts';

const ROOT = path.resolve(import.meta.dirname, '..');
const MiB = 1024 * 1024;
const size = Number(process.argv[2] ?? 1024) * MiB;
const dir = mkdtempSync(path.join(tmpdir(), 'berth-verify-reads-'));
try {
  const storage = path.join(dir, 'storage');
  const tmp = path.join(dir, 'blob');
  const h = createHash('sha256');
  const fd = openSync(tmp, 'w');
  for (let done = 0; done < size; done += 8 * MiB) {
    const chunk = randomBytes(Math.min(8 * MiB, size - done));
    h.update(chunk);
    writeSync(fd, chunk);
  }
  closeSync(fd);
  const hex = h.digest('hex');
  mkdirSync(path.join(storage, 'blobs', 'sha256', hex.slice(0, 2)), { recursive: true });
  execFileSync('mv', [tmp, path.join(storage, 'blobs', 'sha256', hex.slice(0, 2), hex)]);
  for (const verifyReads of [true, false]) {
    const port = await freePort();
    const config = path.join(dir, `berth-${verifyReads}.yaml`);
    writeFileSync(
      config,
      JSON.stringify({ listen: `127.0.0.1:${port}`, offline: true, log: { level: 'warn' }, storage: { path: storage, verifyReads }, upstreams: [{ host: 'docker.io', url: 'http://127.0.0.1:9' }] }),
    );
    const child = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'src/main.ts'), 'serve', '--config', config], { cwd: ROOT, stdio: 'inherit' });
    try {
      await waitForHttp(`http://127.0.0.1:${port}/v2/`, { timeoutMs: 20_000 });
      const rates: number[] = [];
      for (let i = 0; i < 4; i++) {
        const out = execFileSync('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code} %{speed_download}', `http://127.0.0.1:${port}/v2/lab/x/blobs/sha256:${hex}`])
          .toString()
          .split(' ');
        if (out[0] !== '200') throw new Error(`GET answered ${out[0]}`);
        if (i > 0) rates.push(Number(out[1]) / 1e6); // the first warms the page cache
      }
      rates.sort((a, b) => a - b);
      console.log(`verifyReads: ${verifyReads}\t${(size / MiB).toFixed(0)} MiB\tmedian ${rates[1]!.toFixed(0)} MB/s\t(${rates.map((r) => r.toFixed(0)).join(', ')})`);
    } finally {
      child.kill('SIGKILL');
    }
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
