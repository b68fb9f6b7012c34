import type { Dispatcher } from 'undici';
import { RegistryError } from '../oci/errors.ts';
import { IntegrityError } from '../oci/integrity.ts';

export type UpstreamBody = Dispatcher.ResponseData['body'];

/** How long reading an error, token or tag-list body may take: a body trickled under timeouts.idle must not hold a request (and its fill) for hours. */
export const SMALL_BODY_DEADLINE_MS = 5000;

/**
 * Up to `max` bytes of `body`, read within `deadlineMs`; past either the connection is dropped and what was
 * read is returned, with `over` set when the body was longer than `max`.
 */
async function readSome(body: UpstreamBody, max: number, deadlineMs: number): Promise<{ bytes: Buffer; over: boolean }> {
  const chunks: Buffer[] = [];
  let n = 0;
  let late = false;
  const timer = setTimeout(() => {
    late = true;
    discard(body);
  }, deadlineMs);
  timer.unref();
  try {
    for await (const c of body) {
      const room = max - n;
      if ((c as Buffer).length > room) {
        chunks.push((c as Buffer).subarray(0, room));
        discard(body);
        return { bytes: Buffer.concat(chunks), over: true };
      }
      chunks.push(c as Buffer);
      n += (c as Buffer).length;
    }
  } catch (err) {
    if (!late) throw err;
  } finally {
    clearTimeout(timer);
  }
  return { bytes: Buffer.concat(chunks), over: false };
}

/**
 * At most `max` bytes of an upstream body, the rest dropped with the connection (`undefined` when it was
 * longer). Error, token and tag-list bodies are whatever the upstream (or the realm it named) sends:
 * read whole, one answer of a few hundred MB took that much memory. Reading stops after
 * SMALL_BODY_DEADLINE_MS (the connection dropped) and goes on with what arrived.
 */
export async function readBounded(body: UpstreamBody, max: number, deadlineMs = SMALL_BODY_DEADLINE_MS): Promise<Buffer | undefined> {
  const { bytes, over } = await readSome(body, max, deadlineMs);
  return over ? undefined : bytes;
}

export async function readErrorText(body: UpstreamBody): Promise<string> {
  try {
    // Only the start is shown: the rest (past 4 KiB or the deadline) is dropped with the connection.
    const chunks = [(await readSome(body, 4096, SMALL_BODY_DEADLINE_MS)).bytes];
    const text = Buffer.concat(chunks).toString('utf8').slice(0, 300).trim();
    if (!text) return '';
    try {
      const j = JSON.parse(text) as { errors?: Array<{ message?: string }> };
      const m = j.errors?.[0]?.message;
      if (m) return `: ${m}`;
    } catch {
      // not JSON: use the text itself
    }
    return `: ${text.replace(/\s+/g, ' ').slice(0, 200)}`;
  } catch {
    return '';
  }
}

/**
 * Drops a body berth will not read (its connection closes). undici's body, destroyed before its end,
 * emits 'error' (RequestAbortedError); with no listener that 'error' ends the process, so one bad answer
 * from an upstream (a 206 without a Content-Range, a manifest declared too big) took berth down.
 */
export function discard(body: UpstreamBody): void {
  body.on('error', () => {});
  body.destroy();
}

/**
 * `body`, with a failure while reading it (the connection reset, the body timeout) turned into an
 * UNAVAILABLE naming the upstream (transport.ts brokenOff). The caller's own cancellation (`signal`)
 * passes through as it is.
 */
export async function* namedFailures(body: AsyncIterable<Buffer>, fail: (err: unknown) => Error, signal?: AbortSignal): AsyncGenerator<Buffer> {
  try {
    yield* body;
  } catch (err) {
    if (signal?.aborted || err instanceof RegistryError || err instanceof IntegrityError) throw err;
    throw fail(err);
  }
}
