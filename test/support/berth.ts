// berth under test: in-process (fast, inspectable) or as a child process (for kill and restart tests).
// Always with loopback upstreams only: a test never starts berth on the public defaults.

import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import pino from 'pino';
import { stringify } from 'yaml';
import { type Config, type ConfigInput, ConfigSchema } from '../../src/config/schema.ts';
import { type Berth, createBerth, type OpenMode } from '../../src/server.ts';
import { freePort, waitForHttp } from './ports.ts';
import { type ManagedProcess, startProcess } from './process.ts';
import { isLoopback } from './safety.ts';
import { makeTempDir, removeTempDir } from './tmp.ts';

export interface UpstreamSpec {
  host: string;
  url: string;
  ca?: string;
  username?: string;
  password?: string;
  proxy?: string;
  bandwidth?: string | number;
  timeouts?: { connect?: string; header?: string; idle?: string };
}

export interface BerthOptions extends Omit<ConfigInput, 'upstreams' | 'listen' | 'storage'> {
  upstreams: UpstreamSpec[];
  /** Defaults to a fresh temp dir, removed on stop. */
  storage?: string;
  maxSize?: string;
}

export interface RunningBerth {
  url: string;
  /** `127.0.0.1:PORT`, for image references. */
  host: string;
  port: number;
  storage: string;
  logFile?: string;
  stop(): Promise<void>;
}

export interface InProcessBerth extends RunningBerth {
  berth: Berth;
  config: Readonly<Config>;
}

function assertLoopbackOnly(o: BerthOptions): void {
  for (const u of o.upstreams) {
    if (!isLoopback(u.url)) throw new Error(`test berth must use loopback upstreams only, got ${u.url}`);
  }
}

function rawConfig(o: BerthOptions, storage: string, listen: string): Record<string, unknown> {
  const { upstreams, storage: _s, maxSize, ...rest } = o;
  return {
    log: { level: process.env.BERTH_TEST_LOG ?? 'silent' },
    retries: { attempts: 5, backoff: '50ms' },
    ...rest,
    listen,
    storage: { path: storage, ...(maxSize ? { maxSize } : {}) },
    upstreams,
  };
}

/**
 * berth in this process, on an ephemeral port; `log` replaces the silent test logger (to assert on log lines);
 * `mode` is createBerth's (a test's own layer converter, say).
 */
export async function startBerth(o: BerthOptions, log?: pino.Logger, mode?: OpenMode): Promise<InProcessBerth> {
  assertLoopbackOnly(o);
  const ownStorage = o.storage === undefined;
  const storage = o.storage ?? (await makeTempDir('store'));
  const config = Object.freeze({ ...ConfigSchema.parse(rawConfig(o, storage, '127.0.0.1:0')), defaultUpstream: o.defaultUpstream ?? o.upstreams[0]!.host }) as Config;
  const berth = await createBerth(config, log ?? pino({ level: config.log.level }), mode);
  const addr = await berth.listen();
  return {
    berth,
    config,
    port: addr.port,
    host: `127.0.0.1:${addr.port}`,
    url: `http://127.0.0.1:${addr.port}`,
    storage,
    async stop() {
      await berth.close();
      if (ownStorage) await removeTempDir(storage);
    },
  };
}

/** GETs of `route` ('blob', 'manifest') that berth answered with 200, from its own request counter. */
export async function servedGets(b: InProcessBerth, route: string): Promise<number> {
  const metric = await b.berth.metrics.requests.get();
  return metric.values.filter((v) => v.labels.route === route && v.labels.method === 'GET' && v.labels.status === '200').reduce((n, v) => n + v.value, 0);
}

export interface ChildBerth extends RunningBerth {
  process: ManagedProcess;
  configFile: string;
  /** Starts a fresh process on the same port, storage and config (after a kill). */
  restart(): Promise<void>;
  kill(signal?: NodeJS.Signals): Promise<void>;
}

/** berth as its own process (`berth serve --config FILE`), for SIGKILL and restart tests. */
export async function startBerthProcess(o: BerthOptions, extraArgs: string[] = []): Promise<ChildBerth> {
  assertLoopbackOnly(o);
  const dir = await makeTempDir('berth-proc');
  const storage = o.storage ?? path.join(dir, 'storage');
  const port = await freePort();
  const configFile = path.join(dir, 'berth.yaml');
  await writeFile(configFile, stringify({ ...rawConfig(o, storage, `127.0.0.1:${port}`), log: { level: 'info' } }));
  const root = path.resolve(import.meta.dirname, '../..');
  const logFile = path.join(dir, 'berth.log');
  const spawnIt = async () => {
    const p = startProcess('berth', process.execPath, ['--import', 'tsx', path.join(root, 'src/main.ts'), 'serve', '--config', configFile, ...extraArgs], {
      logFile,
      cwd: root,
      env: { ...process.env, HTTP_PROXY: '', HTTPS_PROXY: '', http_proxy: '', https_proxy: '' },
    });
    await waitForHttp(`http://127.0.0.1:${port}/v2/`, { timeoutMs: 20_000 });
    return p;
  };
  const child: ChildBerth = {
    process: await spawnIt(),
    configFile,
    port,
    host: `127.0.0.1:${port}`,
    url: `http://127.0.0.1:${port}`,
    storage,
    logFile,
    async restart() {
      child.process = await spawnIt();
    },
    async kill(signal = 'SIGKILL') {
      await child.process.stop(signal);
    },
    async stop() {
      await child.process.stop();
      await removeTempDir(dir);
    },
  };
  return child;
}
