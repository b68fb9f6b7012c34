// docker-registry's access log: Apache combined lines (gorilla/handlers) mixed into the same output as
// its logrus text lines. Only the combined lines are parsed; the rest is skipped.
import { readFileSync } from 'node:fs';

export interface AccessEntry {
  method: string;
  /** Request URI as sent, query included (`/v2/x/blobs/sha256:…?ns=docker.io`). */
  path: string;
  status: number;
  /** Body bytes the registry wrote (field 10): partial for a Range or a cut connection, 0 for HEAD. */
  bytes: number;
  /** `HTTP/1.1`, or `HTTP/2.0` for TLS clients that negotiate h2. */
  protocol: string;
  userAgent: string;
}

// 127.0.0.1 - user [26/Nov/2026:15:39:29 +0000] "GET /v2/ HTTP/1.1" 200 2 "referer" "user-agent"
// The user field is "-" or the htpasswd user name.
const COMBINED = /^\S+ \S+ \S+ \[[^\]]+\] "(\S+) (\S+) (HTTP\/[\d.]+)" (\d{3}) (\d+|-)(?: "[^"]*" "([^"]*)")?/;

export function parseAccessLine(line: string): AccessEntry | undefined {
  const m = COMBINED.exec(line);
  if (m === null) return undefined;
  return {
    method: m[1] ?? '',
    path: m[2] ?? '',
    protocol: m[3] ?? '',
    status: Number(m[4]),
    bytes: m[5] === '-' || m[5] === undefined ? 0 : Number(m[5]),
    userAgent: m[6] ?? '',
  };
}

/**
 * Complete lines of a log file. A last line without its newline is still being written and is left out,
 * so a line count taken as a mark never splits a line.
 */
export function completeLines(text: string): string[] {
  const lines = text.split('\n');
  lines.pop(); // "" after the final newline, or the partial line
  return lines;
}

export function readCompleteLines(file: string): string[] {
  return completeLines(readFileSync(file, 'utf8'));
}

export function accessEntries(lines: readonly string[]): AccessEntry[] {
  const out: AccessEntry[] = [];
  for (const line of lines) {
    const entry = parseAccessLine(line);
    if (entry !== undefined) out.push(entry);
  }
  return out;
}

/** Sum of body bytes sent for GETs of one blob digest (what an upstream really served for it). */
export function blobBytesServed(entries: readonly AccessEntry[], digest: string): number {
  return entries.filter((e) => e.method === 'GET' && e.path.split('?')[0]?.endsWith(`/blobs/${digest}`)).reduce((sum, e) => sum + e.bytes, 0);
}
