// A TCP relay that can hang: while stalled it still accepts connections and keeps every socket open, but
// passes no byte either way (a hung server, a black-holed link, a stuck proxy in front of PostgreSQL). What
// arrived meanwhile is held, in order, and goes on once it passes traffic again. Unlike relay.ts's
// per-connection plans, a stall applies to the connections already open (a pool's) as well as new ones.
import net from 'node:net';

export interface StallRelay {
  port: number;
  /** Stops passing bytes on every connection, open or new. */
  stall(): void;
  /** Passes bytes again (first what was held), on every connection. */
  pass(): void;
  readonly connections: number;
  close(): Promise<void>;
}

export async function startStallRelay(target: { host: string; port: number }): Promise<StallRelay> {
  let stalled = false;
  let connections = 0;
  const sockets = new Set<net.Socket>();
  const held = new Set<() => void>();
  // No pipe(): it resumes its source by itself (on 'drain'), which would let bytes through a stall.
  const forward = (from: net.Socket, to: net.Socket) => {
    const queue: Buffer[] = [];
    const flush = () => {
      for (const chunk of queue.splice(0)) to.write(chunk);
    };
    held.add(flush);
    from.on('data', (chunk: Buffer) => (stalled ? queue.push(chunk) : to.write(chunk)));
    from.on('close', () => {
      held.delete(flush);
      to.destroy();
    });
  };
  const track = (s: net.Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => s.destroy());
  };
  const server = net.createServer((client) => {
    connections++;
    const upstream = net.connect(target.port, target.host);
    track(client);
    track(upstream);
    forward(client, upstream);
    forward(upstream, client);
  });
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  return {
    port: (server.address() as net.AddressInfo).port,
    get connections() {
      return connections;
    },
    stall() {
      stalled = true;
    },
    pass() {
      stalled = false;
      for (const flush of held) flush();
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((ok) => server.close(() => ok()));
    },
  };
}
