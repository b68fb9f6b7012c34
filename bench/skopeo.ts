// A real client's pull: `skopeo copy docker://HOST/NAME:TAG dir:TMP` over plain HTTP, timed end to end.
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** Seconds for one pull into a fresh directory under `dir` (removed afterwards). */
export async function skopeoPull(host: string, repository: string, tag: string, dir: string): Promise<number> {
  const policy = path.join(dir, 'policy.json');
  await writeFile(policy, JSON.stringify({ default: [{ type: 'insecureAcceptAnything' }] }));
  const dest = await mkdtemp(path.join(dir, 'pull-'));
  // Go clients never proxy loopback; clearing the proxy variables keeps it that way for sure.
  const env = { ...process.env, HTTP_PROXY: '', HTTPS_PROXY: '', http_proxy: '', https_proxy: '' };
  const t0 = performance.now();
  try {
    await run('skopeo', ['copy', '-q', '--policy', policy, '--src-tls-verify=false', `docker://${host}/${repository}:${tag}`, `dir:${dest}`], { env, timeout: 600_000, maxBuffer: 1 << 20 });
    return (performance.now() - t0) / 1000;
  } finally {
    await rm(dest, { recursive: true, force: true });
  }
}
