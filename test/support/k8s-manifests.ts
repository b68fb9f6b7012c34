// Kubernetes manifests checked offline (issue #13): rendered by `kubectl kustomize` (no cluster), then
// every object validated twice against the Kubernetes API schemas as the kubernetes-models package
// ships them: its validate() (the OpenAPI schemas compiled with ajv: types, formats, required fields),
// and a TypeScript type check of the object as a literal of the package's interface, whose excess
// property check catches what validate() lets through, an unknown (typo'd) field at any depth.
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { DaemonSet, Deployment } from 'kubernetes-models/apps/v1';
import { NetworkPolicy } from 'kubernetes-models/networking.k8s.io/v1';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1';
import { ConfigMap, Namespace, PersistentVolumeClaim, Service } from 'kubernetes-models/v1';
import ts from 'typescript';
import { parseAllDocuments } from 'yaml';

const ROOT = path.resolve(import.meta.dirname, '../..');

export interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string> };
  // biome-ignore lint/suspicious/noExplicitAny: the tests walk whatever the manifests hold
  spec?: any;
  data?: Record<string, string>;
}

/** `kubectl kustomize DIR`: the objects, in order. Throws with kubectl's message. */
export async function kustomize(dir: string): Promise<K8sObject[]> {
  const { stdout } = await promisify(execFile)('kubectl', ['kustomize', dir], { maxBuffer: 16 << 20 }).catch((err: Error & { stderr?: string }) => {
    throw new Error(`kubectl kustomize ${dir}: ${err.stderr ?? err.message}`);
  });
  return parseAllDocuments(stdout).map((d) => d.toJS() as K8sObject);
}

/** The kinds the manifests use: the model that validates each, and where its interface comes from. */
const KINDS: Record<string, { model: new (o: never) => { validate(): void }; from: string; iface: string }> = {
  'v1/Namespace': { model: Namespace, from: 'kubernetes-models/v1', iface: 'INamespace' },
  'v1/ConfigMap': { model: ConfigMap, from: 'kubernetes-models/v1', iface: 'IConfigMap' },
  'v1/PersistentVolumeClaim': { model: PersistentVolumeClaim, from: 'kubernetes-models/v1', iface: 'IPersistentVolumeClaim' },
  'v1/Service': { model: Service, from: 'kubernetes-models/v1', iface: 'IService' },
  'apps/v1/Deployment': { model: Deployment, from: 'kubernetes-models/apps/v1', iface: 'IDeployment' },
  'apps/v1/DaemonSet': { model: DaemonSet, from: 'kubernetes-models/apps/v1', iface: 'IDaemonSet' },
  'policy/v1/PodDisruptionBudget': { model: PodDisruptionBudget, from: 'kubernetes-models/policy/v1', iface: 'IPodDisruptionBudget' },
  'networking.k8s.io/v1/NetworkPolicy': { model: NetworkPolicy, from: 'kubernetes-models/networking.k8s.io/v1', iface: 'INetworkPolicy' },
};

const kindOf = (o: K8sObject) => `${o.apiVersion}/${o.kind}`;
const nameOf = (o: K8sObject) => `${o.kind}/${o.metadata?.name}`;

/**
 * A validator: problems with each object, as `Kind/name: message`, empty when every object is valid. It
 * keeps its last TypeScript program, so a second call reuses the parsed declaration files.
 */
export function manifestValidator(): (objects: readonly K8sObject[]) => string[] {
  let last: ts.Program | undefined;
  return (objects) => {
    const { problems, program } = validateObjects(objects, last);
    last = program;
    return problems;
  };
}

function validateObjects(objects: readonly K8sObject[], old: ts.Program | undefined): { problems: string[]; program: ts.Program } {
  const problems: string[] = [];
  for (const o of objects) {
    const k = KINDS[kindOf(o)];
    if (k === undefined) {
      problems.push(`${nameOf(o)}: ${kindOf(o)} is not a kind these tests know; add it to KINDS`);
      continue;
    }
    try {
      new k.model(o as never).validate();
    } catch (err) {
      problems.push(`${nameOf(o)}: ${(err as Error).message}`);
    }
  }
  const checked = typeCheck(
    objects.filter((o) => KINDS[kindOf(o)] !== undefined),
    old,
  );
  return { problems: [...problems, ...checked.problems], program: checked.program };
}

/**
 * Each object as `export const o<i>: I<Kind> = <JSON>;` in one in-memory TypeScript file, type-checked
 * with the repository's node_modules: an unknown field is "Object literal may only specify known
 * properties", a wrong type "Type 'string' is not assignable to type 'number'".
 */
function typeCheck(objects: readonly K8sObject[], old: ts.Program | undefined): { problems: string[]; program: ts.Program } {
  const file = path.join(ROOT, 'test', '__manifests_check__.ts');
  const imports = new Map<string, Set<string>>();
  for (const o of objects) {
    const k = KINDS[kindOf(o)]!;
    imports.set(k.from, (imports.get(k.from) ?? new Set()).add(k.iface));
  }
  const header = [...imports].map(([from, names]) => `import type { ${[...names].join(', ')} } from '${from}';`);
  const body = objects.map((o, i) => `export const o${i}: ${KINDS[kindOf(o)]!.iface} = ${JSON.stringify(o)};`);
  const text = [...header, ...body].join('\n');
  const options: ts.CompilerOptions = {
    strict: true,
    noEmit: true,
    skipLibCheck: true,
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    types: [],
  };
  const host = ts.createCompilerHost(options);
  const { getSourceFile, fileExists, readFile } = host;
  host.getSourceFile = (f, lang, ...rest) => (f === file ? ts.createSourceFile(f, text, lang) : getSourceFile.call(host, f, lang, ...rest));
  host.fileExists = (f) => f === file || fileExists.call(host, f);
  host.readFile = (f) => (f === file ? text : readFile.call(host, f));
  const program = ts.createProgram([file], options, host, old);
  const source = program.getSourceFile(file)!;
  const problems = ts.getPreEmitDiagnostics(program, source).map((d) => {
    const line = d.start === undefined ? -1 : source.getLineAndCharacterOfPosition(d.start).line - header.length;
    const o = objects[line];
    const where = o ? nameOf(o) : 'manifest check';
    return `${where}: ${ts.flattenDiagnosticMessageText(d.messageText, ' ')}`;
  });
  return { problems, program };
}
