import { createHash } from 'node:crypto';
import { PAGE_SCRIPT } from './page-script.ts';

const STYLE = `
:root { color-scheme: light dark; --fg: #1d2430; --muted: #5b6575; --bg: #f6f7f9; --card: #fff; --line: #dde1e7; --ok: #1f7a3d; --warn: #9a6400; --bad: #b3261e; --bar: #3b6fd8; }
@media (prefers-color-scheme: dark) { :root { --fg: #e4e7ec; --muted: #9aa4b2; --bg: #14171c; --card: #1c2027; --line: #2c323c; --bar: #5b8def; } }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, sans-serif; color: var(--fg); background: var(--bg); }
header { display: flex; gap: 12px; align-items: center; flex-wrap: wrap; padding: 10px 16px; background: var(--card); border-bottom: 1px solid var(--line); }
header h1 { font-size: 18px; margin: 0 8px 0 0; }
main { padding: 12px 16px; display: grid; gap: 12px; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; overflow-x: auto; }
h2 { font-size: 15px; margin: 0 0 8px; }
h3 { font-size: 13px; margin: 10px 0 4px; color: var(--muted); }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 3px 8px; border-bottom: 1px solid var(--line); vertical-align: top; white-space: nowrap; }
td:last-child { white-space: normal; word-break: break-word; }
th { color: var(--muted); font-weight: 600; font-size: 12px; }
tr.empty td { color: var(--muted); font-style: italic; }
code { font-size: 12px; }
.muted { color: var(--muted); }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; border: 1px solid currentColor; }
.ok { color: var(--ok); } .warn { color: var(--warn); } .bad { color: var(--bad); }
.meter { display: flex; gap: 8px; align-items: center; }
.bar { position: relative; width: 200px; height: 12px; background: var(--line); border-radius: 3px; overflow: hidden; flex: none; }
.bar .fill { position: absolute; inset: 0 auto 0 0; background: var(--bar); }
.bar .fill.hot { background: var(--bad); }
.meter .label { font-size: 12px; font-variant-numeric: tabular-nums; }
.cols { display: grid; grid-template-columns: repeat(auto-fit, minmax(340px, 1fr)); gap: 4px 16px; }
.stats { display: flex; gap: 16px; align-items: center; flex-wrap: wrap; }
`;

const table = (id: string, columns: string[]): string =>
  `<table id="${id}"><thead><tr>${columns.map((c) => `<th>${c}</th>`).join('')}</tr></thead><tbody><tr class="empty"><td colspan="${columns.length}">loading…</td></tr></tbody></table>`;

const REPOS = ['repository', 'size', 'blobs', 'last used'];
const TAGS = ['tag', 'size', 'last used'];

const BODY = `<header><h1>berth</h1><span id="version" class="muted"></span><span id="uptime" class="muted"></span><span id="mode" class="badge"></span><span id="conn" class="badge">connecting…</span></header>
<main>
<section><h2>Upstreams</h2>${table('upstreams', ['upstream', 'url', 'health', 'breaker', 'last minute', 'in use (fg / bg)', 'budget'])}<p id="budget" class="muted"></p></section>
<section><h2>Fills in progress</h2>${table('fills', ['repository', 'digest', 'on disk', 'rate', 'readers', 'priority', 'lazy ranges'])}</section>
<section><h2>Cache</h2><div class="stats"><div id="disk"></div><span id="blobs" class="muted"></span><span id="hits"></span></div>
<div class="cols"><div><h3>Largest repositories</h3>${table('largest-repositories', REPOS)}</div><div><h3>Recently used repositories</h3>${table('recent-repositories', REPOS)}</div>
<div><h3>Largest tags</h3>${table('largest-tags', TAGS)}</div><div><h3>Recently used tags</h3>${table('recent-tags', TAGS)}</div>
<div><h3>Pins</h3>${table('pins', ['reference', 'blobs', 'size'])}</div></div></section>
<section><h2>Recent errors <span id="error-count" class="muted"></span></h2>${table('errors', ['when', 'status', 'code', 'where', 'message'])}</section>
</main>`;

const sha256 = (s: string): string => `'sha256-${createHash('sha256').update(s, 'utf8').digest('base64')}'`;

/**
 * The status page: one self-contained document (no external assets). Its Content-Security-Policy admits
 * only its own inline style and script (by hash) and fetches to its own origin, so even a value that
 * slipped into markup could not run or load anything.
 */
export function statusPage(): { html: string; csp: string } {
  const html = `<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>berth status</title><link rel="icon" href="data:,"><style>${STYLE}</style></head><body>${BODY}<script>${PAGE_SCRIPT}</script></body></html>`;
  const csp = [
    "default-src 'none'",
    `script-src ${sha256(PAGE_SCRIPT)}`,
    `style-src ${sha256(STYLE)}`,
    "connect-src 'self'",
    'img-src data:',
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
  ].join('; ');
  return { html, csp };
}
