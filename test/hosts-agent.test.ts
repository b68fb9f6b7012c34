// The node agent (`berth hosts --out DIR --watch`, issue #13): the real CLI as a child process, its
// configuration in a directory laid out as kubelet lays out a ConfigMap volume (`berth.yaml ->
// ..data/berth.yaml`, `..data -> ..<timestamp>`, updated by swapping `..data`), its output a certs.d
// directory with files of someone else's beside berth's. That containerd pulls through the hosts.toml
// files `berth hosts` writes is test/quota.test.ts's; here it is what the agent keeps, and what it leaves.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { lstat, mkdir, readFile, rename, rm, stat, symlink, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { stringify } from 'yaml';
import { describeRun, runBerth } from './support/berth-cli.ts';
import { waitUntil } from './support/links.ts';
import { type ManagedProcess, startProcess } from './support/process.ts';
import { DEAD_ENDPOINT } from './support/safety.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';

const ROOT = path.resolve(import.meta.dirname, '..');
// Upstream URLs the agent writes as fallbacks but never contacts: dead loopback ports.
const UP_A = `http://${DEAD_ENDPOINT}`;
const UP_B = 'http://127.0.0.1:10';
const BERTH_URL = 'http://127.0.0.1:5000';
const FOREIGN = 'server = "http://127.0.0.1:9"\n# the site wrote this one by hand\n';

/** A ConfigMap-style mount: each version in its own `..<n>` directory, `..data` swapped by rename. */
class ConfigMapDir {
  private version = 0;
  constructor(readonly dir: string) {}
  get file(): string {
    return path.join(this.dir, 'berth.yaml');
  }
  async publish(text: string): Promise<void> {
    const name = `..2026_12_02_${String(++this.version).padStart(4, '0')}`;
    await mkdir(path.join(this.dir, name), { recursive: true });
    await writeFile(path.join(this.dir, name, 'berth.yaml'), text);
    await symlink(name, path.join(this.dir, '..data_tmp'));
    await rename(path.join(this.dir, '..data_tmp'), path.join(this.dir, '..data'));
    if (!existsSync(this.file)) await symlink('..data/berth.yaml', this.file);
    if (this.version > 1) await rm(path.join(this.dir, `..2026_12_02_${String(this.version - 1).padStart(4, '0')}`), { recursive: true });
  }
}

function config(upstreams: Array<{ host: string; url: string }>): string {
  return stringify({ storage: { path: '/var/lib/berth' }, upstreams, log: { level: 'warn' } });
}

interface Agent {
  proc: ManagedProcess;
  log: () => Promise<string>;
}

function startAgent(work: string, name: string, configFile: string, out: string, extra: string[] = []): Agent {
  const logFile = path.join(work, `${name}.log`);
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('BERTH_')));
  const proc = startProcess(name, process.execPath, ['--import', 'tsx', path.join(ROOT, 'src/main.ts'), 'hosts', '--watch', '--out', out, '--url', BERTH_URL, '--config', configFile, ...extra], {
    cwd: ROOT,
    env,
    logFile,
  });
  return { proc, log: () => readFile(logFile, 'utf8').catch(() => '') };
}

const hostsFile = (out: string, host: string) => path.join(out, host, 'hosts.toml');
const read = (file: string) => readFile(file, 'utf8').catch(() => undefined);

describe('berth hosts --watch (the node agent)', () => {
  let work: string;
  let conf: ConfigMapDir;
  let out: string;
  let agent: Agent;

  before(async () => {
    work = await makeTempDir('hosts-agent');
    conf = new ConfigMapDir(path.join(work, 'etc-berth'));
    out = path.join(work, 'certs.d');
    await conf.publish(
      config([
        { host: 'docker.io', url: UP_A },
        { host: 'quay.io', url: UP_B },
        { host: 'gcr.io', url: UP_B },
        { host: 'ghcr.io', url: UP_B },
      ]),
    );
    // Someone else's files: one for a registry berth also serves, one for a registry berth does not know.
    for (const host of ['ghcr.io', 'registry.example.com']) {
      await mkdir(path.join(out, host), { recursive: true });
      await writeFile(hostsFile(out, host), FOREIGN);
    }
    agent = startAgent(work, 'agent', conf.file, out);
  });

  after(async () => {
    await agent?.proc.stop('SIGKILL');
    await removeTempDir(work);
  });

  test('writes a hosts.toml for every upstream at start and leaves a foreign one for a registry it serves alone', async () => {
    await waitUntil(
      'the agent to write docker.io, quay.io and gcr.io',
      async () => (await read(hostsFile(out, 'docker.io'))) && (await read(hostsFile(out, 'quay.io'))) && (await read(hostsFile(out, 'gcr.io'))),
      20_000,
    );
    const hub = (await read(hostsFile(out, 'docker.io')))!;
    assert.match(hub, /^# docker\.io through berth\. Written by `berth hosts`\./);
    assert.match(hub, new RegExp(`^server = "${UP_A}"$`, 'm'));
    assert.ok(hub.includes(`[host."${BERTH_URL}"]`), hub);
    assert.match((await read(hostsFile(out, 'quay.io')))!, new RegExp(`^server = "${UP_B}"$`, 'm'));
    assert.equal(await read(hostsFile(out, 'ghcr.io')), FOREIGN);
    assert.equal(await read(hostsFile(out, 'registry.example.com')), FOREIGN);
    await waitUntil('the log to say what was left alone', async () => /left alone \(not written by berth hosts\) ghcr\.io/.test(await agent.log()), 5_000);
    assert.ok(agent.proc.running, await agent.log());
  });

  test('a ConfigMap update (..data swapped): a changed upstream is rewritten, a removed one goes with its directory, an unchanged file is not touched', async () => {
    const hubBefore = await stat(hostsFile(out, 'docker.io'));
    await conf.publish(
      config([
        { host: 'docker.io', url: UP_A },
        { host: 'quay.io', url: UP_A },
        { host: 'registry.k8s.io', url: UP_B },
        { host: 'ghcr.io', url: UP_A },
      ]),
    );
    await waitUntil(
      'registry.k8s.io written, quay.io rewritten, gcr.io removed',
      async () => !existsSync(path.join(out, 'gcr.io')) && (await read(hostsFile(out, 'registry.k8s.io'))) && (await read(hostsFile(out, 'quay.io')))?.includes(`server = "${UP_A}"`),
      10_000,
    );
    assert.match((await read(hostsFile(out, 'registry.k8s.io')))!, new RegExp(`^server = "${UP_B}"$`, 'm'));
    assert.match((await read(hostsFile(out, 'quay.io')))!, /^# quay\.io through berth\. Written by `berth hosts`\./);
    const hubAfter = await stat(hostsFile(out, 'docker.io'));
    assert.equal(hubAfter.ino, hubBefore.ino, 'docker.io/hosts.toml was rewritten though nothing in it changed');
    assert.equal(hubAfter.mtimeMs, hubBefore.mtimeMs);
    assert.equal(await read(hostsFile(out, 'ghcr.io')), FOREIGN);
    assert.equal(await read(hostsFile(out, 'registry.example.com')), FOREIGN, 'a foreign file of an unknown registry was touched');
  });

  test('a bad configuration is logged, the last good files stay and the agent keeps running; the next good one is applied', async () => {
    const before = await read(hostsFile(out, 'registry.k8s.io'));
    await conf.publish('upstreams: [{host: "docker.io", url: "not a url"}]\n');
    await waitUntil('the agent to log the bad configuration', async () => /error: configuration not loaded .*upstreams\[0\]\.url/.test(await agent.log()), 10_000);
    await conf.publish('upstreams: [\n');
    await waitUntil('the agent to log the YAML error', async () => /error: configuration not loaded .*not valid YAML/.test(await agent.log()), 10_000);
    assert.ok(agent.proc.running, 'the agent exited on a bad configuration');
    assert.equal(await read(hostsFile(out, 'registry.k8s.io')), before);
    assert.ok(existsSync(hostsFile(out, 'docker.io')));

    await conf.publish(
      config([
        { host: 'docker.io', url: UP_A },
        { host: 'quay.io', url: UP_A },
      ]),
    );
    await waitUntil('registry.k8s.io gone', async () => !existsSync(path.join(out, 'registry.k8s.io')), 10_000);
    assert.ok(await read(hostsFile(out, 'quay.io')));
  });

  test('SIGHUP resyncs: a file of its own someone removed is written again', async () => {
    await unlink(hostsFile(out, 'quay.io'));
    process.kill(agent.proc.pid, 'SIGHUP');
    await waitUntil('quay.io/hosts.toml written again', () => read(hostsFile(out, 'quay.io')), 10_000);
    assert.ok(agent.proc.running);
  });

  test('SIGTERM (DaemonSet deleted): removes the files and directories it wrote, keeps the foreign ones, exits 0', async () => {
    process.kill(agent.proc.pid, 'SIGTERM');
    const code = await agent.proc.exited;
    assert.equal(code, 0, await agent.log());
    assert.ok(!existsSync(path.join(out, 'docker.io')), 'docker.io/ is still there');
    assert.ok(!existsSync(path.join(out, 'quay.io')), 'quay.io/ is still there');
    assert.equal(await read(hostsFile(out, 'ghcr.io')), FOREIGN);
    assert.equal(await read(hostsFile(out, 'registry.example.com')), FOREIGN);
    assert.match(await agent.log(), /SIGTERM: stopping, removed (docker\.io, quay\.io|quay\.io, docker\.io)/);
  });

  test('--keep-on-exit keeps the files on SIGTERM; --no-fallback makes berth the server; --resolve writes the address', async () => {
    const out2 = path.join(work, 'certs.d-isolated');
    const a = startAgent(work, 'agent-isolated', conf.file, out2, ['--keep-on-exit', '--no-fallback', '--resolve', '--url', 'http://localhost:5000']);
    try {
      const toml = await waitUntil('the isolated agent to write docker.io', () => read(hostsFile(out2, 'docker.io')), 20_000);
      // localhost resolves to a loopback address of either family; the name itself is not written.
      const server = /^server = "(http:\/\/(127\.0\.0\.1|\[::1\]):5000)"$/m.exec(toml)?.[1];
      assert.ok(server, toml);
      assert.ok(toml.includes(`[host."${server}"]`), toml);
      process.kill(a.proc.pid, 'SIGTERM');
      assert.equal(await a.proc.exited, 0, await a.log());
      assert.equal(await read(hostsFile(out2, 'docker.io')), toml);
      assert.ok(existsSync(hostsFile(out2, 'quay.io')));
    } finally {
      await a.proc.stop('SIGKILL');
    }
  });

  test('without --watch too, berth hosts --out leaves a foreign hosts.toml alone and says so', async () => {
    const out3 = path.join(work, 'certs.d-once');
    await mkdir(path.join(out3, 'quay.io'), { recursive: true });
    await writeFile(hostsFile(out3, 'quay.io'), FOREIGN);
    const args = ['hosts', '--url', BERTH_URL, '--out', out3, '--config', conf.file];
    const r = await runBerth(args);
    assert.equal(r.code, 0, describeRun(args, r));
    assert.match(r.stdout, /left quay\.io\/hosts\.toml alone: not written by berth hosts/, describeRun(args, r));
    assert.equal(await read(hostsFile(out3, 'quay.io')), FOREIGN);
    assert.match((await read(hostsFile(out3, 'docker.io')))!, /Written by `berth hosts`/);
  });

  test('a symlink planted in DIR (a registry directory or a hosts.toml pointing outside) is never written or removed through', async () => {
    const out4 = path.join(work, 'certs.d-symlinks');
    const outside = path.join(work, 'outside-dir');
    const outsideStale = path.join(work, 'outside-stale');
    const outsideFile = path.join(work, 'outside-file.toml');
    await mkdir(outside, { recursive: true });
    await mkdir(outsideStale, { recursive: true });
    await mkdir(path.join(out4, 'quay.io'), { recursive: true });
    // docker.io/ -> a directory outside DIR: the agent must not create outside/hosts.toml.
    await symlink(outside, path.join(out4, 'docker.io'));
    // quay.io/hosts.toml -> a berth-marked file outside DIR: neither rewritten nor replaced.
    const marked = '# quay.io through berth. Written by `berth hosts`.\nserver = "http://127.0.0.1:9"\n';
    await writeFile(outsideFile, marked);
    await symlink(outsideFile, hostsFile(out4, 'quay.io'));
    // stale.example/ -> outside DIR with a berth-marked hosts.toml: SIGTERM must not delete it.
    await writeFile(path.join(outsideStale, 'hosts.toml'), marked);
    await symlink(outsideStale, path.join(out4, 'stale.example'));
    const a = startAgent(work, 'agent-symlinks', conf.file, out4);
    try {
      await waitUntil('the agent to report its start', async () => /start: /.test(await a.log()), 20_000);
      assert.equal(await read(path.join(outside, 'hosts.toml')), undefined, `wrote through the docker.io symlink:\n${await a.log()}`);
      assert.equal(await read(path.join(outsideStale, 'hosts.toml')), marked, `removed a file outside DIR through a symlink:\n${await a.log()}`);
      process.kill(a.proc.pid, 'SIGTERM');
      assert.equal(await a.proc.exited, 0, await a.log());
      assert.equal(await read(path.join(outside, 'hosts.toml')), undefined, `wrote through the docker.io symlink:\n${await a.log()}`);
      assert.equal(await read(outsideFile), marked, 'rewrote the file a quay.io/hosts.toml symlink points at');
      assert.equal(await read(path.join(outsideStale, 'hosts.toml')), marked, `removed a file outside DIR through a symlink:\n${await a.log()}`);
      assert.ok((await lstat(hostsFile(out4, 'quay.io'))).isSymbolicLink(), 'the quay.io/hosts.toml symlink was replaced');
      assert.match(await a.log(), /left alone \(not written by berth hosts\) .*docker\.io/);
    } finally {
      await a.proc.stop('SIGKILL');
    }
  });

  test('a registry entry in DIR that is a file, or a hosts.toml that is a directory, is left alone, not an error that stops the sync', async () => {
    const out6 = path.join(work, 'certs.d-odd-entries');
    await mkdir(path.join(out6, 'quay.io', 'hosts.toml'), { recursive: true });
    await writeFile(path.join(out6, 'docker.io'), 'not a directory\n');
    const args = ['hosts', '--url', BERTH_URL, '--out', out6, '--config', conf.file];
    const r = await runBerth(args);
    assert.equal(r.code, 0, describeRun(args, r));
    assert.equal(await readFile(path.join(out6, 'docker.io'), 'utf8'), 'not a directory\n');
    assert.ok((await stat(hostsFile(out6, 'quay.io'))).isDirectory());
    assert.match(r.stdout, /left docker\.io\/hosts\.toml alone/, describeRun(args, r));
    assert.match(r.stdout, /left quay\.io\/hosts\.toml alone/, describeRun(args, r));
  });

  test('odd characters in an upstream URL or --url (a quote, a newline) give hosts.toml that parses as TOML with one host table: no TOML injection', async () => {
    const odd = path.join(work, 'odd.yaml');
    const injected = 'http://127.0.0.1:10/x"]\n[host."http://127.0.0.1:1"]\n  capabilities = ["pull"]\n#';
    await writeFile(
      odd,
      stringify({
        storage: { path: '/var/lib/berth' },
        log: { level: 'warn' },
        upstreams: [
          { host: 'quay.io', url: 'http://127.0.0.1:10/a"b' },
          { host: 'gcr.io', url: injected },
        ],
      }),
    );
    const out5 = path.join(work, 'certs.d-odd');
    const args = ['hosts', '--url', 'http://127.0.0.1:5000/p"q', '--out', out5, '--config', odd];
    const r = await runBerth(args);
    assert.equal(r.code, 0, describeRun(args, r));
    for (const host of ['quay.io', 'gcr.io']) {
      const text = (await read(hostsFile(out5, host)))!;
      // Python's tomllib: a real TOML parser, as strict as containerd's.
      const parsed = await new Promise<{ code: number | null; stdout: string; stderr: string }>((ok) => {
        const p = execFile('python3', ['-c', 'import json,sys,tomllib; print(json.dumps(tomllib.loads(sys.stdin.read())))'], (err, stdout, stderr) =>
          ok({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
        );
        p.stdin!.end(text);
      });
      assert.equal(parsed.code, 0, `${host}/hosts.toml is not TOML:\n${text}\n${parsed.stderr}`);
      const toml = JSON.parse(parsed.stdout) as { server: string; host: Record<string, unknown> };
      assert.deepEqual(Object.keys(toml.host), ['http://127.0.0.1:5000/p%22q'], text);
      assert.ok(!toml.server.includes('"') && !toml.server.includes('\n'), toml.server);
    }
  });

  test('an --interval past what a timer holds (2^31 ms) is refused, not run as a resync every millisecond', async () => {
    const logFile = path.join(work, 'huge-interval.log');
    const a = startProcess(
      'agent-huge-interval',
      process.execPath,
      ['--import', 'tsx', path.join(ROOT, 'src/main.ts'), 'hosts', '--watch', '--out', path.join(work, 'certs.d-huge'), '--url', BERTH_URL, '--config', conf.file, '--interval', '2147484'],
      {
        cwd: ROOT,
        logFile,
      },
    );
    try {
      await waitUntil('the agent to refuse the interval and exit', () => !a.running, 20_000);
      assert.equal(await a.exited, 1);
      assert.match(await readFile(logFile, 'utf8'), /--interval/);
    } finally {
      await a.stop('SIGKILL');
    }
  });

  test('--watch without --out is refused', async () => {
    const a = startProcess('agent-no-out', process.execPath, ['--import', 'tsx', path.join(ROOT, 'src/main.ts'), 'hosts', '--watch', '--config', conf.file], {
      cwd: ROOT,
      logFile: path.join(work, 'no-out.log'),
    });
    assert.equal(await a.exited, 1);
    assert.match(await readFile(path.join(work, 'no-out.log'), 'utf8'), /--watch keeps the files of --out DIR/);
  });
});
