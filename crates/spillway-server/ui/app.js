// The Spillway dashboard: plain JavaScript, no build step. Every value that comes from the
// server is put into the page as text (textContent / text nodes), never parsed as markup:
// tenant and user names are chosen by clients.
//
// The admin token, when the node has one, is asked for once, kept in sessionStorage (this
// tab only) and sent as `Authorization: Bearer` on every fetch. It never goes into a URL.
'use strict';

(function () {
  const TOKEN_KEY = 'spillway-admin-token';
  const FAST = 2000; // series and store
  const SLOW = 5000; // top, shadow, an open lookup
  const POLICY_EVERY = 15000;

  const $ = (id) => document.getElementById(id);

  // el('td', {class: 'num'}, 'text', child...): builds an element; strings become text nodes.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === 'class') node.className = value;
      else if (name === 'onclick') node.addEventListener('click', value);
      else if (name === 'title') node.title = String(value);
      else node.setAttribute(name, String(value));
    }
    for (const child of children) {
      if (child === undefined || child === null) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  // Fills a table: a header row of `head`, then one row per item of `rows` (arrays of cells,
  // each a string, a number or a Node); `empty` when there are none.
  function table(target, head, rows, empty) {
    const thead = el('thead', {}, el('tr', {}, ...head.map((h) => el('th', {}, h))));
    const body = el('tbody');
    if (rows.length === 0) {
      body.append(el('tr', {}, el('td', { colspan: head.length, class: 'muted' }, empty || 'none')));
    }
    for (const row of rows) {
      body.append(el('tr', {}, ...row.map((cell) =>
        el('td', { class: typeof cell === 'number' ? 'num' : null }, cell))));
    }
    target.replaceChildren(thead, body);
  }

  // Characters that change how text shows without showing themselves: controls, bidirectional
  // overrides and isolates, zero-width characters and the rest of spillway_core::text's list.
  // In a name a client chose they could make it pass for another (`acme` beside `acme` with a
  // zero-width space), so names show each one as its escape, as the server's logs write them
  // (`\u{202e}`), and are marked.
  const HIDDEN = /[\p{Cc}\u00AD\u061C\u180E\u200B-\u200F\u2028-\u202E\u2060-\u206F\uFEFF\uFFF9-\uFFFB\u{E0000}-\u{E007F}]/gu;
  const ESCAPES = { '\n': '\\n', '\r': '\\r', '\t': '\\t' };
  const HIDDEN_NOTE = 'holds characters that do not show, written here as escapes';
  const visible = (text) => String(text).replace(HIDDEN,
    (c) => ESCAPES[c] || '\\u{' + c.codePointAt(0).toString(16) + '}');

  // A client-chosen name as a span (`attrs` added): shown by `visible`, and marked when that
  // changed it.
  function nameEl(text, attrs) {
    const shown = visible(text);
    const marked = shown !== String(text);
    return el('span', Object.assign({
      class: marked ? 'name hidden-chars' : 'name',
      title: marked ? HIDDEN_NOTE : null,
    }, attrs), shown);
  }

  function facts(target, pairs) {
    const items = [];
    for (const [name, value, cls] of pairs) {
      items.push(el('dt', {}, name), el('dd', { class: cls }, value));
    }
    target.replaceChildren(...items);
  }

  const iso = (ms) => (ms ? new Date(ms).toISOString().replace('T', ' ').slice(0, 19) + 'Z' : '–');
  const clock = (ms) => new Date(ms).toISOString().slice(11, 19);
  function duration(ms) {
    if (ms === null || ms === undefined) return '–';
    if (ms < 1000) return ms + ' ms';
    const round = (n) => String(Math.round(n * 10) / 10);
    const s = ms / 1000;
    if (s < 60) return round(s) + ' s';
    if (s < 3600) return round(s / 60) + ' min';
    if (s < 86400) return round(s / 3600) + ' h';
    return round(s / 86400) + ' d';
  }
  const micros = (us) => (us < 1000 ? us + ' µs' : (Math.round(us / 100) / 10) + ' ms');

  // ---- talking to the server ---------------------------------------------------------------

  class Unauthorized extends Error {}

  async function api(path, options) {
    const headers = Object.assign({ Accept: 'application/json' }, (options && options.headers) || {});
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = 'Bearer ' + token;
    const response = await fetch(path, Object.assign({}, options, { headers, cache: 'no-store' }));
    if (response.status === 401) throw new Unauthorized('the admin token is needed');
    let body = null;
    try { body = await response.json(); } catch (_) { body = null; }
    if (!response.ok) {
      const why = body && (body.detail || body.title);
      const error = new Error(why || ('HTTP ' + response.status));
      error.status = response.status;
      throw error;
    }
    return { body, headers: response.headers };
  }

  let state = { info: null, policy: null, lookup: null, timers: [] };

  function showLogin(message) {
    for (const t of state.timers) clearInterval(t);
    state.timers = [];
    $('main').hidden = true;
    $('login').hidden = false;
    $('forget').hidden = true;
    $('login-error').textContent = message || '';
    setHealth('locked', 'warn');
    $('token').focus();
  }

  function setHealth(text, level) {
    const pill = $('health');
    pill.textContent = text;
    pill.className = 'pill ' + (level || '');
  }

  // Runs `task` now and every `every` ms; a 401 sends the page back to the token form.
  function every(ms, task) {
    const run = () => task().catch(failed);
    run();
    state.timers.push(setInterval(run, ms));
  }

  function failed(error) {
    if (error instanceof Unauthorized) {
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin('That token was refused.');
    } else {
      setHealth('unreachable', 'bad');
      $('updated').textContent = String(error.message || error);
    }
  }

  async function start() {
    try {
      // Ask first whether a token is needed, so a fresh tab shows the form instead of
      // collecting a refusal.
      const auth = (await api('/ui/api/auth')).body;
      if (auth.token_required && !sessionStorage.getItem(TOKEN_KEY)) {
        showLogin('');
        return;
      }
      state.info = (await api('/ui/api/info')).body;
    } catch (error) {
      if (error instanceof Unauthorized) {
        const had = sessionStorage.getItem(TOKEN_KEY);
        sessionStorage.removeItem(TOKEN_KEY);
        showLogin(had ? 'That token was refused.' : '');
        return;
      }
      failed(error);
      return;
    }
    $('login').hidden = true;
    $('main').hidden = false;
    $('forget').hidden = !sessionStorage.getItem(TOKEN_KEY);
    $('node').textContent = 'node ' + state.info.node + ' · v' + state.info.version;
    every(FAST, refreshSeries);
    every(FAST, refreshStore);
    every(SLOW, refreshTop);
    every(SLOW, refreshShadow);
    every(POLICY_EVERY, refreshPolicy);
    every(SLOW, () => (state.lookup ? runLookup(state.lookup, true) : Promise.resolve()));
    const fromHash = lookupFromHash();
    if (fromHash) showLookup(fromHash);
  }

  // ---- decisions per second ----------------------------------------------------------------

  let chart = null;

  function makeChart(target) {
    const width = Math.max(240, target.clientWidth);
    const opts = {
      width,
      height: 220,
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true } },
      // The time axis in UTC, like every other time on the page.
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), 'Etc/UTC'),
      axes: [
        { stroke: '#667', grid: { stroke: '#e4e7ee' } },
        { stroke: '#667', grid: { stroke: '#e4e7ee' }, size: 50 },
      ],
      series: [
        {},
        { label: 'allowed', stroke: '#1f9d55', fill: 'rgba(31,157,85,0.08)', width: 1.5 },
        { label: 'denied', stroke: '#d0342c', fill: 'rgba(208,52,44,0.10)', width: 1.5 },
        { label: 'degraded', stroke: '#d08a00', width: 1.5 },
      ],
    };
    const instance = new uPlot(opts, [[], [], [], []], target);
    new ResizeObserver(() => {
      instance.setSize({ width: Math.max(240, target.clientWidth), height: 220 });
    }).observe(target);
    return instance;
  }

  async function refreshSeries() {
    const { body } = await api('/ui/api/series');
    const times = body.allowed.map((_, i) => body.start + i);
    if (!chart) chart = makeChart($('chart'));
    chart.setData([times, body.allowed, body.denied, body.degraded]);
    const sum = (v) => v.reduce((a, b) => a + b, 0);
    const totals = [
      ['allowed', sum(body.allowed)],
      ['denied', sum(body.denied)],
      ['degraded', sum(body.degraded)],
    ];
    $('chart').dataset.points = String(times.length);
    $('chart-totals').replaceChildren(...totals.map(([kind, n]) =>
      el('span', { class: 'total ' + kind, 'data-kind': kind }, el('b', {}, String(n)), ' ' + kind)));
    $('updated').textContent = 'updated ' + clock(body.now_ms) + ' UTC';
  }

  // ---- store ---------------------------------------------------------------------------------

  async function refreshStore() {
    const { body: s } = await api('/ui/api/store');
    const recent = s.recent;
    facts($('store-facts'), [
      ['Kind', s.kind],
      ['Reachable', s.ok ? 'yes' : 'no: ' + s.status, s.ok ? 'good' : 'bad'],
      ['Ping', s.ping_ms === null ? '–' : (Math.round(s.ping_ms * 100) / 100) + ' ms'],
      ['Circuit breaker', s.circuit, s.circuit === 'closed' ? 'good' : 'bad'],
      ['Degraded now', s.degraded_now ? 'yes' : 'no', s.degraded_now ? 'bad' : 'good'],
      ['Store call (' + recent.seconds + ' s)', recent.decisions
        ? 'mean ' + micros(recent.mean_micros) + ', max ' + micros(recent.max_micros)
        : 'no decisions'],
      ['Decisions (' + recent.seconds + ' s)', String(recent.decisions) +
        (recent.degraded ? ' (' + recent.degraded + ' degraded)' : '')],
      ['Keys', s.kind === 'memory' ? String(s.keys) : 'not counted'],
      ['Emergency keys', String(s.emergency_keys)],
    ]);
    if (s.degraded_now) setHealth('degraded', 'bad');
    else setHealth('protecting', 'good');
  }

  // ---- top -----------------------------------------------------------------------------------

  // The lookup is asked for the name as it is; the button shows it by `visible`.
  function tenantButton(tenant, user) {
    const shown = visible(tenant);
    const marked = shown !== tenant;
    return el('button', {
      type: 'button',
      class: marked ? 'link name hidden-chars' : 'link name',
      title: 'Look up ' + shown + (user ? ' / ' + visible(user) : '') + (marked ? ' (' + HIDDEN_NOTE + ')' : ''),
      onclick: () => showLookup({ tenant, user: user || '' }),
    }, tenant === '' ? '(none)' : shown);
  }

  async function refreshTop() {
    if (!state.info.top_k) {
      $('top-note').textContent = 'This node does not count hot keys or denials (--no-top-k).';
      return;
    }
    const window = $('top-window').value;
    const { body } = await api('/ui/api/top?window=' + encodeURIComponent(window) + '&limit=10');
    table($('blocked-tenants'), ['Tenant', 'Denied'],
      body.blocked_tenants.map((r) => [tenantButton(r.tenant), r.denied]), 'nobody denied');
    table($('blocked-users'), ['Tenant', 'User', 'Denied'],
      body.blocked_users.map((r) => [tenantButton(r.tenant, r.user), nameEl(r.user), r.denied]),
      'nobody denied');
    table($('hot-keys'), ['Limit', 'Key', 'Checks'],
      body.hot_keys.map((r) => [r.limit, nameEl(r.key.join(' · ')), r.count]),
      'no traffic');
    $('top-note').textContent = body.note || ('Counts are estimates that never undercount; node ' + body.nodes.join(', ') + '.');
  }

  // ---- shadow --------------------------------------------------------------------------------

  async function refreshShadow() {
    const { body } = await api('/ui/api/shadow');
    table($('shadow-table'), ['Limit', 'Last 15 min', 'Since start', 'Last'],
      body.limits.map((r) => [r.limit, r.would_deny_15m, r.would_deny_total, r.last_ms ? iso(r.last_ms) : 'never']),
      'no shadow limits in the policy');
  }

  // ---- policy --------------------------------------------------------------------------------

  const numbers = (l) => l.quota + ' per ' + duration(l.window_ms);

  async function refreshPolicy() {
    const { body: p } = await api('/ui/api/policy');
    state.policy = p;
    const c = p.catalog;
    facts($('policy-facts'), [
      ['Policy', p.policy.source],
      ['Loaded', iso(p.policy.loaded_at_ms)],
      ['Version', p.policy.version],
      ['Default tier', p.policy.default_tier],
      ['Failure mode', p.policy.failure_mode],
      ['Catalog', c.origin + ', version ' + c.version + (c.stale ? ' (stale)' : ''), c.stale ? 'bad' : null],
      ['Catalog applied', iso(c.applied_at_ms)],
      ['Catalog entries', c.tenants + ' tenants, ' + c.users + ' users, ' + c.api_keys + ' API keys' +
        (c.invalid ? ', ' + c.invalid + ' invalid' : '')],
      ['Catalog error', c.error || 'none', c.error ? 'bad' : null],
    ]);
    table($('policy-limits'), ['Limit', 'Algorithm', 'Key', 'Numbers', 'Mode'],
      p.limits.map((l) => [l.name, l.algorithm, l.key.join(', ') || '(global)', numbers(l), l.shadow ? 'shadow' : 'enforced']));
    table($('policy-tiers'), ['Tier', 'Limits'],
      p.tiers.map((t) => [t.name + (t.default ? ' (default)' : ''), t.limits.join(', ') || '–']));
    table($('policy-routes'), ['Route', 'Cost', 'Failure mode', 'Limits'],
      p.routes.map((r) => [r.match, r.cost, r.failure_mode || 'policy\u2019s', r.limits.join(', ') || '–']),
      'no routes');
    table($('policy-reloads'), ['When', 'Trigger', 'Outcome', 'Why'],
      p.reloads.map((r) => [iso(r.at_ms), r.trigger, r.outcome, r.error || '']),
      'no reload since start');
    fillEditChoices();
  }

  // ---- lookup --------------------------------------------------------------------------------

  function lookupFromHash() {
    if (!location.hash.startsWith('#lookup?')) return null;
    const params = new URLSearchParams(location.hash.slice('#lookup?'.length));
    const q = {};
    for (const k of ['tenant', 'user', 'ip', 'method', 'path']) q[k] = params.get(k) || '';
    return q.tenant ? q : null;
  }

  // A lookup of `q` as given (a name from a table, hidden characters and all: read back from
  // the form it would be trimmed, and a name ending in U+FEFF would become another tenant's).
  function showLookup(q) {
    const exact = {};
    for (const k of ['tenant', 'user', 'ip', 'method', 'path']) {
      exact[k] = q[k] || '';
      $('lk-' + k).value = exact[k];
    }
    runLookup(exact, false).catch(failed);
    $('lookup').scrollIntoView({ behavior: 'smooth', block: 'start' });
  }

  function readLookupForm() {
    const q = {};
    for (const k of ['tenant', 'user', 'ip', 'method', 'path']) q[k] = $('lk-' + k).value.trim();
    return q;
  }

  function usageCell(u) {
    if (!u) return el('span', { class: 'muted' }, 'unknown');
    const share = u.limit ? u.remaining / u.limit : 0;
    const bar = el('span', { class: 'meter' }, el('span', { class: share === 0 ? 'fill empty' : 'fill' }));
    bar.firstChild.style.width = Math.round(share * 100) + '%';
    return el('span', { class: 'usage' }, bar, el('span', { class: 'remaining' }, u.remaining + ' / ' + u.limit + ' left'));
  }

  async function runLookup(q, quiet) {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(q)) if (v) params.set(k, v);
    let result;
    try {
      result = await api('/ui/api/lookup?' + params.toString());
    } catch (error) {
      if (error instanceof Unauthorized) throw error;
      if (!quiet) {
        $('lookup-error').textContent = String(error.message || error);
        $('lookup-result').hidden = true;
        state.lookup = null;
      }
      return;
    }
    const l = result.body;
    state.lookup = q;
    if (!quiet) history.replaceState(null, '', '#lookup?' + params.toString());
    $('lookup-error').textContent = '';
    $('lookup-result').hidden = false;
    const tierFrom = { user: 'the user\u2019s catalog entry', tenant: 'the tenant\u2019s catalog entry', default: 'the policy\u2019s default' };
    const overrides = (entry) => entry && entry.overrides ? Object.keys(entry.overrides).join(', ') : '';
    facts($('lookup-facts'), [
      ['Tenant', nameEl(l.tenant, { id: 'lookup-tenant' })],
      ['User', l.user === null ? '–' : nameEl(l.user)],
      ['Tier', l.tier + ' (from ' + tierFrom[l.tier_source] + ')'],
      ['Route', l.route || 'none matched'],
      ['Cost', String(l.cost)],
      ['If the store fails', l.failure_mode],
      ['Catalog version', String(l.catalog.version)],
      ['Overrides', [overrides(l.catalog.tenant) && 'tenant: ' + overrides(l.catalog.tenant),
        overrides(l.catalog.user) && 'user: ' + overrides(l.catalog.user)].filter(Boolean).join('; ') || 'none'],
    ]);
    if (l.store_error) $('lookup-error').textContent = 'The store could not be read: ' + l.store_error;
    // With regions, say whose count each figure is (a home limit's home, or the worldwide one).
    const regions = l.limits.some((x) => x.counted_in);
    const where = (x) => x.scope === 'aggregate'
      ? 'all regions (worldwide, as this node sees it)'
      : x.counted_in + (x.scope === 'home' ? ' (the tenant\u2019s home)' : ' (this region)');
    const columns = ['Limit', 'Key', 'Numbers', 'Now', 'Resets in', 'Next request', 'Set by'];
    table($('lookup-limits'), regions ? columns.concat(['Counted in']) : columns,
      l.limits.map((x) => {
        const row = [
          x.name + (x.shadow ? ' (shadow)' : ''),
          nameEl(x.values.join(' · ')),
          x.algorithm + ', ' + numbers(x),
          usageCell(x.usage),
          x.usage ? duration(x.usage.reset_after_ms) : '–',
          x.usage ? (x.usage.next_allowed ? 'allowed' : (x.shadow ? 'would be denied' : 'denied')) : '–',
          x.override ? x.override + ' override' : 'tier',
        ];
        if (regions) row.push(x.counted_in ? where(x) : '–');
        return row;
      }), 'no limit applies to such a request');
    for (const row of $('lookup-limits').querySelectorAll('tbody tr')) {
      const cells = row.children;
      if (cells.length > 5 && cells[5].textContent === 'denied') row.className = 'denied';
    }
    if (!l.decisions.log) {
      $('decisions-note').textContent = 'The decision log is off on this node (start it with --decision-log to see why requests were denied).';
    } else {
      $('decisions-note').textContent = 'Newest first; the log keeps every denial (up to its per-second cap) and a sample of allowed requests.';
    }
    table($('lookup-decisions'), ['Time', 'Outcome', 'User', 'Route', 'Limit', 'Remaining', 'Retry after'],
      l.decisions.records.map((r) => [
        r.time.replace('T', ' '),
        r.outcome,
        nameEl(r.user || '–'),
        r.route || r.domain || '–',
        r.limit ? r.limit.name : '–',
        r.limit ? r.limit.remaining + ' / ' + r.limit.limit : '–',
        r.retry_after_ms === null || r.retry_after_ms === undefined ? '–' : duration(r.retry_after_ms),
      ]), l.decisions.log ? 'no recent decisions' : 'decision log off');
    const editable = state.info.admin_api && state.info.catalog_database;
    $('tenant-edit').hidden = !editable;
    $('edit-off').hidden = editable;
    $('edit-off').textContent = !state.info.admin_api
      ? 'Read-only: this node has no admin token, so its admin API is off.'
      : 'Read-only: tenants come from the policy file (start the node with --catalog to change them at runtime).';
    if (!quiet) $('edit-result').textContent = '';
    fillEditChoices(l);
  }

  // ---- tenant changes through the admin API ----------------------------------------------

  function fillEditChoices(lookup) {
    const p = state.policy;
    if (!p) return;
    const tier = $('edit-tier');
    const current = lookup ? lookup.catalog.tenant && lookup.catalog.tenant.tier : tier.value;
    const chosen = tier.value;
    tier.replaceChildren(el('option', { value: '' }, '(policy default)'),
      ...p.tiers.map((t) => el('option', { value: t.name }, t.name)));
    tier.value = (lookup ? current : chosen) || '';
    const limit = $('edit-limit');
    const keep = limit.value;
    limit.replaceChildren(...p.limits.map((x) => el('option', { value: x.name }, x.name)));
    if (keep) limit.value = keep;
  }

  async function patchTenant(patch) {
    const tenant = state.lookup && state.lookup.tenant;
    if (!tenant) return;
    const out = $('edit-result');
    out.className = 'small';
    out.textContent = 'saving…';
    try {
      const { body, headers } = await api('/v1/admin/tenants/' + encodeURIComponent(tenant), {
        method: 'PATCH',
        headers: { 'Content-Type': 'application/merge-patch+json' },
        body: JSON.stringify(patch),
      });
      const version = headers.get('spillway-catalog-version') || (body && body.version);
      out.className = 'small good';
      out.textContent = 'Saved: catalog version ' + version + (body && body.applied === false ? ' (not yet applied on this node)' : ', applied on this node') + '.';
      out.dataset.version = String(version);
      await runLookup(state.lookup, true);
      await refreshPolicy();
    } catch (error) {
      if (error instanceof Unauthorized) throw error;
      out.className = 'small error';
      out.textContent = 'Refused: ' + String(error.message || error);
    }
  }

  function overrideValue(field, text) {
    if (field === 'shadow') return text === 'true';
    if (field === 'limit' || field === 'burst' || field === 'capacity') {
      const n = Number(text);
      return Number.isInteger(n) && n >= 0 ? n : text;
    }
    return text;
  }

  // ---- wiring --------------------------------------------------------------------------------

  document.addEventListener('DOMContentLoaded', () => {
    $('login-form').addEventListener('submit', (event) => {
      event.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, $('token').value.trim());
      $('token').value = '';
      start();
    });
    $('forget').addEventListener('click', () => {
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin('');
    });
    $('lookup-form').addEventListener('submit', (event) => {
      event.preventDefault();
      runLookup(readLookupForm(), false).catch(failed);
    });
    $('top-window').addEventListener('change', () => refreshTop().catch(failed));
    $('tier-form').addEventListener('submit', (event) => {
      event.preventDefault();
      patchTenant({ tier: $('edit-tier').value || null }).catch(failed);
    });
    $('override-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const field = $('edit-field').value;
      const patch = { overrides: {} };
      patch.overrides[$('edit-limit').value] = {};
      patch.overrides[$('edit-limit').value][field] = overrideValue(field, $('edit-value').value.trim());
      patchTenant(patch).catch(failed);
    });
    $('edit-clear').addEventListener('click', () => {
      const patch = { overrides: {} };
      patch.overrides[$('edit-limit').value] = null;
      patchTenant(patch).catch(failed);
    });
    window.addEventListener('hashchange', () => {
      const q = lookupFromHash();
      if (q && state.info) showLookup(q);
    });
    start();
  });
})();
