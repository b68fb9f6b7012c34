// A stand-in origin registry for faults no real registry can be told to commit: wrong bytes, short or
// long bodies, lying Content-Length, hostile token realms and redirects, `Connection: close` after every
// response. Raw HTTP/1.1 over TCP, so a handler can write exactly the bytes it wants and cut the connection
// anywhere. Also a connection counter on any loopback address (127.0.0.2…), to prove that nobody was
// contacted there.
import { createHash } from 'node:crypto';
import net from 'node:net';

export interface OriginRequest {
  method: string;
  /** Request target as sent (path and query). */
  path: string;
  /** Lower-case header names. */
  headers: Record<string, string>;
}

/** One response being written. */
export interface Reply {
  socket: net.Socket;
  /** Status line and headers; `Connection: close` is added unless the origin keeps connections alive. */
  head(status: number, headers: Record<string, string | number>): void;
  /** Writes part of the body. */
  write(chunk: Buffer): Promise<void>;
  /** Writes the rest of the body and finishes the response (closing the connection unless keep-alive). */
  end(body?: Buffer | string): void;
  /** Drops the connection at once. */
  destroy(): void;
}

export type OriginHandler = (req: OriginRequest, reply: Reply) => void | Promise<void>;

export interface StandInOrigin {
  port: number;
  /** `127.0.0.1:PORT` */
  host: string;
  url: string;
  /** Every request received, in order. */
  readonly requests: OriginRequest[];
  /** Connections accepted so far. */
  readonly connections: number;
  close(): Promise<void>;
}

export interface StandInOriginOptions {
  /** Listen address (default 127.0.0.1). */
  bindHost?: string;
  /** Serve several requests per connection, as registries do (default false: `Connection: close`). */
  keepAlive?: boolean;
}

const REASONS: Record<number, string> = { 200: 'OK', 206: 'Partial Content', 307: 'Temporary Redirect', 401: 'Unauthorized', 404: 'Not Found', 416: 'Range Not Satisfiable' };

/** A whole response: head, body, end. Content-Length is the body's unless given. */
export function respond(reply: Reply, status: number, headers: Record<string, string | number>, body: Buffer | string = ''): void {
  const b = typeof body === 'string' ? Buffer.from(body) : body;
  reply.head(status, { 'Content-Length': b.length, ...headers });
  reply.end(b);
}

export function sha256Digest(b: Buffer): string {
  return `sha256:${createHash('sha256').update(b).digest('hex')}`;
}

export async function startStandInOrigin(handler: OriginHandler, o: StandInOriginOptions = {}): Promise<StandInOrigin> {
  const bindHost = o.bindHost ?? '127.0.0.1';
  const keepAlive = o.keepAlive === true;
  const requests: OriginRequest[] = [];
  const sockets = new Set<net.Socket>();
  let connections = 0;

  const server = net.createServer((socket) => {
    connections++;
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    let buf = Buffer.alloc(0);
    let busy = false;

    const next = (): void => {
      if (busy || socket.destroyed) return;
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) {
        if (buf.length > 64 * 1024) socket.destroy();
        return;
      }
      const headText = buf.subarray(0, end).toString('latin1');
      buf = buf.subarray(end + 4); // GET and HEAD only: no request bodies
      const [line = '', ...rest] = headText.split('\r\n');
      const [method = '', target = ''] = line.split(' ');
      const headers: Record<string, string> = {};
      for (const h of rest) {
        const i = h.indexOf(':');
        if (i > 0) headers[h.slice(0, i).trim().toLowerCase()] = h.slice(i + 1).trim();
      }
      const req = { method, path: target, headers };
      requests.push(req);
      busy = true;
      const reply: Reply = {
        socket,
        head(status, hs) {
          const lines = [`HTTP/1.1 ${status} ${REASONS[status] ?? 'Status'}`];
          for (const [k, v] of Object.entries(hs)) lines.push(`${k}: ${v}`);
          if (!keepAlive) lines.push('Connection: close');
          lines.push('', '');
          socket.write(lines.join('\r\n'));
        },
        write(chunk) {
          return new Promise((resolve) => {
            if (socket.write(chunk)) resolve();
            else socket.once('drain', () => resolve());
          });
        },
        end(body) {
          if (!keepAlive) {
            if (body === undefined) socket.end();
            else socket.end(body);
            return;
          }
          if (body !== undefined) socket.write(body);
          busy = false;
          setImmediate(next);
        },
        destroy() {
          socket.destroy();
        },
      };
      Promise.resolve(handler(req, reply)).catch(() => socket.destroy());
    };

    socket.on('data', (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      next();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, bindHost, resolve);
  });
  const port = (server.address() as net.AddressInfo).port;
  return {
    port,
    host: `${bindHost}:${port}`,
    url: `http://${bindHost}:${port}`,
    requests,
    get connections() {
      return connections;
    },
    async close() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const s of sockets) s.destroy();
      await closed;
    },
  };
}

export interface ConnectionCounter {
  host: string;
  port: number;
  /** `http://HOST:PORT` */
  url: string;
  readonly connections: number;
  close(): Promise<void>;
}

/** Listens on `bindHost` (any loopback address, e.g. 127.0.0.2), counts connections and drops them. */
export async function startConnectionCounter(bindHost: string, port = 0): Promise<ConnectionCounter> {
  let connections = 0;
  const server = net.createServer((s) => {
    connections++;
    s.destroy();
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, bindHost, resolve);
  });
  const bound = (server.address() as net.AddressInfo).port;
  return {
    host: bindHost,
    port: bound,
    url: `http://${bindHost}:${bound}`,
    get connections() {
      return connections;
    },
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
