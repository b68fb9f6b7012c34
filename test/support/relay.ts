// A fault-injecting TCP relay between a client (berth) and a target (an upstream), for what no real
// component can do here: cut or stall a connection mid-body, refuse it, add latency, limit bandwidth.
// No netem in this kernel, so this is done in user space. TLS passes through untouched.
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

/** What happens to one accepted connection. Byte counts are downstream (target -> client) bytes. */
export interface ConnectionFault {
  /** Destroy the client socket at once, without connecting to the target. */
  refuse?: boolean;
  /** Forward exactly this many bytes, then destroy both sockets (a connection reset mid-body). */
  cutAfterBytes?: number;
  /** Forward exactly this many bytes, then forward nothing more and close nothing (a hung link). */
  stallAfterBytes?: number;
  /** Invert the byte at this downstream offset (and every `corruptEvery` bytes after it): an upstream that lies. */
  corruptAtByte?: number;
  corruptEvery?: number;
}

/**
 * `connections[i]` applies to the i-th connection accepted after the plan was set; later connections
 * get `all` (or no fault). setPlan restarts the count.
 */
export interface RelayPlan {
  all?: ConnectionFault;
  connections?: ConnectionFault[];
}

export interface RelayOptions {
  target: { host: string; port: number };
  /** Added to every chunk in each direction (one-way delay; a round trip costs twice this). */
  latencyMs?: number;
  /** Downstream rate shared by all connections: one link, like a site's edge uplink. */
  rateBytesPerSec?: number;
  plan?: RelayPlan;
}

export interface Relay {
  port: number;
  /** `127.0.0.1:PORT` */
  host: string;
  /** `http://127.0.0.1:PORT` + path (use https:// yourself for a TLS target). */
  url(path?: string): string;
  /** Connections accepted so far (refused ones included). */
  readonly connections: number;
  /** Bytes forwarded target -> client so far. */
  readonly bytesDown: number;
  setPlan(plan: RelayPlan): void;
  setRate(rateBytesPerSec: number | undefined): void;
  close(): Promise<void>;
}

// Keep at most this much downstream data queued in the relay before pausing the target socket.
const HIGH_WATER = 256 * 1024;
// Rate-limited writes are cut into slices this big so that waits are short and connections interleave.
const SLICE = 16 * 1024;

export async function startRelay(opts: RelayOptions): Promise<Relay> {
  let plan: RelayPlan = opts.plan ?? {};
  let planStart = 0;
  let accepted = 0;
  let bytesDown = 0;
  const latency = opts.latencyMs ?? 0;
  const bucket = new RateLimiter(opts.rateBytesPerSec);
  const sockets = new Set<net.Socket>();

  const server = net.createServer((client) => {
    const fault = plan.connections?.[accepted - planStart] ?? plan.all ?? {};
    accepted++;
    track(client);
    if (fault.refuse === true) {
      client.destroy();
      return;
    }
    client.pause(); // hold client bytes until the target is connected
    const target = net.connect(opts.target.port, opts.target.host, () => client.resume());
    track(target);
    const bothDown = (): void => {
      client.destroy();
      target.destroy();
    };
    // An error on either side is abrupt: drop both. A clean end from the target is not: forward() still
    // owes the client the queued bytes and ends it afterwards. A client that goes away frees the target.
    client.on('error', bothDown).on('close', bothDown);
    target.on('error', bothDown);
    forward(client, target, { latency });
    forward(target, client, {
      latency,
      bucket,
      limit: fault.cutAfterBytes ?? fault.stallAfterBytes,
      onLimit: fault.cutAfterBytes !== undefined ? bothDown : () => undefined,
      count: (n) => (bytesDown += n),
      ...(fault.corruptAtByte !== undefined ? { corrupt: { at: fault.corruptAtByte, every: fault.corruptEvery ?? Infinity } } : {}),
    });
  });

  function track(s: net.Socket): void {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  }

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('relay: no TCP address');
  const port = address.port;

  return {
    port,
    host: `127.0.0.1:${port}`,
    url: (path = '') => `http://127.0.0.1:${port}${path}`,
    get connections() {
      return accepted;
    },
    get bytesDown() {
      return bytesDown;
    },
    setPlan(p) {
      plan = p;
      planStart = accepted;
    },
    setRate(rate) {
      bucket.setRate(rate);
    },
    async close() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const s of sockets) s.destroy();
      await closed;
    },
  };
}

interface ForwardOptions {
  latency: number;
  bucket?: RateLimiter;
  /** Stop forwarding after this many bytes and call onLimit. */
  limit?: number;
  onLimit?: () => void;
  count?: (n: number) => void;
  /** Invert downstream bytes at offset `at`, `at + every`, … */
  corrupt?: { at: number; every: number };
}

/**
 * Copies src to dst through a queue, so latency and rate apply per chunk in order. Backpressure: when the
 * queue or dst is full, src is paused, so a slow link slows the sender instead of growing memory here.
 */
function forward(src: net.Socket, dst: net.Socket, o: ForwardOptions): void {
  const queue: { chunk: Buffer; due: number }[] = [];
  let queued = 0;
  let sent = 0;
  let pumping = false;
  let stopped = false; // limit reached: drop everything from now on, never resume src
  let ended = false;

  src.on('data', (chunk: Buffer) => {
    if (stopped) return;
    queue.push({ chunk, due: Date.now() + o.latency });
    queued += chunk.length;
    if (queued > HIGH_WATER) src.pause();
    void pump();
  });
  src.on('end', () => {
    ended = true;
    void pump();
  });

  async function pump(): Promise<void> {
    if (pumping) return;
    pumping = true;
    try {
      while (queue.length > 0 && !stopped && !dst.destroyed) {
        const head = queue[0]!;
        const wait = head.due - Date.now();
        if (wait > 0) await sleep(wait);
        let chunk = head.chunk;
        if (o.limit !== undefined && sent + chunk.length >= o.limit) {
          chunk = chunk.subarray(0, o.limit - sent);
          stopped = true;
        }
        if (o.corrupt) chunk = corrupted(chunk, sent, o.corrupt);
        for (let off = 0; off < chunk.length && !dst.destroyed; off += SLICE) {
          const slice = chunk.subarray(off, off + SLICE);
          if (o.bucket !== undefined) await o.bucket.take(slice.length);
          sent += slice.length;
          o.count?.(slice.length);
          if (!dst.write(slice)) await drained(dst);
        }
        queue.shift();
        queued -= head.chunk.length;
        if (!stopped && queued <= HIGH_WATER / 2 && src.isPaused()) src.resume();
      }
      if (stopped) {
        src.pause();
        queue.length = 0;
        // let the last bytes reach the client before a cut destroys the sockets
        if (dst.writableLength > 0 && !dst.destroyed) await drained(dst);
        o.onLimit?.();
      } else if (ended && queue.length === 0 && !dst.destroyed) {
        dst.end(); // half-close, like the real peer did
      }
    } finally {
      pumping = false;
    }
  }
}

/** A copy of `chunk` (which starts at stream offset `offset`) with the bytes at the corrupt offsets inverted. */
function corrupted(chunk: Buffer, offset: number, c: { at: number; every: number }): Buffer {
  let next = c.at;
  if (offset > next) next = Number.isFinite(c.every) ? c.at + Math.ceil((offset - c.at) / c.every) * c.every : Infinity;
  if (next >= offset + chunk.length) return chunk;
  const out = Buffer.from(chunk);
  for (; next < offset + chunk.length; next += c.every) out[next - offset] = out[next - offset]! ^ 0xff;
  return out;
}

function drained(s: net.Socket): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      s.off('drain', done);
      s.off('close', done);
      resolve();
    };
    s.once('drain', done);
    s.once('close', done);
  });
}

/**
 * GCRA (a token bucket expressed as a "theoretical arrival time"): take(n) waits until n more bytes fit
 * in the rate, allowing a burst of 1/20 s. Shared by every connection, in the order they ask.
 */
class RateLimiter {
  private tat = 0;
  constructor(private rate: number | undefined) {}
  setRate(rate: number | undefined): void {
    this.rate = rate;
    this.tat = 0;
  }
  async take(n: number): Promise<void> {
    if (this.rate === undefined || this.rate <= 0) return;
    const now = performance.now();
    this.tat = Math.max(this.tat, now) + (n / this.rate) * 1000;
    const wait = this.tat - now - 50;
    if (wait > 0) await sleep(wait);
  }
}

export interface CountingListener {
  readonly connections: number;
  close(): Promise<void>;
}

/**
 * Listens on 127.0.0.1:`port` (typically a stopped upstream's port), counts connections and closes them:
 * proves that nobody tried to contact that upstream.
 */
export async function startCountingListener(port: number): Promise<CountingListener> {
  let connections = 0;
  const server = net.createServer((s) => {
    connections++;
    s.destroy();
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', resolve);
  });
  return {
    get connections() {
      return connections;
    },
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
