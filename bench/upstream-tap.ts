// Two small reverse proxies in front of the bench upstream, on loopback:
// - a tap, which records every request passing through (method, path, Range, status, and when it started,
//   when its response headers came and when its body ended), to see what berth asks an upstream and when;
// - a token gate, which makes the docker-registry a token-auth registry as Docker Hub is: every /v2/ request
//   without its Bearer token gets a 401 naming a realm on the gate itself, and the realm hands out tokens.
// Both keep the Host header, so a realm the gate names is on whatever origin the client reached it by.
// The tap can also be a link with a round-trip time: each request and each response head is held back by
// the one-way delay, and the first request on a new connection by one round trip more (the TCP handshake
// a real link costs; TLS would cost one more), so a client that opens connections pays for them.
import http from 'node:http';
import type net from 'node:net';
import { guarded } from './cleanup.ts';

export interface TapEntry {
  method: string;
  /** The first request on its connection. */
  newConnection: boolean;
  path: string;
  range?: string;
  status?: number;
  /** performance.now() of this process: comparable with the client's own timestamps. */
  start: number;
  headers?: number;
  end?: number;
}

interface Proxy {
  url: string;
  close(): Promise<void>;
}

type Handler = (req: http.IncomingMessage, res: http.ServerResponse, forward: () => void) => void;

async function startProxy(
  name: string,
  targetUrl: string,
  handle: Handler,
  onForward?: (req: http.IncomingMessage, res: http.ServerResponse, newConnection: boolean) => void,
  latencyMs = 0,
): Promise<Proxy> {
  const target = new URL(targetUrl);
  const seen = new WeakSet<net.Socket>();
  const later = (ms: number, f: () => void): void => {
    if (ms > 0) setTimeout(f, ms);
    else f();
  };
  const agent = new http.Agent({ keepAlive: true });
  const sockets = new Set<net.Socket>();
  const server = http.createServer((req, res) => {
    const newConnection = !seen.has(req.socket);
    seen.add(req.socket);
    const forward = (): void => {
      onForward?.(req, res, newConnection);
      const up = http.request({ host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers, agent }, (ur) => {
        later(latencyMs, () => {
          res.writeHead(ur.statusCode ?? 502, ur.headers);
          ur.pipe(res);
        });
      });
      up.on('error', () => res.destroy());
      req.pipe(up);
    };
    later(latencyMs * (newConnection ? 3 : 1), () => handle(req, res, forward));
  });
  server.keepAliveTimeout = 60_000;
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  const handleStop = guarded(name, {
    stop: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        agent.destroy();
        server.close(() => resolve());
      }),
  });
  return { url: `http://127.0.0.1:${port}`, close: () => handleStop.stop() };
}

export async function startTap(targetUrl: string, latencyMs = 0): Promise<Proxy & { entries: TapEntry[] }> {
  const entries: TapEntry[] = [];
  const proxy = await startProxy(
    'tap',
    targetUrl,
    (_req, _res, forward) => forward(),
    (req, res, newConnection) => {
      const e: TapEntry = { method: req.method ?? '', newConnection, path: req.url ?? '', start: performance.now() };
      if (req.headers.range) e.range = String(req.headers.range);
      entries.push(e);
      const writeHead = res.writeHead.bind(res) as (...a: unknown[]) => http.ServerResponse;
      res.writeHead = ((...a: unknown[]) => {
        e.headers = performance.now();
        e.status = a[0] as number;
        return writeHead(...a);
      }) as typeof res.writeHead;
      res.on('finish', () => (e.end = performance.now()));
      res.on('close', () => (e.end ??= performance.now()));
    },
    latencyMs,
  );
  return { ...proxy, entries };
}

const TOKEN = 'bench-token';

export async function startTokenGate(targetUrl: string): Promise<Proxy> {
  return startProxy('token gate', targetUrl, (req, res, forward) => {
    const path = req.url ?? '';
    if (path.startsWith('/token')) {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ token: TOKEN, expires_in: 300 }));
      return;
    }
    if (path.startsWith('/v2') && req.headers.authorization !== `Bearer ${TOKEN}`) {
      const body = '{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}';
      res.writeHead(401, { 'content-type': 'application/json', 'content-length': body.length, 'www-authenticate': `Bearer realm="http://${req.headers.host}/token",service="bench-gate"` });
      res.end(req.method === 'HEAD' ? undefined : body);
      // The request body (none for GET/HEAD) is drained so the connection stays usable.
      req.resume();
      return;
    }
    forward();
  });
}
