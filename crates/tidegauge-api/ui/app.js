// The tidegauge dashboard. Plain JavaScript, no build step; talks only to the admin API
// that served it. The token lives in memory (and in sessionStorage only when the user asks)
// and goes out as the Authorization header; nothing is ever stored in a cookie.
'use strict';
(function () {
  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = 'tidegauge-admin-token';

  // ---- token -------------------------------------------------------------------------
  let token = sessionStorage.getItem(TOKEN_KEY);

  function showTokenState() {
    $('token-state').textContent = token ? 'token set' : 'no token';
  }

  function setToken(value, remember) {
    token = value || null;
    if (token && remember) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
    showTokenState();
    // Forgetting the token leaves the parameters already shown (an Apply then goes out
    // without a token and the API refuses it); a new token reloads them.
    if (token) loadParams();
    loadChanges();
    loadThreshold();
  }

  $('token-button').addEventListener('click', () => {
    $('token-dialog').hidden = !$('token-dialog').hidden;
    $('token-input').focus();
  });
  $('token-save').addEventListener('click', () => {
    setToken($('token-input').value.trim(), $('token-remember').checked);
    $('token-input').value = '';
    $('token-dialog').hidden = true;
  });
  $('token-input').addEventListener('keydown', (e) => {
    if (e.key === 'Enter') $('token-save').click();
  });
  $('token-forget').addEventListener('click', () => {
    setToken(null, false);
    $('token-dialog').hidden = true;
  });
  $('token-cancel').addEventListener('click', () => { $('token-dialog').hidden = true; });

  // ---- API ---------------------------------------------------------------------------
  async function api(path, options) {
    const opts = options || {};
    const headers = Object.assign({ Accept: 'application/json' }, opts.headers || {});
    if (token) headers.Authorization = 'Bearer ' + token;
    const response = await fetch(path, {
      method: opts.method || 'GET',
      headers: headers,
      body: opts.body,
      credentials: 'omit',
      cache: 'no-store',
    });
    let body = null;
    try { body = await response.json(); } catch (_) { body = null; }
    if (!response.ok) {
      const error = new Error((body && body.error) || ('HTTP ' + response.status));
      error.status = response.status;
      throw error;
    }
    return body;
  }

  function el(tag, attrs, children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else e.setAttribute(k, v);
    }
    for (const c of children || []) e.append(c);
    return e;
  }

  const SVG = 'http://www.w3.org/2000/svg';
  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function human(n) {
    if (n === null || n === undefined || Number.isNaN(n)) return '…';
    if (n >= 1e6) return (n / 1e6).toFixed(2) + 'M';
    if (n >= 1e4) return (n / 1e3).toFixed(1) + 'k';
    if (n >= 100) return n.toFixed(0);
    return n.toFixed(1);
  }

  function fmt(v) {
    if (v === null || v === undefined) return '–';
    if (typeof v === 'number') return Number.isInteger(v) ? String(v) : v.toPrecision(4);
    if (typeof v === 'object') return JSON.stringify(v);
    return String(v);
  }

  function time(ms) {
    return new Date(ms).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
  }

  // ---- pipeline graph ----------------------------------------------------------------
  let topology = null;
  let previous = null; // { at_ms, byId }
  let rates = {};

  function layout(topo) {
    const depth = {};
    const inputs = {};
    for (const n of topo.nodes) inputs[n.id] = [];
    for (const e of topo.edges) if (inputs[e.to]) inputs[e.to].push(e.from);
    const visit = (id, seen) => {
      if (depth[id] !== undefined) return depth[id];
      if (seen.has(id)) return 0;
      seen.add(id);
      const d = inputs[id].length ? 1 + Math.max(...inputs[id].map((i) => visit(i, seen))) : 0;
      depth[id] = d;
      return d;
    };
    for (const n of topo.nodes) visit(n.id, new Set());
    const maxDepth = Math.max(0, ...Object.values(depth));
    // Sinks in the last column, whatever their depth.
    for (const n of topo.nodes) if (n.kind === 'sink') depth[n.id] = Math.max(maxDepth, 1);
    const columns = {};
    for (const n of topo.nodes) (columns[depth[n.id]] = columns[depth[n.id]] || []).push(n);
    const W = 210, H = 92, GX = 70, GY = 18;
    const pos = {};
    let height = 0;
    for (const [d, list] of Object.entries(columns)) {
      list.forEach((n, i) => {
        pos[n.id] = { x: 10 + Number(d) * (W + GX), y: 10 + i * (H + GY), w: W, h: H };
      });
      height = Math.max(height, 10 + list.length * (H + GY));
    }
    const width = 10 + (Math.max(...Object.keys(columns).map(Number)) + 1) * (W + GX);
    return { pos, width, height };
  }

  function drawGraph(components) {
    if (!topology) return;
    const byId = {};
    for (const c of components || []) byId[c.id] = c;
    const { pos, width, height } = layout(topology);
    const root = svg('svg', { width: width, height: height, viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': 'pipeline graph' });
    for (const e of topology.edges) {
      const a = pos[e.from], b = pos[e.to];
      if (!a || !b) continue;
      const x1 = a.x + a.w, y1 = a.y + a.h / 2, x2 = b.x, y2 = b.y + b.h / 2, mx = (x1 + x2) / 2;
      const target = byId[e.to];
      const q = target && target.queue;
      const busy = q && q.capacity && q.queued / q.capacity > 0.5;
      root.append(svg('path', { class: 'edge' + (busy ? ' busy' : ''), d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`, 'data-from': e.from, 'data-to': e.to }));
      const r = rates[e.from];
      const label = (r ? human(r.out) + '/s' : '') + (q ? `  q ${q.queued}/${q.capacity}` : '');
      // Beside the edge's end: edges leaving one node part there, so labels do not meet.
      root.append(svg('text', { class: 'edge-label', x: x2 - 66, y: y2 - 5 }, label));
    }
    for (const n of topology.nodes) {
      const p = pos[n.id];
      const c = byId[n.id] || {};
      const r = rates[n.id] || {};
      const breaker = c.breaker || null;
      const bad = (c.errors > 0) || breaker === 'open' || breaker === 'half_open';
      const g = svg('g', { class: 'node' + (bad ? ' bad' : '') + (c.running === false ? ' stopped' : ''), 'data-id': n.id, transform: `translate(${p.x},${p.y})` });
      g.append(svg('rect', { width: p.w, height: p.h, rx: 6 }));
      g.append(svg('text', { class: 'title', x: 8, y: 16 }, n.id));
      g.append(svg('text', { class: 'sub', x: 8, y: 31 }, `${n.kind} · ${n.type}`));
      g.append(svg('text', { x: 8, y: 47 }, `in ${human(r.in)}/s   out ${human(r.out)}/s`));
      g.append(svg('text', { class: c.errors > 0 || c.dead_lettered > 0 ? 'alarm' : '', x: 8, y: 63 },
        `errors ${c.errors || 0}   dead letters ${c.dead_lettered || 0}`));
      const extra = [];
      if (breaker) extra.push('breaker ' + breaker);
      if (c.detector) extra.push('anomalies ' + (c.anomalies || 0));
      if (c.queue) extra.push(`queue ${c.queue.queued}/${c.queue.capacity}`);
      g.append(svg('text', { class: breaker === 'open' ? 'alarm' : 'sub', x: 8, y: 79 }, extra.join('   ')));
      root.append(g);
    }
    $('graph').replaceChildren(root);
  }

  function onComponents(data) {
    const byId = {};
    for (const c of data.components) byId[c.id] = c;
    if (previous) {
      const secs = (data.at_ms - previous.at_ms) / 1000;
      if (secs > 0) {
        rates = {};
        for (const c of data.components) {
          const b = previous.byId[c.id];
          if (!b) continue;
          rates[c.id] = {
            in: Math.max(0, c.events_in - b.events_in) / secs,
            out: Math.max(0, c.events_out - b.events_out) / secs,
          };
        }
      }
    }
    previous = { at_ms: data.at_ms, byId: byId };
    const running = data.components.filter((c) => c.running).length;
    $('status').textContent = `live · ${data.components.length} components, ${running} running`;
    drawGraph(data.components);
    fillComponentSelect(data.components);
  }

  // ---- sensors -----------------------------------------------------------------------
  let selected = null; // { sensor, component }
  let series = null; // { total, points }
  let charts = { values: null, score: null };
  let threshold = null;
  let searchTimer = null;
  let pointsKept = 180; // [admin] history_points, read from GET /sensors

  async function search() {
    const q = $('sensor-search').value.trim();
    try {
      const r = await api('/sensors?limit=200&q=' + encodeURIComponent(q));
      pointsKept = r.history.points_per_sensor;
      $('sensor-count').textContent = `${r.matched} of ${r.history.tracked} sensors kept` +
        ` (at most ${r.history.max_sensors} × ${r.history.points_per_sensor} points)`;
      const list = $('sensor-list');
      list.replaceChildren(...r.sensors.map((s) => {
        const li = el('li', { 'data-sensor': s.sensor, 'data-component': s.component, title: s.component },
          [el('span', { text: s.sensor }), el('span', { class: 'badge', text: s.anomalies ? `${s.anomalies} ⚠` : '' })]);
        if (selected && selected.sensor === s.sensor && selected.component === s.component) li.classList.add('selected');
        li.addEventListener('click', () => openSensor(s.sensor, s.component));
        return li;
      }));
    } catch (e) {
      $('sensor-count').textContent = e.message;
    }
  }

  $('sensor-search').addEventListener('input', () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(search, 150);
  });

  function chartData() {
    const p = series.points;
    const xs = p.map((x) => x.t_ms / 1000);
    const values = p.map((x) => x.value);
    const marks = p.map((x) => (x.anomaly ? x.value : null));
    const stats = p.map((x) => x.statistic);
    const scores = p.map((x) => x.score);
    const bound = p.map(() => 0.5);
    return { values: [xs, values, marks], score: [xs, stats, scores, bound] };
  }

  function width() {
    return Math.max(300, $('sensor-chart').parentElement.clientWidth - 4);
  }

  function makeCharts() {
    const d = chartData();
    for (const c of Object.values(charts)) if (c) c.destroy();
    charts.values = new uPlot({
      width: width(), height: 240,
      series: [
        {},
        { label: 'value', stroke: '#2563eb', width: 1.5, spanGaps: false },
        { label: 'anomaly', stroke: '#dc2626', width: 0, paths: () => null,
          points: { show: true, size: 9, fill: '#dc2626', stroke: '#7f1d1d' } },
      ],
      axes: [{}, { label: 'value' }],
    }, d.values, $('sensor-chart'));
    const statName = series.statistic || 'statistic';
    charts.score = new uPlot({
      width: width(), height: 170,
      series: [
        {},
        { label: statName, stroke: '#7c3aed', width: 1.2, scale: 'stat' },
        { label: 'score', stroke: '#ea580c', width: 1.2, scale: 'score' },
        { label: 'threshold (score 0.5)', stroke: '#dc2626', width: 1, dash: [6, 4], scale: 'score' },
      ],
      scales: { score: { range: [0, 1] } },
      axes: [{}, { scale: 'stat', label: statName }, { scale: 'score', side: 1, label: 'score', grid: { show: false } }],
    }, d.score, $('score-chart'));
    markChart();
  }

  function markChart() {
    const p = series.points;
    const box = $('sensor-chart');
    box.dataset.points = String(p.length);
    box.dataset.anomalies = String(p.filter((x) => x.anomaly).length);
    const last = p[p.length - 1];
    const stats = [
      ['points', `${p.length} (of ${series.total} seen)`],
      ['anomalies shown', box.dataset.anomalies],
      ['last value', last ? fmt(last.value) : '–'],
      [series.statistic || 'statistic', last ? fmt(last.statistic) : '–'],
      ['score', last ? last.score.toFixed(3) : '–'],
      ['threshold', threshold === null ? (token ? '…' : 'needs the token') : fmt(threshold)],
    ];
    $('sensor-stats').replaceChildren(...stats.map(([k, v]) => el('span', {}, [k + ' ', el('b', { text: v })])));
  }

  async function openSensor(sensor, component) {
    selected = { sensor, component };
    for (const li of $('sensor-list').children) {
      li.classList.toggle('selected', li.dataset.sensor === sensor && li.dataset.component === component);
    }
    $('sensor-title').textContent = `${sensor} — detector ${component}`;
    $('sensor-title').className = '';
    try {
      series = await api('/sensors/points?sensor=' + encodeURIComponent(sensor) + '&component=' + encodeURIComponent(component));
    } catch (e) {
      $('sensor-title').textContent = e.message;
      $('sensor-title').className = 'error';
      return;
    }
    threshold = null;
    makeCharts();
    openFeed();
    loadThreshold();
  }

  // The detector's `threshold` parameter, shown beside the chart (parameters need the token).
  function loadThreshold() {
    if (!selected || !series) return;
    if (!token) { threshold = null; markChart(); return; }
    const component = selected.component;
    api('/components/' + encodeURIComponent(component) + '/params').then((r) => {
      if (!selected || selected.component !== component) return;
      const t = r.params.find((p) => p.name === 'threshold');
      threshold = t ? t.value : 'no threshold parameter';
      markChart();
    }).catch((e) => { threshold = e.message; markChart(); });
  }

  function onPoints(data) {
    if (!selected || !series || data.sensor !== selected.sensor || data.component !== selected.component) return;
    // Only points not had yet (a reconnected feed may repeat some): point number
    // `data.total - data.points.length + 1` is the first of this batch.
    if (data.total <= series.total) return;
    const skip = Math.max(0, series.total - (data.total - data.points.length));
    // As many as the server keeps per sensor.
    series.points = series.points.concat(data.points.slice(skip));
    if (series.points.length > pointsKept) series.points = series.points.slice(series.points.length - pointsKept);
    series.total = data.total;
    const d = chartData();
    charts.values.setData(d.values);
    charts.score.setData(d.score);
    markChart();
  }

  window.addEventListener('resize', () => {
    for (const c of Object.values(charts)) if (c) c.setSize({ width: width(), height: c.height });
  });

  // ---- top sensors and incidents -----------------------------------------------------
  function onOverview(data) {
    const top = (data.top && data.top.sensors) || [];
    $('top-table').tBodies[0].replaceChildren(...top.map((s) => {
      const tr = el('tr', { 'data-sensor': s.sensor, 'data-component': s.component }, [
        el('td', { text: s.sensor }), el('td', { text: s.component }),
        el('td', { class: 'num', text: String(s.recent_anomalies) }),
        el('td', { class: 'num', text: s.peak_score.toFixed(3) }),
        el('td', { class: 'num', text: s.last ? fmt(s.last.value) : '–' }),
      ]);
      tr.addEventListener('click', () => openSensor(s.sensor, s.component));
      return tr;
    }));
    const open = (data.alerts && data.alerts.open) || [];
    const body = $('incident-table').tBodies[0];
    if (!open.length) {
      body.replaceChildren(el('tr', {}, [el('td', { class: 'muted', colspan: '6', text: 'none open' })]));
      return;
    }
    body.replaceChildren(...open.map((a) => el('tr', {}, [
      el('td', { text: time(a.starts_at_ms) }), el('td', { text: a.component_id }),
      el('td', { text: a.key || '' }), el('td', { class: 'num', text: String(a.anomalies) }),
      el('td', { class: 'num', text: fmt(a.peak_score) }), el('td', { text: a.reason || '' }),
    ])));
  }

  // ---- live feed ---------------------------------------------------------------------
  let feed = null;
  function openFeed() {
    if (feed) feed.close();
    let url = '/events';
    if (selected) {
      url += '?sensor=' + encodeURIComponent(selected.sensor) + '&component=' + encodeURIComponent(selected.component) +
        (series ? '&after=' + series.total : '');
    }
    feed = new EventSource(url);
    feed.addEventListener('components', (e) => onComponents(JSON.parse(e.data)));
    feed.addEventListener('overview', (e) => onOverview(JSON.parse(e.data)));
    feed.addEventListener('points', (e) => onPoints(JSON.parse(e.data)));
    feed.addEventListener('error', () => { $('status').textContent = 'reconnecting…'; });
  }

  // ---- parameters and history --------------------------------------------------------
  let componentIds = '';
  function fillComponentSelect(components) {
    const tunable = components.filter((c) => c.tunable).map((c) => c.id);
    const all = components.map((c) => c.id);
    const ids = tunable.concat(all.filter((id) => !tunable.includes(id)));
    if (ids.join(',') === componentIds) return;
    componentIds = ids.join(',');
    const select = $('param-component');
    const current = select.value;
    select.replaceChildren(...ids.map((id) => el('option', { value: id, text: id + (tunable.includes(id) ? ' (tunable)' : '') })));
    if (ids.includes(current)) select.value = current;
    loadParams();
  }

  $('param-component').addEventListener('change', () => { loadParams(); loadChanges(); });

  function parseValue(text, type) {
    const t = text.trim();
    if (/integer|number/.test(type || '')) {
      const n = Number(t);
      return Number.isNaN(n) || t === '' ? t : n;
    }
    if (/boolean/.test(type || '')) return t === 'true';
    try { return JSON.parse(t); } catch (_) { return t; }
  }

  let paramsAsked = 0;
  async function loadParams() {
    const id = $('param-component').value;
    const body = $('param-table').tBodies[0];
    if (!id) return;
    const asked = ++paramsAsked;
    if (!token) {
      body.replaceChildren(el('tr', {}, [el('td', { colspan: '5', class: 'muted', text: 'Parameters show settings: they need the admin token (Token… above).' })]));
      return;
    }
    let r;
    try {
      r = await api('/components/' + encodeURIComponent(id) + '/params');
    } catch (e) {
      if (asked === paramsAsked) body.replaceChildren(el('tr', {}, [el('td', { colspan: '5', class: 'error', text: e.message })]));
      return;
    }
    if (asked !== paramsAsked) return; // a later request answers for the current choice
    // A refresh keeps what the user is typing.
    const edits = {};
    if (body.dataset.component === id) {
      for (const i of body.querySelectorAll('input.edit.changed')) edits[i.dataset.param] = i.value;
    }
    body.dataset.component = id;
    body.replaceChildren(...r.params.map((p) => {
      let valueCell;
      if (p.tunable) {
        const input = el('input', { class: 'edit', 'data-param': p.name, value: fmt(p.value) });
        const apply = el('button', { type: 'button', 'data-apply': p.name, text: 'Apply' });
        if (edits[p.name] !== undefined) {
          input.value = edits[p.name];
          input.classList.add('changed');
        }
        input.addEventListener('input', () => input.classList.toggle('changed', input.value !== fmt(p.value)));
        input.addEventListener('keydown', (e) => { if (e.key === 'Enter') apply.click(); });
        apply.addEventListener('click', () => change(id, p.name, parseValue(input.value, p.type)));
        valueCell = el('td', {}, [input, ' ', apply]);
      } else {
        valueCell = el('td', { text: fmt(p.value) });
      }
      return el('tr', {}, [
        el('td', { text: p.name + (p.tunable ? ' ✎' : '') }), valueCell,
        el('td', { text: p.type || '' }), el('td', { text: p.range ? fmt(p.range) : '' }),
        el('td', { class: 'doc', text: p.doc || '' }),
      ]);
    }));
  }

  async function change(id, name, value) {
    const out = $('param-error');
    out.className = 'error';
    out.textContent = '';
    try {
      const r = await api('/components/' + encodeURIComponent(id) + '/params', {
        method: 'PATCH',
        headers: { 'Content-Type': 'application/json', 'X-Tidegauge-Actor': 'dashboard' },
        body: JSON.stringify({ [name]: value }),
      });
      const c = r.changes[0];
      out.className = 'ok';
      out.textContent = c ? `${id}.${c.parameter}: ${fmt(c.old)} → ${fmt(c.new)}` : 'no change';
      loadParams();
      loadChanges();
      loadThreshold();
    } catch (e) {
      out.textContent = `${id}.${name} not changed: ${e.message}`;
    }
  }

  async function loadChanges() {
    const body = $('change-table').tBodies[0];
    if (!token) {
      body.replaceChildren(el('tr', {}, [el('td', { colspan: '6', class: 'muted', text: 'The history needs the admin token.' })]));
      return;
    }
    try {
      const list = await api('/changes');
      list.reverse();
      body.replaceChildren(...list.slice(0, 100).map((c) => el('tr', {}, [
        el('td', { text: c.time || c.at || '' }), el('td', { text: c.component }),
        el('td', { text: c.parameter }), el('td', { text: fmt(c.old) }),
        el('td', { text: fmt(c.new) }), el('td', { text: c.actor }),
      ])));
    } catch (e) {
      body.replaceChildren(el('tr', {}, [el('td', { colspan: '6', class: 'error', text: e.message })]));
    }
  }

  // ---- logs --------------------------------------------------------------------------
  $('log-search').addEventListener('click', async () => {
    $('log-error').textContent = '';
    if (!token) { $('log-error').textContent = 'The logs need the admin token.'; return; }
    const q = new URLSearchParams();
    for (const [k, id] of [['level', 'log-level'], ['component', 'log-component'], ['text', 'log-text'], ['since', 'log-since'], ['until', 'log-until']]) {
      const v = $(id).value.trim();
      if (v) q.set(k, v);
    }
    try {
      const r = await api('/logs?' + q.toString());
      $('log-lines').textContent = r.lines.map((l) => {
        const rest = Object.entries(l).filter(([k]) => !['timestamp', 'level', 'message', 'component_id', 'target'].includes(k))
          .map(([k, v]) => `${k}=${fmt(v)}`).join(' ');
        return `${l.timestamp || ''} ${(l.level || '').padStart(5)} ${l.component_id || '-'}  ${l.message || ''} ${rest}`;
      }).join('\n') || '(no line matches)';
    } catch (e) {
      $('log-error').textContent = e.message;
    }
  });

  // ---- start -------------------------------------------------------------------------
  async function start() {
    showTokenState();
    try {
      topology = await api('/topology');
    } catch (e) {
      $('status').textContent = 'cannot read the topology: ' + e.message;
    }
    openFeed();
    search();
    loadChanges();
  }
  start();
})();
