/**
 * The status page's script, run in the browser (kept as a string so that the esbuild bundle carries it;
 * the page's CSP admits it by its hash). Polls /_berth/api/status every second and rebuilds the tables.
 * Every value goes in through textContent (repository names, paths and error messages are client- or
 * upstream-chosen text): no innerHTML, no attribute built from data except data-* and title.
 */
export const PAGE_SCRIPT = `
'use strict';
(function () {
  var POLL_MS = 1000;
  var $ = function (id) { return document.getElementById(id); };
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function bytes(n) {
    if (n === null || n === undefined) return '?';
    var u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    var i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i === 0 ? String(n) : n.toFixed(n < 10 ? 2 : 1)) + ' ' + u[i];
  }
  function rate(n) { return n === null || n === undefined ? 'unlimited' : bytes(n) + '/s'; }
  function ago(iso) {
    if (!iso) return 'never';
    var s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
    if (s < 60) return s + ' s ago';
    if (s < 3600) return Math.round(s / 60) + ' min ago';
    if (s < 86400) return Math.round(s / 3600) + ' h ago';
    return Math.round(s / 86400) + ' d ago';
  }
  function duration(s) {
    var d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
    return (d ? d + 'd ' : '') + (d || h ? h + 'h ' : '') + m + 'm ' + (s % 60) + 's';
  }
  function bar(fraction, label) {
    var meter = el('div', 'meter');
    var outer = el('div', 'bar');
    var inner = el('div', 'fill' + (fraction > 0.9 ? ' hot' : ''));
    inner.style.width = Math.max(0, Math.min(100, fraction * 100)).toFixed(1) + '%';
    outer.appendChild(inner);
    meter.appendChild(outer);
    meter.appendChild(el('span', 'label', label));
    return meter;
  }
  function row(cells) {
    var tr = el('tr');
    cells.forEach(function (c) {
      var td = el('td');
      if (c instanceof Node) td.appendChild(c); else td.textContent = c === null || c === undefined ? '' : String(c);
      tr.appendChild(td);
    });
    return tr;
  }
  function fillTable(id, rows, empty, columns) {
    var body = $(id).querySelector('tbody');
    var trs = rows.map(function (r) { return r; });
    if (trs.length === 0) {
      var tr = el('tr', 'empty');
      var td = el('td', null, empty);
      td.colSpan = columns;
      tr.appendChild(td);
      trs = [tr];
    }
    body.replaceChildren.apply(body, trs);
  }
  function shortDigest(d) { return d.replace(/^sha256:/, '').slice(0, 12); }

  function render(s) {
    $('version').textContent = 'berth ' + s.version;
    $('uptime').textContent = 'up ' + duration(s.uptimeSeconds);
    $('mode').textContent = s.offline === 'except-parents' ? 'offline except parents' : s.offline ? 'offline' : 'online';
    $('mode').className = 'badge ' + (s.offline ? 'warn' : 'ok');

    fillTable('upstreams', s.upstreams.map(function (u) {
      var state = el('span', 'badge ' + (u.breaker === 'closed' ? 'ok' : u.breaker === 'open' ? 'bad' : 'warn'), u.breaker === 'closed' ? 'healthy' : u.breaker === 'open' ? 'down' : 'probing');
      var tr = row([u.host + (u.default ? ' (default)' : ''), u.url, state,
        u.breaker + (u.consecutiveFailures ? ', ' + u.consecutiveFailures + ' failures' : '') + (u.retryInMs ? ', retry in ' + Math.ceil(u.retryInMs / 1000) + ' s' : ''),
        bytes(u.bytesLastMinute.foreground + u.bytesLastMinute.background),
        rate(u.bandwidth.inUse.foreground) + ' / ' + rate(u.bandwidth.inUse.background),
        rate(u.bandwidth.limit)]);
      tr.dataset.host = u.host;
      tr.dataset.breaker = u.breaker;
      return tr;
    }), 'no upstreams configured', 7);
    $('budget').textContent = 'global budget ' + rate(s.bandwidth.limit) + ', in use ' + rate(s.bandwidth.inUse.foreground) + ' foreground, ' + rate(s.bandwidth.inUse.background) + ' background';

    fillTable('fills', s.fills.map(function (f) {
      var progress = f.size ? bar(f.bytesOnDisk / f.size, bytes(f.bytesOnDisk) + ' of ' + bytes(f.size)) : el('span', null, bytes(f.bytesOnDisk) + ' of ?');
      var name = el('span', null, f.repository ? f.upstream + '/' + f.repository : f.upstream);
      var digest = el('code', null, shortDigest(f.digest));
      digest.title = f.digest;
      var tr = row([name, digest, progress, rate(f.rate), f.readers, f.priority + (f.background ? ' (no reader)' : ''),
        f.lazyRanges.length ? f.lazyRanges.map(function (r) { return bytes(r.start) + '–' + bytes(r.end + 1); }).join(', ') : '—']);
      tr.dataset.digest = f.digest;
      tr.dataset.bytes = String(f.bytesOnDisk);
      return tr;
    }), 'nothing is being fetched', 7);

    var c = s.cache;
    var disk = $('disk');
    disk.replaceChildren(c.quotaBytes ? bar(c.usedFraction, bytes(c.usedBytes) + ' of ' + bytes(c.quotaBytes) + ' (' + (c.usedFraction * 100).toFixed(1) + '%)') : el('span', null, bytes(c.usedBytes) + ' (no quota)'));
    $('blobs').textContent = c.blobs + (c.blobs === 1 ? ' blob' : ' blobs');
    $('hits').textContent = c.hitRatio === null ? 'no requests yet' : (c.hitRatio * 100).toFixed(1) + '% hits (' + c.hits + ' hits, ' + c.misses + ' misses)';
    var repoRow = function (r) { var tr = row([r.upstream + '/' + r.repository, bytes(r.bytes), r.blobs, ago(r.lastUsed)]); tr.dataset.repository = r.upstream + '/' + r.repository; return tr; };
    var tagRow = function (t) {
      var tr = row([t.upstream + '/' + t.repository + ':' + t.tag, bytes(t.bytes), ago(t.lastUsed)]);
      tr.dataset.reference = t.upstream + '/' + t.repository + ':' + t.tag;
      return tr;
    };
    fillTable('largest-repositories', c.largestRepositories.map(repoRow), 'nothing cached', 4);
    fillTable('recent-repositories', c.recentRepositories.map(repoRow), 'nothing cached', 4);
    fillTable('largest-tags', c.largestTags.map(tagRow), 'no tags cached', 3);
    fillTable('recent-tags', c.recentTags.map(tagRow), 'no tags cached', 3);
    fillTable('pins', c.pins.map(function (p) { return row([p.reference, p.blobs, bytes(p.bytes)]); }), 'nothing pinned', 3);

    $('error-count').textContent = s.errors.total + ' since start';
    fillTable('errors', s.errors.recent.map(function (e) {
      var where = e.kind === 'fill' ? 'fill ' + (e.repository ? e.repository + ' ' : '') + (e.digest ? shortDigest(e.digest) : '') : (e.method || '') + ' ' + (e.path || '');
      return row([ago(e.time), e.status || '', e.code || '', where, e.message]);
    }), 'no errors', 5);
  }

  function poll() {
    fetch('/_berth/api/status', { cache: 'no-store', credentials: 'same-origin', headers: { accept: 'application/json' } })
      .then(function (res) {
        if (!res.ok) throw new Error('status ' + res.status);
        return res.json();
      })
      .then(function (s) {
        render(s);
        $('conn').textContent = 'updated ' + new Date().toLocaleTimeString();
        $('conn').className = 'badge ok';
      })
      .catch(function (err) {
        $('conn').textContent = 'cannot reach berth: ' + err.message;
        $('conn').className = 'badge bad';
      })
      .finally(function () { setTimeout(poll, POLL_MS); });
  }
  poll();
})();
`;
