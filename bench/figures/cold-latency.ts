// Cold small-object latency (issue #9 §4): what berth adds to the first request for each small thing a
// client asks for — HEAD of a manifest by tag, GET of a manifest by tag, GET of the config blob, the first
// Range of a layer — over what the upstream itself takes, on the same link (loopback, no relay: the figure
// is berth's own cost, not the link's). Every round uses a fresh berth (empty storage) and fresh
// repositories; the client keeps one connection open per system (opened with GET /v2/ first, as clients
// do), so the figure is berth's work and not TCP set-up. Twice: an open upstream, and one behind a token
// service (a Bearer gate in front of the same docker-registry) that berth and the direct client both have
// to ask for a token for each repository.
//
// Then one more round through a tap between berth and the upstream, which records every upstream request
// with its start, its response headers and its end, relative to the client's request: where the time goes.
import http from 'node:http';
import { buildImage, type Image, pushImage } from '../../test/support/images.ts';
import type { BenchContext } from '../context.ts';
import { median } from '../measure.ts';
import { num, type Row } from '../row.ts';
import { startBerthServer } from '../systems.ts';
import { startTap, startTokenGate, type TapEntry } from '../upstream-tap.ts';

const ACCEPT =
  'application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json';
const KINDS = ['HEAD manifest', 'GET manifest', 'GET config', 'first Range'] as const;
type Kind = (typeof KINDS)[number];

interface Timed {
  status: number;
  ms: number;
}

/**
 * One client connection (keep-alive, one socket) that authenticates as containerd's docker authorizer does:
 * the first 401 of a host names its realm; after that a new repository's token is fetched before its first
 * request (no 401 first), on a kept-alive connection to the realm.
 */
class Client {
  private readonly agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  private readonly tokens = new Map<string, string>();
  private realm: URL | undefined;
  private realmClient: Client | undefined;
  constructor(private readonly base: string) {}

  private async token(repository: string): Promise<string> {
    const realm = new URL(this.realm!);
    realm.searchParams.set('scope', `repository:${repository}:pull`);
    this.realmClient ??= new Client(realm.origin);
    const t = await this.realmClient.once('GET', realm.pathname + realm.search, {});
    const token = (JSON.parse(t.body.toString()) as { token: string }).token;
    this.tokens.set(repository, token);
    return token;
  }

  private once(method: string, path: string, headers: Record<string, string>): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: Buffer }> {
    const u = new URL(this.base);
    return new Promise((resolve, reject) => {
      const req = http.request({ host: u.hostname, port: u.port, method, path, headers, agent: this.agent }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
        res.on('error', reject);
      });
      req.on('error', reject);
      req.end();
    });
  }

  /** A request as a client makes it: on a 401 with a Bearer challenge, fetch a token for the repository and send it again. */
  async request(method: string, path: string, headers: Record<string, string> = {}, repository?: string): Promise<Timed> {
    const t0 = performance.now();
    let token = repository ? this.tokens.get(repository) : undefined;
    if (repository && !token && this.realm) token = await this.token(repository);
    let res = await this.once(method, path, token ? { ...headers, authorization: `Bearer ${token}` } : headers);
    const challenge = /^Bearer realm="([^"]+)"/.exec(String(res.headers['www-authenticate'] ?? ''));
    if (res.status === 401 && challenge) this.realm = new URL(challenge[1]!);
    if (res.status === 401 && challenge && repository) {
      res = await this.once(method, path, { ...headers, authorization: `Bearer ${await this.token(repository)}` });
    }
    return { status: res.status, ms: performance.now() - t0 };
  }

  close(): void {
    this.agent.destroy();
    this.realmClient?.close();
  }
}

interface RoundImages {
  /** HEAD by tag, then its config and first Range. */
  a: { repository: string; image: Image };
  /** GET by tag. */
  b: { repository: string; image: Image };
}

let serial = 0;
async function pushRound(ctx: BenchContext, dir: string): Promise<RoundImages> {
  const make = async (): Promise<{ repository: string; image: Image }> => {
    const repository = `cold/r${++serial}`;
    const image = await buildImage({ format: 'oci', layers: [{ files: { 'n.txt': `${repository} ${Math.random()}\n` } }, { randomBytes: 1 << 20, dir }] });
    await pushImage(ctx.bed.up, repository, '1', image);
    return { repository, image };
  };
  return { a: await make(), b: await make() };
}

/** The four cold requests of one round, in the order a pull makes them. */
async function coldRound(client: Client, imgs: RoundImages): Promise<Record<Kind, Timed>> {
  const { a, b } = imgs;
  const layer = a.image.layers.at(-1)!;
  await client.request('GET', '/v2/');
  return {
    'HEAD manifest': await client.request('HEAD', `/v2/${a.repository}/manifests/1`, { accept: ACCEPT }, a.repository),
    'GET manifest': await client.request('GET', `/v2/${b.repository}/manifests/1`, { accept: ACCEPT }, b.repository),
    'GET config': await client.request('GET', `/v2/${a.repository}/blobs/${a.image.config.digest}`, {}, a.repository),
    'first Range': await client.request('GET', `/v2/${a.repository}/blobs/${layer.digest}`, { range: 'bytes=0-1023' }, a.repository),
  };
}

/**
 * Medians over `rounds` rounds, berth and direct, alternating which goes first. berth runs for the whole
 * measurement, warmed by one unrecorded round: a running berth meets a new image with its code compiled and
 * its upstream connection pool filled, and every round's repositories and blobs are new, so each request
 * is a cache miss on an empty entry (fresh storage in effect; a fresh process per round would measure
 * process start-up, which no pull sees).
 */
async function measure(
  ctx: BenchContext,
  links: { berth: string; direct: string; tap?: { entries: TapEntry[] }; freshProcess?: boolean },
  rounds: number,
  dir: string,
): Promise<{ berth: Record<Kind, number[]>; direct: Record<Kind, number[]>; trace: string[] }> {
  const upstreamUrl = links.direct;
  const out = { berth: {} as Record<Kind, number[]>, direct: {} as Record<Kind, number[]>, trace: [] as string[] };
  for (const k of KINDS) {
    out.berth[k] = [];
    out.direct[k] = [];
  }
  let berth = await startBerthServer(links.berth);
  try {
    const run = async (who: 'berth' | 'direct', base: string, imgs: RoundImages, record: boolean) => {
      const c = new Client(base);
      try {
        const r = await coldRound(c, imgs);
        for (const k of KINDS) {
          if (r[k].status >= 300) throw new Error(`${who} ${k}: ${r[k].status}`);
          if (record) out[who][k].push(r[k].ms);
        }
      } finally {
        c.close();
      }
    };
    if (!links.freshProcess) await run('berth', berth.url, await pushRound(ctx, dir), false);
    await run('direct', upstreamUrl, await pushRound(ctx, dir), false);
    for (let i = 0; i < rounds; i++) {
      if (links.freshProcess && i > 0) {
        await berth.stop();
        berth = await startBerthServer(links.berth);
      }
      const forBerth = await pushRound(ctx, dir);
      const forDirect = await pushRound(ctx, dir);
      if (i % 2 === 0) {
        await run('berth', berth.url, forBerth, true);
        await run('direct', upstreamUrl, forDirect, true);
      } else {
        await run('direct', upstreamUrl, forDirect, true);
        await run('berth', berth.url, forBerth, true);
      }
    }
    if (links.tap) out.trace = await breakdown(ctx, berth.url, links.tap, dir);
  } finally {
    await berth.stop();
  }
  return out;
}

/** One more round, berth only, through `tap`: the upstream requests berth made for each client request, with times. */
async function breakdown(ctx: BenchContext, berthUrl: string, tap: { entries: TapEntry[] }, dir: string): Promise<string[]> {
  const imgs = await pushRound(ctx, dir);
  const c = new Client(berthUrl);
  const lines: string[] = [];
  try {
    await c.request('GET', '/v2/');
    const layer = imgs.a.image.layers.at(-1)!;
    const steps: Array<[Kind, () => Promise<Timed>]> = [
      ['HEAD manifest', () => c.request('HEAD', `/v2/${imgs.a.repository}/manifests/1`, { accept: ACCEPT })],
      ['GET manifest', () => c.request('GET', `/v2/${imgs.b.repository}/manifests/1`, { accept: ACCEPT })],
      ['GET config', () => c.request('GET', `/v2/${imgs.a.repository}/blobs/${imgs.a.image.config.digest}`)],
      ['first Range', () => c.request('GET', `/v2/${imgs.a.repository}/blobs/${layer.digest}`, { range: 'bytes=0-1023' })],
    ];
    for (const [kind, step] of steps) {
      const mark = tap.entries.length;
      const t0 = performance.now();
      const r = await step();
      const seen = tap.entries.slice(mark).filter((e) => e.start - t0 < r.ms);
      const last = Math.max(...seen.map((e) => (e.end ?? t0) - t0), 0);
      lines.push(`${kind}: ${num(r.ms)} ms at the client (${num(r.ms - last)} after the upstream's last byte); upstream: ${seen.map((e) => describe(e, t0)).join('; ') || 'none'}`);
    }
  } finally {
    c.close();
  }
  return lines;
}

function describe(e: TapEntry, t0: number): string {
  const at = (t: number | undefined) => (t === undefined ? '…' : num(t - t0));
  return `${e.newConnection ? '(new connection) ' : ''}${e.method} ${e.path.replace(/sha256:([0-9a-f]{8})[0-9a-f]+/, 'sha256:$1…').replace(/\?.*/, '?…')}${e.range ? ` [${e.range}]` : ''} ${e.status ?? '—'} ${at(e.start)}→${at(e.headers)}→${at(e.end)} ms`;
}

function rows(label: string, m: { berth: Record<Kind, number[]>; direct: Record<Kind, number[]> }, notes: string[]): Row[] {
  return KINDS.map((k, i) => {
    const b = median(m.berth[k]);
    const d = median(m.direct[k]);
    return {
      figure: 'coldsmall',
      label: `cold ${k}, ${label}: ms, median of ${m.berth[k].length} (berth − direct)`,
      cells: { berth: `${num(b)} (+${num(b - d)})`, direct: num(d) },
      target: '≤ direct + 20 ms',
      pass: b - d <= 20,
      ...(i === 0 && notes.length > 0 ? { notes } : {}),
    };
  });
}

/** One-way delay of the "link" scenarios: a 40 ms round trip, a registry in another region. */
const LINK_MS = 20;

export async function coldLatency(ctx: BenchContext): Promise<Row[]> {
  const dir = await ctx.scratch('cold-latency');
  const rounds = ctx.opts.quick ? 5 : 11;
  const up = ctx.bed.up.url;
  const out: Row[] = [];
  const scenario = async (label: string, target: string, latencyMs: number, freshProcess = false): Promise<void> => {
    // berth and the direct client each get their own tap: the same link, and berth's trace is its own.
    const forBerth = await startTap(target, latencyMs);
    const forDirect = await startTap(target, latencyMs);
    try {
      const m = await measure(ctx, { berth: forBerth.url, direct: forDirect.url, ...(freshProcess ? { freshProcess } : { tap: forBerth }) }, rounds, dir);
      for (const l of m.trace) ctx.log(`coldsmall ${label}: ${l}`);
      out.push(
        ...rows(
          label,
          m,
          m.trace.map((l) => `${label}, one more round, berth's upstream requests: ${l}`),
        ),
      );
    } finally {
      await forBerth.close();
      await forDirect.close();
    }
  };
  await scenario('loopback', up, 0);
  await scenario('loopback, a new berth process each round', up, 0, true);
  await scenario(`${2 * LINK_MS} ms RTT`, up, LINK_MS);
  const gate = await startTokenGate(up);
  try {
    await scenario(`${2 * LINK_MS} ms RTT, token upstream`, gate.url, LINK_MS);
    await scenario(`${2 * LINK_MS} ms RTT, token upstream, a new berth process each round`, gate.url, LINK_MS, true);
  } finally {
    await gate.close();
  }
  return out;
}
