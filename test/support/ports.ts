// Loopback ports for test servers. Every helper listens on 127.0.0.1 only.

import { readFile } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

/**
 * An ephemeral port that was free a moment ago. Only for programs that cannot listen on port 0
 * and report it (docker-registry): there is a small window in which another process can take it,
 * so callers that start a server on it should retry with a new port if the server fails to bind.
 */
export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (address === null || typeof address === 'string') throw new Error('freePort: no TCP address');
  return address.port;
}

export interface WaitForHttpOptions {
  timeoutMs?: number;
  /** PEM file: verify https against it. Without it https is probed WITHOUT verification (readiness only). */
  ca?: string;
}

/**
 * Resolves as soon as the URL gives any HTTP answer (any status, including 401/404).
 * A readiness probe, not a check: with https and no `ca` the certificate is not verified, because a test
 * waiting for its own self-signed server has nothing to gain from verifying it here.
 */
export async function waitForHttp(url: string, opts: WaitForHttpOptions = {}): Promise<void> {
  const deadline = Date.now() + (opts.timeoutMs ?? 15_000);
  const ca = opts.ca === undefined ? undefined : await readFile(opts.ca, 'utf8');
  let lastError: unknown;
  while (Date.now() < deadline) {
    try {
      await probe(url, ca);
      return;
    } catch (err) {
      lastError = err;
      await sleep(50);
    }
  }
  throw new Error(`waitForHttp ${url}: no answer in ${opts.timeoutMs ?? 15_000} ms: ${String(lastError)}`);
}

function probe(url: string, ca: string | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    const u = new URL(url);
    const onResponse = (res: http.IncomingMessage): void => {
      res.resume();
      resolve();
    };
    // agent: false -> a fresh connection each probe, nothing left pooled when the caller moves on.
    const req =
      u.protocol === 'https:' ? https.get(u, { agent: false, timeout: 2_000, ca, rejectUnauthorized: ca !== undefined }, onResponse) : http.get(u, { agent: false, timeout: 2_000 }, onResponse);
    req.on('timeout', () => req.destroy(new Error('probe timeout')));
    req.on('error', reject);
  });
}
