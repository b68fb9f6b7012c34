// skopeo as a real client: pulls through berth into oci:/dir: layouts so tests compare digests.
import { execFile } from 'node:child_process';
import { DEAD_PROXY_ENV } from './safety.ts';

export interface SkopeoCopyOptions {
  /** --all: every platform of an index, not just the host's. */
  all?: boolean;
  /**
   * Default false: loopback registries here are plain HTTP or self-signed, and tls-verify=false is what
   * lets skopeo fall back to HTTP. Set true (or give srcCertDir) to make a test insist on valid TLS.
   */
  srcTlsVerify?: boolean;
  /** Directory with ca.crt (e.g. Upstream.certDir): verify TLS against it. */
  srcCertDir?: string;
  /** `user:password` */
  srcCreds?: string;
  destTlsVerify?: boolean;
  destCertDir?: string;
  destCreds?: string;
  /** e.g. ['--format', 'v2s2'] or ['--src-no-creds'] */
  extraArgs?: string[];
  timeoutMs?: number;
}

export interface RunResult {
  stdout: string;
  stderr: string;
}

export async function skopeoCopy(src: string, dst: string, opts: SkopeoCopyOptions = {}): Promise<RunResult> {
  const args = ['copy', '--quiet'];
  if (opts.all === true) args.push('--all');
  args.push(...tlsArgs('src', opts.srcTlsVerify, opts.srcCertDir, opts.srcCreds));
  args.push(...tlsArgs('dest', opts.destTlsVerify, opts.destCertDir, opts.destCreds));
  args.push(...(opts.extraArgs ?? []), src, dst);
  const { stdout, stderr } = await skopeo(args, opts.timeoutMs);
  return { stdout: stdout.toString('utf8'), stderr: stderr.toString('utf8') };
}

export interface SkopeoInspectOptions {
  tlsVerify?: boolean;
  certDir?: string;
  creds?: string;
  timeoutMs?: number;
}

/** The manifest exactly as the source serves it (hash it to compare digests byte for byte). */
export async function skopeoInspectRaw(ref: string, opts: SkopeoInspectOptions = {}): Promise<Buffer> {
  const args = ['inspect', '--raw'];
  if (ref.startsWith('docker://')) {
    if (opts.certDir !== undefined) args.push('--cert-dir', opts.certDir);
    else args.push(`--tls-verify=${String(opts.tlsVerify ?? false)}`);
    if (opts.creds !== undefined) args.push('--creds', opts.creds);
  }
  args.push(ref);
  return (await skopeo(args, opts.timeoutMs)).stdout;
}

function tlsArgs(side: 'src' | 'dest', verify: boolean | undefined, certDir: string | undefined, creds: string | undefined): string[] {
  const out: string[] = [];
  if (certDir !== undefined) out.push(`--${side}-cert-dir`, certDir);
  else out.push(`--${side}-tls-verify=${String(verify ?? false)}`);
  if (creds !== undefined) out.push(`--${side}-creds`, creds);
  return out;
}

/**
 * Runs skopeo with --insecure-policy (no dependence on /etc/containers/policy.json) and a proxy env
 * that points anything non-loopback at a dead port: a typo in a test reference cannot reach the internet.
 */
function skopeo(args: string[], timeoutMs = 120_000): Promise<{ stdout: Buffer; stderr: Buffer }> {
  const full = ['--insecure-policy', ...args];
  return new Promise((resolve, reject) => {
    execFile('skopeo', full, { encoding: 'buffer', timeout: timeoutMs, maxBuffer: 64 << 20, env: { ...process.env, ...DEAD_PROXY_ENV } }, (err, stdout, stderr) => {
      if (err) {
        reject(new Error(`skopeo ${full.join(' ')} failed: ${err.message.split('\n')[0]}\n${stderr.toString('utf8')}`));
      } else {
        resolve({ stdout, stderr });
      }
    });
  });
}
