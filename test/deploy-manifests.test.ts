// deploy/kubernetes (issue #13): every kustomization renders with `kubectl kustomize` (offline), every
// object is valid against the Kubernetes schemas (kubernetes-models: types and unknown fields), and what
// the manifests promise holds: berth's own config schema accepts the ConfigMap's berth.yaml, the probes
// answer on a berth started with that configuration, the pods run without root (berth), capabilities,
// privilege escalation or a writable root filesystem, and the network policies say what the README says.
import assert from 'node:assert/strict';
import { readdir, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { parse as parseYaml } from 'yaml';
import { ConfigError, loadConfig } from '../src/config/load.ts';
import { type InProcessBerth, startBerth } from './support/berth.ts';
import { request } from './support/http.ts';
import { type K8sObject, kustomize, manifestValidator } from './support/k8s-manifests.ts';
import { freePort } from './support/ports.ts';
import { DEAD_ENDPOINT } from './support/safety.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';

const KUBE = path.resolve(import.meta.dirname, '../deploy/kubernetes');
const KUSTOMIZATIONS = ['base', 'node-agent', 'overlays/isolated', 'overlays/proxy', 'overlays/replicated'];
const IMAGE = 'berth:0.1.0';

const find = (objs: K8sObject[], kind: string, name?: string) => {
  const o = objs.find((x) => x.kind === kind && (name === undefined || x.metadata.name === name));
  assert.ok(o, `no ${kind}${name ? `/${name}` : ''} in ${objs.map((x) => `${x.kind}/${x.metadata.name}`).join(', ')}`);
  return o;
};
const container = (o: K8sObject) => o.spec.template.spec.containers[0];
/** The port of `listen` (":5000", "0.0.0.0:5000"). */
const listenPort = (listen: string) => Number(listen.slice(listen.lastIndexOf(':') + 1));

/** Every directory under deploy/kubernetes with a kustomization.yaml, so a new one cannot go unchecked. */
async function kustomizationDirs(dir = KUBE, rel = ''): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    if (e.isDirectory()) out.push(...(await kustomizationDirs(path.join(dir, e.name), rel ? `${rel}/${e.name}` : e.name)));
    else if (e.name === 'kustomization.yaml') out.push(rel);
  }
  return out.sort();
}

const POD_IP = '10.42.0.7';
const CLUSTER_SECRET = 'a3f1c9e07b5d42e8a3f1c9e07b5d42e8';

/** What the Secrets the manifests name hold, here: `secret-name/key` → value. */
const SECRETS: Record<string, string> = {
  'berth-cluster/BERTH_CLUSTER_SECRET': CLUSTER_SECRET,
  'berth-s3/AWS_ACCESS_KEY_ID': 'AKIAEXAMPLE',
  'berth-s3/AWS_SECRET_ACCESS_KEY': 'example-s3-secret',
  'berth-postgres/PGPASSWORD': 'example-pg-password',
};

interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: { fieldRef?: { fieldPath: string }; secretKeyRef?: { name: string; key: string } };
}

/**
 * The environment Kubernetes gives a container: a `value`'s `$(NAME)` is replaced by an earlier entry's value
 * (`$$` is a `$`; a name not defined before stays as written), status.podIP is the pod's IP, a secretKeyRef
 * its Secret's key.
 */
function podEnv(c: { env?: EnvVar[] }, podIP = POD_IP, secrets = SECRETS): Record<string, string> {
  const env: Record<string, string> = {};
  for (const e of c.env ?? []) {
    if (e.value !== undefined) env[e.name] = e.value.replace(/\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (m, n?: string) => (n === undefined ? '$' : (env[n] ?? m)));
    else if (e.valueFrom?.fieldRef) {
      assert.equal(e.valueFrom.fieldRef.fieldPath, 'status.podIP', `${e.name}: only the pod IP is known here`);
      env[e.name] = podIP;
    } else if (e.valueFrom?.secretKeyRef) {
      const { name, key } = e.valueFrom.secretKeyRef;
      const v = secrets[`${name}/${key}`];
      assert.ok(v !== undefined, `${e.name}: no Secret ${name} with key ${key} here`);
      env[e.name] = v;
    } else assert.fail(`${e.name}: neither a value nor a known valueFrom`);
  }
  return env;
}

describe('deploy/kubernetes', () => {
  const rendered = new Map<string, K8sObject[]>();
  const validateObjects = manifestValidator();
  let work: string;

  before(async () => {
    work = await makeTempDir('manifests');
    for (const k of KUSTOMIZATIONS) rendered.set(k, await kustomize(path.join(KUBE, k)));
  });
  after(async () => {
    await removeTempDir(work);
  });

  test('every kustomization is in the list and renders; every object is valid against the Kubernetes schemas', async () => {
    assert.deepEqual(await kustomizationDirs(), [...KUSTOMIZATIONS].sort());
    for (const [k, objs] of rendered) {
      assert.ok(objs.length > 0, k);
      for (const o of objs) if (o.kind !== 'Namespace') assert.equal(o.metadata.namespace, 'berth', `${k}: ${o.kind}/${o.metadata.name}`);
    }
    // One type-check program for all of them (a few seconds each otherwise).
    assert.deepEqual(validateObjects([...rendered.values()].flat()), []);
  });

  test('the validator catches a typo at any depth and a wrong type (it is not a rubber stamp)', () => {
    const base = find(rendered.get('base')!, 'Deployment');
    const typo = structuredClone(base);
    container(typo).securityContext.readOnlyRootFileSystem = true; // the real field is readOnlyRootFilesystem
    delete container(typo).securityContext.readOnlyRootFilesystem;
    const podTypo = structuredClone(base);
    podTypo.spec.template.spec.securityContex = {};
    const wrongType = structuredClone(base);
    wrongType.spec.replicas = '1';
    const service = structuredClone(find(rendered.get('base')!, 'Service'));
    service.spec.ports[0].prot = 5000;
    const problems = validateObjects([typo, podTypo, wrongType, service]).join('\n');
    assert.match(problems, /Deployment\/berth: .*'"?readOnlyRootFileSystem"?' does not exist in type 'ISecurityContext'/);
    assert.match(problems, /Deployment\/berth: .*'"?securityContex"?' does not exist in type 'IPodSpec'/);
    assert.match(problems, /Deployment\/berth: data\/spec\/replicas must be integer/);
    assert.match(problems, /Service\/berth: .*'"?prot"?' does not exist/);
    assert.deepEqual(validateObjects([base]), [], 'the unchanged Deployment is valid');
  });

  test("each ConfigMap's berth.yaml loads with berth's own configuration loader and the Deployment's environment, storage on the volume", async () => {
    for (const [k, objs] of rendered) {
      if (k === 'node-agent') continue;
      const cm = find(objs, 'ConfigMap', 'berth-config');
      const file = path.join(work, `${k.replace('/', '-')}.yaml`);
      await writeFile(file, cm.data!['berth.yaml']!);
      const deployment = find(objs, 'Deployment', 'berth');
      const config = loadConfig({ config: file }, podEnv(container(deployment)));
      const storage = container(deployment).volumeMounts.find((m: { name: string }) => m.name === 'storage');
      assert.equal(config.storage.path, storage.mountPath, k);
      assert.equal(config.offline, k === 'overlays/isolated', `${k}: offline`);
      assert.ok(config.admin.listen, `${k}: the probes need the admin listener`);
      assert.deepEqual(
        container(deployment).ports.map((p: { containerPort: number }) => p.containerPort),
        [listenPort(config.listen), listenPort(config.admin.listen!)],
        k,
      );
      const env = container(deployment).env.find((e: { name: string }) => e.name === 'BERTH_CONFIG');
      const mount = container(deployment).volumeMounts.find((m: { name: string }) => m.name === 'config');
      assert.equal(env.value, `${mount.mountPath}/berth.yaml`, k);
    }
  });

  test('berth: one replica, Recreate, non-root 10001, read-only root, no capabilities, RuntimeDefault seccomp, resources, /tmp', () => {
    for (const k of ['base', 'overlays/isolated', 'overlays/proxy']) {
      const d = find(rendered.get(k)!, 'Deployment', 'berth');
      assert.equal(d.spec.replicas, 1);
      assert.equal(d.spec.strategy.type, 'Recreate');
      const pod = d.spec.template.spec;
      assert.equal(pod.securityContext.runAsNonRoot, true);
      assert.equal(pod.securityContext.runAsUser, 10001);
      assert.equal(pod.securityContext.fsGroup, 10001);
      assert.equal(pod.securityContext.seccompProfile.type, 'RuntimeDefault');
      assert.equal(pod.automountServiceAccountToken, false);
      const c = container(d);
      assert.equal(c.image, IMAGE);
      // The image's own command: `berth serve --config /etc/berth/berth.yaml`, where the ConfigMap is mounted.
      assert.equal(c.command, undefined);
      assert.equal(c.args, undefined);
      assert.equal(c.volumeMounts.find((m: { name: string }) => m.name === 'config').mountPath, '/etc/berth');
      assert.equal(c.securityContext.readOnlyRootFilesystem, true);
      assert.equal(c.securityContext.allowPrivilegeEscalation, false);
      assert.deepEqual(c.securityContext.capabilities, { drop: ['ALL'] });
      assert.ok(c.resources.requests.cpu && c.resources.requests.memory && c.resources.limits.memory);
      const tmp = c.volumeMounts.find((m: { mountPath: string }) => m.mountPath === '/tmp');
      assert.ok(pod.volumes.find((v: { name: string }) => v.name === tmp?.name)?.emptyDir, 'no writable emptyDir on /tmp');
      const claim = pod.volumes.find((v: { name: string }) => v.name === 'storage').persistentVolumeClaim.claimName;
      assert.deepEqual(find(rendered.get(k)!, 'PersistentVolumeClaim', claim).spec.accessModes, ['ReadWriteOnce']);
      // The Service and the budget select berth's pods, by their labels.
      const labels = d.spec.template.metadata.labels as Record<string, string>;
      for (const sel of [find(rendered.get(k)!, 'Service', 'berth').spec.selector, find(rendered.get(k)!, 'PodDisruptionBudget').spec.selector.matchLabels]) {
        for (const [key, v] of Object.entries(sel as Record<string, string>)) assert.equal(labels[key], v, `${k}: selector ${key}`);
      }
      const svcPorts = find(rendered.get(k)!, 'Service', 'berth').spec.ports.map((p: { targetPort: string }) => p.targetPort);
      assert.deepEqual(svcPorts, ['registry', 'admin']);
    }
  });

  test('the node agent: berth hosts --watch into the hostPath it mounts, root without capabilities, every node; --no-fallback only when isolated', () => {
    for (const k of ['node-agent', 'overlays/isolated']) {
      const ds = find(rendered.get(k)!, 'DaemonSet', 'berth-node-agent');
      const pod = ds.spec.template.spec;
      const c = container(ds);
      assert.equal(c.image, IMAGE);
      // The image's entrypoint is berth itself; its default arguments (serve) are replaced.
      assert.equal(c.command, undefined);
      assert.deepEqual(c.args.slice(0, 2), ['hosts', '--watch']);
      const out = c.args[c.args.indexOf('--out') + 1];
      const mount = c.volumeMounts.find((m: { mountPath: string }) => m.mountPath === out);
      assert.ok(mount, `--out ${out} is not a mount`);
      const hostPaths = pod.volumes.filter((v: { hostPath?: unknown }) => v.hostPath);
      assert.deepEqual(
        hostPaths.map((v: { name: string; hostPath: { path: string } }) => [v.name, v.hostPath.path]),
        [[mount.name, '/etc/containerd/certs.d']],
      );
      assert.equal(c.args[c.args.indexOf('--url') + 1], 'http://berth.berth.svc.cluster.local:5000');
      assert.ok(c.args.includes('--resolve'));
      assert.equal(c.args.includes('--no-fallback'), k === 'overlays/isolated', `${k}: --no-fallback`);
      assert.deepEqual(pod.tolerations, [{ operator: 'Exists' }]);
      assert.equal(c.securityContext.readOnlyRootFilesystem, true);
      assert.equal(c.securityContext.allowPrivilegeEscalation, false);
      assert.deepEqual(c.securityContext.capabilities, { drop: ['ALL'] });
      assert.equal(pod.securityContext.seccompProfile.type, 'RuntimeDefault');
      assert.equal(pod.volumes.find((v: { name: string }) => v.name === 'config').configMap.name, 'berth-config');
      assert.equal(c.env.find((e: { name: string }) => e.name === 'BERTH_CONFIG').value, '/etc/berth/berth.yaml');
    }
    // The agent's Service URL is the base's Service: name berth, namespace berth, port 5000.
    const svc = find(rendered.get('base')!, 'Service', 'berth');
    assert.ok(svc.spec.ports.some((p: { port: number }) => p.port === 5000));
  });

  test('network policies: registry port open, admin port to monitoring; egress DNS+443 (base), proxy only (proxy), none (isolated)', () => {
    const policy = (k: string) => find(rendered.get(k)!, 'NetworkPolicy', 'berth').spec;
    for (const k of ['base', 'overlays/isolated', 'overlays/proxy']) {
      const p = policy(k);
      assert.deepEqual(p.policyTypes, ['Ingress', 'Egress']);
      assert.deepEqual(p.ingress[0], { ports: [{ port: 5000, protocol: 'TCP' }] });
      assert.deepEqual(p.ingress[1].from, [{ namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'monitoring' } } }]);
    }
    const ports = (rule: { ports: Array<{ port: number }> }) => rule.ports.map((x) => x.port);
    assert.deepEqual(policy('base').egress.map(ports), [[53, 53], [443]]);
    assert.deepEqual(policy('overlays/isolated').egress, []);
    const proxy = policy('overlays/proxy').egress;
    assert.deepEqual(proxy.map(ports), [[53, 53], [3128]]);
    assert.deepEqual(proxy[1].to, [{ ipBlock: { cidr: '192.0.2.10/32' } }]);
    const env = container(find(rendered.get('overlays/proxy')!, 'Deployment')).env.map((e: { name: string }) => e.name);
    assert.deepEqual(env.sort(), ['BERTH_CONFIG', 'HTTPS_PROXY', 'HTTP_PROXY', 'NO_PROXY']);
  });

  test('overlays/replicated: 3 replicas across nodes, budget 2, headless peers, s3 + postgres, credentials from Secrets, the pod IP advertised', async () => {
    const objs = rendered.get('overlays/replicated')!;
    const d = find(objs, 'Deployment', 'berth');
    const pod = d.spec.template.spec;
    const labels = d.spec.template.metadata.labels as Record<string, string>;
    assert.equal(d.spec.replicas, 3);
    assert.deepEqual(d.spec.strategy, { type: 'RollingUpdate', rollingUpdate: { maxUnavailable: 1, maxSurge: 0 } });
    const anti = pod.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution;
    assert.equal(anti.length, 1);
    assert.equal(anti[0].topologyKey, 'kubernetes.io/hostname');
    assert.deepEqual(anti[0].labelSelector.matchLabels, labels, 'one berth per node');
    const pdb = find(objs, 'PodDisruptionBudget', 'berth').spec;
    assert.equal(pdb.minAvailable, 2);
    assert.equal(pdb.maxUnavailable, undefined);
    const peers = find(objs, 'Service', 'berth-peers').spec;
    assert.equal(peers.clusterIP, 'None');
    assert.deepEqual(peers.selector, labels);
    assert.deepEqual(
      peers.ports.map((p: { port: number; targetPort: string }) => [p.port, p.targetPort]),
      [[5000, 'registry']],
    );
    assert.deepEqual(find(objs, 'Service', 'berth').spec.selector, labels, 'clients still use the Service named berth');
    assert.equal(
      objs.find((o) => o.kind === 'PersistentVolumeClaim'),
      undefined,
      'no ReadWriteOnce claim: each replica has an emptyDir',
    );
    assert.ok(pod.volumes.find((v: { name: string }) => v.name === 'storage').emptyDir);
    // Credentials: the S3 client's and PostgreSQL's own variables from Secrets; the cluster secret from one too,
    // and the advertise URL from the pod's IP, all in berth's own environment (no init container, no template).
    const secretRef = (env: EnvVar[], name: string) => env.find((e) => e.name === name)?.valueFrom?.secretKeyRef;
    const c = container(d);
    assert.equal(c.image, IMAGE);
    assert.equal(pod.initContainers, undefined);
    assert.deepEqual(secretRef(c.env, 'AWS_ACCESS_KEY_ID'), { name: 'berth-s3', key: 'AWS_ACCESS_KEY_ID' });
    assert.deepEqual(secretRef(c.env, 'AWS_SECRET_ACCESS_KEY'), { name: 'berth-s3', key: 'AWS_SECRET_ACCESS_KEY' });
    assert.deepEqual(secretRef(c.env, 'PGPASSWORD'), { name: 'berth-postgres', key: 'PGPASSWORD' });
    assert.deepEqual(secretRef(c.env, 'BERTH_CLUSTER_SECRET'), { name: 'berth-cluster', key: 'BERTH_CLUSTER_SECRET' });
    const names = (c.env as EnvVar[]).map((e) => e.name);
    const at = (name: string) => names.indexOf(name);
    assert.deepEqual(c.env[at('POD_IP')], { name: 'POD_IP', valueFrom: { fieldRef: { fieldPath: 'status.podIP' } } });
    assert.deepEqual(c.env[at('BERTH_CLUSTER_ADVERTISE')], { name: 'BERTH_CLUSTER_ADVERTISE', value: 'http://$(POD_IP):5000' });
    assert.ok(at('POD_IP') < at('BERTH_CLUSTER_ADVERTISE'), 'Kubernetes expands $(POD_IP) only from an entry before it');
    assert.equal(new Set(names).size, names.length, `an entry twice: ${names.join(', ')}`);
    // The config volume is the ConfigMap again, as in the base, and nothing else is mounted for it.
    assert.deepEqual(
      pod.volumes.map((v: { name: string }) => v.name),
      ['storage', 'config', 'tmp'],
    );
    assert.deepEqual(
      pod.volumes.find((v: { name: string }) => v.name === 'config'),
      { name: 'config', configMap: { name: 'berth-config' } },
    );
    // The ConfigMap's berth.yaml as berth loads it in a pod: the cluster block from the environment.
    const file = path.join(work, 'replicated-pod.yaml');
    const text = find(objs, 'ConfigMap', 'berth-config').data!['berth.yaml']!;
    assert.doesNotMatch(text, /\$\(/, 'no template left in berth.yaml');
    await writeFile(file, text);
    const config = loadConfig({ config: file }, podEnv(c));
    assert.deepEqual(config.cluster, { advertise: `http://${POD_IP}:5000`, secret: CLUSTER_SECRET, leaseTimeout: 5000 });
    assert.equal(config.storage.driver, 's3');
    assert.ok(config.storage.s3?.endpoint && config.storage.s3.bucket);
    assert.equal(config.storage.s3?.accessKeyId, undefined, 'no S3 key in the file');
    assert.ok(config.storage.s3?.localCache?.path.startsWith(`${config.storage.path}/`), 'the local cache on the working volume (fill files are renamed into it)');
    assert.equal(config.index.driver, 'postgres');
    assert.doesNotMatch(config.index.postgres!.url, /:\/\/[^/@]*:[^/@]*@/, 'no password in the URL');
    // Without the Secret's variable the pod does not start as a lone replica: berth refuses, naming the setting.
    const noSecret = podEnv({ env: (c.env as EnvVar[]).filter((e) => e.name !== 'BERTH_CLUSTER_SECRET') });
    assert.throws(
      () => loadConfig({ config: file }, noSecret),
      (err: Error) => err instanceof ConfigError && /cluster\.secret/.test(err.message),
    );
    // Egress: the other replicas, S3 and PostgreSQL besides the base's DNS and HTTPS.
    const egress = find(objs, 'NetworkPolicy', 'berth').spec.egress as Array<{ to: Array<{ podSelector?: { matchLabels: object } }>; ports: Array<{ port: number }> }>;
    const peerRule = egress.find((r) => r.to.some((t) => t.podSelector && !('namespaceSelector' in t)));
    assert.deepEqual(peerRule?.to[0]?.podSelector?.matchLabels, labels);
    assert.deepEqual(
      peerRule?.ports.map((p) => p.port),
      [5000],
    );
    assert.ok(egress.some((r) => r.ports.some((p) => p.port === 5432)));
    assert.ok(egress.some((r) => r.ports.some((p) => p.port === 443)));
  });

  describe('the probes, against a berth started with the ConfigMap configuration', () => {
    let b: InProcessBerth;
    let adminPort: number;
    let raw: Record<string, unknown>;

    before(async () => {
      raw = parseYaml(find(rendered.get('base')!, 'ConfigMap', 'berth-config').data!['berth.yaml']!) as Record<string, unknown>;
      adminPort = await freePort();
      const { upstreams: _u, listen: _l, storage, admin, ...rest } = raw as { storage: { maxSize: string }; admin: object } & Record<string, unknown>;
      // The manifest's settings, with loopback addresses and a dead loopback upstream (never asked here).
      b = await startBerth({
        ...rest,
        log: { level: 'silent' },
        maxSize: storage.maxSize,
        admin: { ...admin, listen: `127.0.0.1:${adminPort}` },
        upstreams: [{ host: 'docker.io', url: `http://${DEAD_ENDPOINT}` }],
      });
    });
    after(async () => {
      await b?.stop();
    });

    test('readiness, liveness and startup probes answer 200 on the port they name; not on the registry port', async () => {
      const d = find(rendered.get('base')!, 'Deployment', 'berth');
      const c = container(d);
      const portOf = (name: string) => c.ports.find((p: { name: string }) => p.name === name).containerPort as number;
      const local = new Map([
        [listenPort(raw.listen as string), b.port],
        [listenPort((raw.admin as { listen: string }).listen), adminPort],
      ]);
      const probes = ['readinessProbe', 'livenessProbe', 'startupProbe'].map((p) => [p, c[p].httpGet] as const);
      assert.deepEqual(
        probes.map(([, g]) => g.path),
        ['/readyz', '/livez', '/livez'],
      );
      for (const [name, get] of probes) {
        const port = local.get(portOf(get.port));
        assert.ok(port, `${name} names port ${get.port}, which is no berth listener`);
        const r = await request(`http://127.0.0.1:${port}`, get.path);
        assert.equal(r.status, 200, `${name}: GET ${get.path} on ${get.port}: ${r.status} ${r.body}`);
      }
      const ready = JSON.parse((await request(`http://127.0.0.1:${adminPort}`, '/readyz')).body.toString()) as { checks: Record<string, string> };
      assert.deepEqual(ready.checks, { index: 'ok', storage: 'ok' });
      // With admin.listen set, readiness is not on the registry port: a probe there would fail.
      assert.equal((await request(b.url, '/readyz')).status, 404);
      assert.ok((await stat(b.storage)).isDirectory());
    });
  });
});
