// The Tidewire admin dashboard: a login form that keeps the admin token in sessionStorage,
// the last five minutes from GET /admin/stats, then every node's snapshot as it arrives on
// GET /admin/stream (Server-Sent Events of the `_tidewire.admin` room, read with fetch so the
// token goes in `Authorization: Bearer`, never in a URL). Charts are hand-drawn SVG.

const TOKEN_KEY = 'tidewire-admin:token';
const WINDOW_MS = 5 * 60 * 1000;
const HISTORY = 300;
const COLORS = ['#4fb3ff', '#46c98b', '#f5a623', '#ff6b6b', '#b38bff'];
const SVG = 'http://www.w3.org/2000/svg';

const $ = (sel) => document.querySelector(sel);

/** node name → array of samples, oldest first. */
const nodes = new Map();
let localNode = '';
let selected = '';
let samplesSeen = 0;
let streamAbort = null;
let drawPending = false;

function token() { return sessionStorage.getItem(TOKEN_KEY) || ''; }

function showLogin(message) {
  $('#dash').hidden = true;
  $('#logout').hidden = true;
  $('#login').hidden = false;
  const err = $('#login-error');
  err.hidden = !message;
  err.textContent = message || '';
  setLive('off', 'signed out');
  $('#token').focus();
}

function setLive(state, text) {
  const el = $('#live');
  el.dataset.state = state;
  el.textContent = text;
}

async function api(path, signal) {
  return fetch(path, { headers: { Authorization: `Bearer ${token()}` }, cache: 'no-store', signal });
}

async function problemText(res) {
  try {
    const p = await res.json();
    return p.detail || p.title || `HTTP ${res.status}`;
  } catch {
    return `HTTP ${res.status}`;
  }
}

async function open() {
  if (!token()) return showLogin('');
  let res;
  try {
    res = await api('/admin/stats');
  } catch (e) {
    return showLogin(`The server did not answer: ${e.message}`);
  }
  if (res.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    return showLogin(`Refused (401): ${await problemText(res)}`);
  }
  if (!res.ok) return showLogin(`HTTP ${res.status}: ${await problemText(res)}`);
  const body = await res.json();
  localNode = body.node;
  selected = selected || localNode;
  nodes.clear();
  for (const n of body.nodes) nodes.set(n.node, n.samples.slice(-HISTORY));
  $('#node').textContent = localNode;
  $('#login').hidden = true;
  $('#dash').hidden = false;
  $('#logout').hidden = false;
  draw();
  stream();
}

/** Reads the SSE stream through fetch; reconnects after two seconds when it ends. */
async function stream() {
  if (streamAbort) streamAbort.abort();
  const abort = new AbortController();
  streamAbort = abort;
  try {
    const res = await api('/admin/stream', abort.signal);
    if (res.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      return showLogin(`Refused (401): ${await problemText(res)}`);
    }
    if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
    setLive('live', 'live');
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      if (buf.length > 1_000_000) buf = '';
      let end;
      while ((end = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, end);
        buf = buf.slice(end + 2);
        const data = block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trimStart()).join('\n');
        if (data) accept(JSON.parse(data));
      }
    }
  } catch (e) {
    if (abort.signal.aborted) return;
  }
  if (streamAbort !== abort) return;
  setLive('off', 'reconnecting…');
  setTimeout(() => { if (streamAbort === abort && token()) stream(); }, 2000);
}

function accept(sample) {
  let list = nodes.get(sample.node);
  if (!list) { list = []; nodes.set(sample.node, list); }
  list.push(sample);
  if (list.length > HISTORY) list.splice(0, list.length - HISTORY);
  samplesSeen += 1;
  if (!drawPending) {
    drawPending = true;
    requestAnimationFrame(() => { drawPending = false; draw(); });
  }
}

// ---- figures

const sum3 = (t) => (t ? t.sse + t.ws + t.poll : 0);
const fmt = (v, digits = 1) => (v == null ? '–' : Number(v).toLocaleString('en', { maximumFractionDigits: digits }));
const ms = (v) => (v == null ? '–' : `${fmt(v, v < 10 ? 2 : 1)} ms`);

function setTile(id, value, text, sub) {
  const el = $(id);
  el.dataset.value = String(value ?? 0);
  el.querySelector('.value').textContent = text;
  el.querySelector('.sub').textContent = sub || '';
}

function draw() {
  const now = Date.now();
  for (const [name, list] of nodes) {
    const last = list[list.length - 1];
    if (!last || now - last.ts > 60_000) nodes.delete(name);
  }
  if (!nodes.has(selected)) selected = nodes.has(localNode) ? localNode : (nodes.keys().next().value || '');
  const list = nodes.get(selected) || [];
  const last = list[list.length - 1];
  $('#dash').dataset.samples = String(samplesSeen);
  $('#dash').dataset.node = selected;
  if (last) {
    const c = last.connections;
    setTile('#fig-connections', sum3(c), fmt(sum3(c), 0), `sse ${c.sse} · ws ${c.ws} · poll ${c.poll}`);
    setTile('#fig-events-in', last.events_in_per_s, fmt(last.events_in_per_s), `${fmt(last.events_in_total, 0)} in all`);
    setTile('#fig-events-out', sum3(last.events_out_per_s), fmt(sum3(last.events_out_per_s)), `${fmt(last.events_out_total, 0)} in all`);
    setTile('#fig-latency', last.write_p99_ms, ms(last.write_p99_ms), `p50 ${ms(last.write_p50_ms)} · ${last.writes} writes`);
    setTile('#fig-slow', last.slow_cuts_total, fmt(last.slow_cuts_total, 0), `${last.slow_cuts} in the last second`);
    setTile('#fig-bus', last.bus_lag_ms, ms(last.bus_lag_ms), `${fmt(last.gaps_filled_total, 0)} gaps filled`);
  }
  const pick = (f) => list.map((s) => [s.ts, f(s)]);
  chart('#chart-connections', now, [
    { name: 'sse', points: pick((s) => s.connections.sse) },
    { name: 'ws', points: pick((s) => s.connections.ws) },
    { name: 'poll', points: pick((s) => s.connections.poll) },
  ]);
  chart('#chart-events', now, [
    { name: 'in', points: pick((s) => s.events_in_per_s) },
    { name: 'out', points: pick((s) => sum3(s.events_out_per_s)) },
  ]);
  chart('#chart-latency', now, [
    { name: 'p50', points: pick((s) => s.write_p50_ms) },
    { name: 'p99', points: pick((s) => s.write_p99_ms) },
  ]);
  chart('#chart-slow', now, [{ name: 'cuts', points: pick((s) => s.slow_cuts) }]);
  chart('#chart-bus', now, [
    { name: 'lag ms', points: pick((s) => s.bus_lag_ms) },
    { name: 'gaps filled', points: pick((s) => s.gaps_filled) },
    { name: 'duplicates', points: pick((s) => s.duplicates) },
    { name: 'outbox lag ms', points: pick((s) => s.outbox_lag_ms ?? null) },
  ]);
  rooms(last);
  nodeTable(now);
}

// ---- charts

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function el(name, attrs, text) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text != null) e.textContent = text;
  return e;
}

/** One line per series over the last five minutes; `points` are `[ts, value|null]`. */
function chart(sel, now, series) {
  const fig = $(sel);
  const svg = fig.querySelector('svg');
  const w = svg.clientWidth || 400;
  const h = svg.clientHeight || 160;
  const left = 38; const bottom = 16; const top = 6; const right = 6;
  svg.setAttribute('viewBox', `0 0 ${w} ${h}`);
  // Five minutes once there is that much; at least one minute, so a fresh node fills the chart.
  let oldest = now;
  for (const s of series) if (s.points.length) oldest = Math.min(oldest, s.points[0][0]);
  const span = Math.min(WINDOW_MS, Math.max(60_000, now - oldest));
  const from = now - span;
  let max = 0;
  for (const s of series) for (const [, v] of s.points) if (v != null && v > max) max = v;
  max = niceMax(max);
  const x = (t) => left + ((t - from) / span) * (w - left - right);
  const y = (v) => top + (1 - v / max) * (h - top - bottom);
  svg.replaceChildren();
  for (let i = 0; i <= 4; i += 1) {
    const v = (max * i) / 4;
    svg.append(el('line', { class: 'grid', x1: left, x2: w - right, y1: y(v), y2: y(v) }));
    svg.append(el('text', { x: left - 4, y: y(v) + 3, 'text-anchor': 'end' }, fmt(v, 2)));
  }
  for (let i = 5; i >= 0; i -= 1) {
    const ago = (span * i) / 5;
    const label = i === 0 ? 'now' : ago >= 120_000 ? `-${fmt(ago / 60_000)}m` : `-${Math.round(ago / 1000)}s`;
    svg.append(el('text', { x: x(now - ago), y: h - 3, 'text-anchor': i === 0 ? 'end' : i === 5 ? 'start' : 'middle' }, label));
  }
  const legend = fig.querySelector('.legend');
  legend.replaceChildren();
  series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    const pts = s.points.filter(([t, v]) => v != null && t >= from).map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`);
    const last = s.points.length ? s.points[s.points.length - 1][1] : null;
    svg.append(el('polyline', { points: pts.join(' '), stroke: color, 'data-series': s.name, 'data-last': last ?? '' }));
    const item = document.createElement('span');
    const swatch = document.createElement('i');
    swatch.style.background = color;
    item.append(swatch, `${s.name} ${last == null ? '–' : fmt(last, 2)}`);
    legend.append(item);
  });
  svg.dataset.max = String(max);
}

function rooms(last) {
  const ol = $('#top-rooms ol');
  ol.replaceChildren();
  $('#room-count').textContent = last ? `(${last.rooms} followed on ${selected})` : '';
  const top = last ? last.top_rooms : [];
  if (!top.length) {
    const li = document.createElement('li');
    li.className = 'empty';
    li.textContent = 'No room is followed right now.';
    ol.append(li);
    return;
  }
  const max = Math.max(...top.map((r) => r.subscribers), 1);
  for (const r of top) {
    const li = document.createElement('li');
    li.dataset.room = r.room;
    const name = document.createElement('span');
    name.className = 'name';
    name.textContent = r.room;
    name.title = r.room;
    const bar = document.createElement('span');
    bar.className = 'bar';
    bar.style.width = `${(100 * r.subscribers) / max}%`;
    const n = document.createElement('span');
    n.className = 'n';
    n.textContent = String(r.subscribers);
    li.append(name, bar, n);
    ol.append(li);
  }
}

function nodeTable(now) {
  const body = $('#nodes tbody');
  body.replaceChildren();
  for (const [name, list] of nodes) {
    const s = list[list.length - 1];
    const tr = document.createElement('tr');
    tr.dataset.node = name;
    tr.setAttribute('aria-selected', String(name === selected));
    const cells = [
      name + (name === localNode ? ' (this)' : ''), fmt(sum3(s.connections), 0), fmt(s.events_in_per_s),
      fmt(sum3(s.events_out_per_s)), ms(s.write_p99_ms), fmt(s.slow_cuts_total, 0),
      fmt(s.gaps_filled_total, 0), ms(s.bus_lag_ms), ms(s.outbox_lag_ms), `${Math.max(0, Math.round((now - s.ts) / 1000))} s ago`,
    ];
    for (const c of cells) {
      const td = document.createElement('td');
      td.textContent = c;
      tr.append(td);
    }
    tr.addEventListener('click', () => { selected = name; draw(); });
    body.append(tr);
  }
}

// ---- start

$('#login').addEventListener('submit', (e) => {
  e.preventDefault();
  const t = $('#token').value.trim();
  if (!t) return;
  sessionStorage.setItem(TOKEN_KEY, t);
  $('#token').value = '';
  open();
});
$('#logout').addEventListener('click', () => {
  sessionStorage.removeItem(TOKEN_KEY);
  if (streamAbort) streamAbort.abort();
  streamAbort = null;
  showLogin('');
});
window.addEventListener('resize', () => { if (!$('#dash').hidden) draw(); });
// Charts slide even when no sample arrives (a silent node shows as ended lines).
setInterval(() => { if (!$('#dash').hidden) draw(); }, 5000);

window.tidewireAdmin = { nodes, get selected() { return selected; }, get samples() { return samplesSeen; } };
open();
