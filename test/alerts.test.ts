// deploy/prometheus/alerts.yaml and deploy/grafana/berth.json (issue #13): the rules pass `promtool check
// rules` and their unit tests (`promtool test rules`), the dashboard's queries are valid PromQL (checked by
// promtool as recording rules), and every metric name either of them uses is one a running berth exposes
// on /metrics, so a renamed metric cannot leave a dashboard panel or an alert silently empty.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { parse as parseYaml, stringify } from 'yaml';
import { type InProcessBerth, startBerth } from './support/berth.ts';
import { request } from './support/http.ts';
import { DEAD_ENDPOINT } from './support/safety.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';

const DEPLOY = path.resolve(import.meta.dirname, '../deploy');
const ALERTS = path.join(DEPLOY, 'prometheus/alerts.yaml');
const ALERT_TESTS = path.join(DEPLOY, 'prometheus/alerts.test.yaml');
const DASHBOARD = path.join(DEPLOY, 'grafana/berth.json');

interface Rule {
  alert?: string;
  record?: string;
  expr: string;
}

/** `promtool ARGS`: exit code and output; a missing promtool is a failure (Debian package prometheus). */
async function promtool(args: string[]): Promise<{ code: number; out: string }> {
  try {
    const { stdout, stderr } = await promisify(execFile)('promtool', args, { timeout: 60_000 });
    return { code: 0, out: stdout + stderr };
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { code?: number | string; stdout?: string; stderr?: string };
    if (e.code === 'ENOENT') throw new Error('promtool is not installed (Debian package prometheus; .ci/run installs it)');
    return { code: typeof e.code === 'number' ? e.code : -1, out: `${e.stdout ?? ''}${e.stderr ?? ''}` };
  }
}

const KEYWORDS = new Set(['and', 'or', 'unless', 'bool', 'offset', 'by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'inf', 'nan']);

/**
 * The metric names a PromQL expression selects: what is left once strings, label matchers, ranges,
 * grouping clauses and function calls are taken out. (Enough for the expressions here; not a parser.)
 */
function metricNames(expr: string): string[] {
  const stripped = expr
    .replace(/"(?:[^"\\]|\\.)*"/g, '""')
    .replace(/\{[^}]*\}/g, ' ')
    .replace(/\[[^\]]*\]/g, ' ')
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ')
    .replace(/\$\w+/g, ' ');
  const names = new Set<string>();
  for (const m of stripped.matchAll(/[a-zA-Z_:][a-zA-Z0-9_:]*(?=\s*(\(?))/g)) {
    if (m[1] === '(' || KEYWORDS.has(m[0].toLowerCase())) continue;
    names.add(m[0]);
  }
  return [...names];
}

/** Names of the series /metrics exposes: each `# TYPE`, with a histogram's _bucket, _sum and _count. */
function exposedNames(text: string): Set<string> {
  const names = new Set<string>();
  for (const m of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
    const [, name, type] = m as unknown as [string, string, string];
    if (type === 'histogram') for (const s of ['_bucket', '_sum', '_count']) names.add(name + s);
    else if (type === 'summary') for (const s of ['', '_sum', '_count']) names.add(name + s);
    else names.add(name);
  }
  return names;
}

interface Panel {
  title: string;
  type: string;
  targets?: Array<{ expr: string }>;
  panels?: Panel[];
}

/** Every query of the dashboard: each panel target (rows included) and each template variable's query. */
async function dashboardQueries(): Promise<Array<{ where: string; expr: string }>> {
  const d = JSON.parse(await readFile(DASHBOARD, 'utf8')) as { panels: Panel[]; templating: { list: Array<{ name: string; query: unknown }> } };
  const out: Array<{ where: string; expr: string }> = [];
  const walk = (ps: Panel[]) => {
    for (const p of ps) {
      for (const t of p.targets ?? []) out.push({ where: `panel "${p.title}"`, expr: t.expr });
      walk(p.panels ?? []);
    }
  };
  walk(d.panels);
  for (const v of d.templating.list) {
    const q = typeof v.query === 'string' ? v.query : (v.query as { query?: string } | undefined)?.query;
    const m = q ? /^label_values\(([a-zA-Z_:][a-zA-Z0-9_:]*)/.exec(q) : null;
    if (m) out.push({ where: `variable $${v.name}`, expr: m[1]! });
  }
  return out;
}

/** A Grafana query as Prometheus sees it: its variables replaced. */
const asPromQL = (expr: string) => expr.replaceAll('$__rate_interval', '5m').replaceAll('$instance', '.*');

async function alertRules(): Promise<Rule[]> {
  const doc = parseYaml(await readFile(ALERTS, 'utf8')) as { groups: Array<{ rules: Rule[] }> };
  return doc.groups.flatMap((g) => g.rules);
}

describe('prometheus alerts and the grafana dashboard', () => {
  let work: string;
  let b: InProcessBerth;
  let exposed: Set<string>;

  before(async () => {
    work = await makeTempDir('alerts');
    // A berth with a quota (so the quota gauge is there) and a dead loopback upstream: /metrics names
    // every metric (labelled ones by their HELP and TYPE lines) before anything was counted.
    b = await startBerth({ maxSize: '1GiB', upstreams: [{ host: 'docker.io', url: `http://${DEAD_ENDPOINT}` }] });
    const r = await request(b.url, '/metrics');
    assert.equal(r.status, 200);
    exposed = exposedNames(r.body.toString());
  });
  after(async () => {
    await b?.stop();
    await removeTempDir(work);
  });

  test('promtool check rules: alerts.yaml is valid, every rule counted; a broken expression is caught', async () => {
    const rules = await alertRules();
    const ok = await promtool(['check', 'rules', ALERTS]);
    assert.equal(ok.code, 0, ok.out);
    assert.match(ok.out, new RegExp(`SUCCESS: ${rules.length} rules found`));
    const broken = path.join(work, 'broken.yaml');
    await writeFile(broken, stringify({ groups: [{ name: 'b', rules: [{ alert: 'X', expr: 'sum by (upstream (berth_upstream_up)' }] }] }));
    const bad = await promtool(['check', 'rules', broken]);
    assert.notEqual(bad.code, 0, bad.out);
  });

  test('the alerts the issue names are there, and promtool test rules passes with at least two of them firing', async () => {
    const names = (await alertRules()).map((r) => r.alert);
    for (const a of ['BerthUpstreamDown', 'BerthUpstreamBreakerOpen', 'BerthDiskNearQuota', 'BerthFillFailures', 'BerthStaleTagsServed']) assert.ok(names.includes(a), `no alert ${a}`);
    const t = await promtool(['test', 'rules', ALERT_TESTS]);
    assert.equal(t.code, 0, t.out);
    assert.match(t.out, /SUCCESS/);
    const doc = parseYaml(await readFile(ALERT_TESTS, 'utf8')) as { tests: Array<{ alert_rule_test: Array<{ alertname: string; exp_alerts: unknown[] }> }> };
    const firing = new Set(doc.tests.flatMap((x) => x.alert_rule_test.filter((a) => a.exp_alerts.length > 0).map((a) => a.alertname)));
    assert.ok(firing.size >= 2, `unit tests expect only ${[...firing].join(', ')} to fire`);
    for (const a of firing) assert.ok(names.includes(a), `${a} is tested but not in alerts.yaml`);
  });

  test("the dashboard's queries are valid PromQL (promtool, as recording rules)", async () => {
    const queries = await dashboardQueries();
    assert.ok(queries.length >= 15, `only ${queries.length} queries`);
    const file = path.join(work, 'dashboard-rules.yaml');
    await writeFile(file, stringify({ groups: [{ name: 'dashboard', rules: queries.map((q, i) => ({ record: `dashboard:query_${i}`, expr: asPromQL(q.expr) })) }] }));
    const r = await promtool(['check', 'rules', file]);
    assert.equal(r.code, 0, r.out);
  });

  test('every metric name in the alerts and the dashboard is on the /metrics of a running berth', async () => {
    const exprs = [...(await alertRules()).map((r) => ({ where: `alert ${r.alert}`, expr: r.expr })), ...(await dashboardQueries())];
    const missing: string[] = [];
    for (const { where, expr } of exprs) {
      const names = metricNames(asPromQL(expr));
      assert.ok(names.length > 0, `${where}: no metric name found in ${expr}`);
      for (const n of names) if (!exposed.has(n)) missing.push(`${where}: ${n}`);
    }
    assert.deepEqual(missing, []);
    // The check is not vacuous: a misspelt name and a name berth does not have are caught.
    assert.deepEqual(
      metricNames('sum by (kind) (rate(berth_cache_hit_total{kind="blob"}[5m])) / on (kind) berth_no_such_metric').filter((n) => !exposed.has(n)),
      ['berth_cache_hit_total', 'berth_no_such_metric'],
    );
  });
});
