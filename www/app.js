// Tidewire demo: a shared availability board.
//
// Everything live goes through the `tidewire` npm package (the wasm SDK built from client/),
// served by the tidewire binary at /pkg/. This file only wires the SDK to the page:
//
//   const client = new Client({ url: location.origin, transport });
//   const room = client.room(`board-${id}`);
//   room.subscribe(({ items, seq, event }) => render(items));
//   await room.put(`${me}.${day}-${hour}`, { name, on: true });   // optimistic, rolled back on 409
//
// Test hooks (stable): [data-cell="<day>-<hour>"] with data-state="off|on|mine|pending" and
// data-count; #conn-state (data-state), #conn-transport (data-transport), #last-seq,
// #event-log (li[data-type][data-seq]), #presence (li[data-client-id]), #rollback-message.

import {
  DAYS, HOURS, BOARD_RE, cellKey, cellLabel, itemId, parseItemId, isOn, randomId, colorFor,
  foldCells, bestCells, normalizeItems, plain,
} from './board.js';

const PKG_DIR = '/pkg/';
const PKG_DEFAULT_ENTRY = 'tidewire_client.js';
const TRANSPORTS = ['auto', 'sse', 'ws', 'longpoll', 'poll'];
const TRANSPORT_LABEL = { sse: 'SSE', ws: 'WebSocket', longpoll: 'long-poll', poll: 'poll', auto: 'auto' };
const LOG_MAX = 50;
const STORE = {
  clientId: 'tidewire-demo:client-id',
  name: 'tidewire-demo:name',
};

const $ = (sel) => document.querySelector(sel);

// ---------------------------------------------------------------- identity and board

function storageGet(key) {
  try { return localStorage.getItem(key); } catch { return null; }
}
function storageSet(key, value) {
  try { localStorage.setItem(key, value); } catch { /* private mode: keep it in memory */ }
}

function loadClientId() {
  let id = storageGet(STORE.clientId);
  if (!id || !/^[a-z0-9]{6,32}$/.test(id)) {
    id = `u${randomId(11)}`;
    storageSet(STORE.clientId, id);
  }
  return id;
}

const params = new URLSearchParams(location.search);
const me = loadClientId();
const myColor = colorFor(me);
let myName = (storageGet(STORE.name) || '').trim() || `Guest ${me.slice(1, 5)}`;

let boardId = params.get('board');
let bootNote = '';
if (!boardId || !BOARD_RE.test(boardId)) {
  if (boardId) bootNote = `“${boardId}” is not a valid board id; here is a new board.`;
  boardId = randomId(8);
  params.set('board', boardId);
  history.replaceState(null, '', `${location.pathname}?${params}`);
}
const roomName = `board-${boardId}`;
let transportChoice = TRANSPORTS.includes(params.get('transport')) ? params.get('transport') : 'auto';

// ---------------------------------------------------------------- page state

/** @type {Map<string, object>} item id -> item as the SDK reports it */
let items = new Map();
let lastSeq = 0;
let members = [];
const hoverTags = new Map(); // client id -> {cell, timer}
let sdk = null;
let client = null;
let room = null;
let generation = 0; // callbacks of a replaced client are ignored
let stateTimer = null;
let lastState = null;
// Listener handles of the current client, unsubscribed when the transport picker replaces it.
let subscriptions = [];

// ---------------------------------------------------------------- grid

function buildGrid() {
  const head = $('#grid-days');
  DAYS.forEach((d, i) => {
    const th = document.createElement('th');
    th.scope = 'col';
    th.textContent = d;
    th.dataset.day = String(i);
    head.append(th);
  });
  const body = $('#grid-body');
  for (const hour of HOURS) {
    const tr = document.createElement('tr');
    const th = document.createElement('th');
    th.scope = 'row';
    th.textContent = `${String(hour).padStart(2, '0')}:00`;
    tr.append(th);
    DAYS.forEach((_, day) => {
      const td = document.createElement('td');
      const b = document.createElement('button');
      b.type = 'button';
      b.className = 'cell';
      const key = cellKey(day, hour);
      b.dataset.cell = key;
      b.dataset.state = 'off';
      b.dataset.count = '0';
      b.setAttribute('aria-pressed', 'false');
      b.setAttribute('aria-label', `${cellLabel(key)}: nobody free yet`);
      td.append(b);
      tr.append(td);
    });
    body.append(tr);
  }
  body.addEventListener('click', (e) => {
    const b = e.target.closest('[data-cell]');
    if (b) toggle(b.dataset.cell);
  });
  body.addEventListener('pointerover', (e) => {
    const b = e.target.closest('[data-cell]');
    if (b) sendHover(b.dataset.cell);
  });
  $('#grid').addEventListener('pointerleave', () => sendHover(null));
}

function render() {
  const { cells, owners } = foldCells(items.values(), me);
  for (const m of members) owners.add(memberId(m));
  const people = Math.max(owners.size, 1);
  // Names as people call themselves now (presence), else as they were when they marked.
  const current = new Map(members.map((m) => [memberId(m), memberMeta(m).name]));
  current.set(me, myName);
  const best = bestCells(cells);
  const bestSet = new Set(best.keys);
  for (const b of document.querySelectorAll('[data-cell]')) {
    const key = b.dataset.cell;
    const c = cells.get(key) || { count: 0, names: [], owners: [], mine: false, minePending: false };
    const state = c.minePending ? 'pending' : c.mine ? 'mine' : c.count > 0 ? 'on' : 'off';
    if (b.dataset.state !== state) b.dataset.state = state;
    b.dataset.count = String(c.count);
    b.dataset.mine = String(c.mine);
    b.dataset.best = String(bestSet.has(key));
    const heat = c.count / people;
    b.style.setProperty('--heat', heat.toFixed(3));
    b.classList.toggle('dark', heat > 0.55);
    paintCell(b, c);
    b.setAttribute('aria-pressed', String(c.mine));
    const who = c.names.length
      ? c.owners.map((o, i) => String(current.get(o) || c.names[i])).join(', ')
      : 'nobody';
    b.title = `${cellLabel(key)} — free: ${who}${c.minePending ? ' (saving…)' : ''}`;
    b.setAttribute('aria-label', b.title);
  }
  for (const [, tag] of hoverTags) placeHoverTag(tag);
  const note = $('#best-slot');
  if (best.count >= 2) {
    const shown = best.keys.slice(0, 3).map(cellLabel).join(', ');
    const more = best.keys.length > 3 ? ` and ${best.keys.length - 3} more` : '';
    note.textContent = `Best so far: ${shown}${more} — ${best.count} people free.`;
  } else {
    note.textContent = '';
  }
}

/** The count, and one dot per person (in their colour) under it. */
function paintCell(b, c) {
  const sig = `${c.count}|${c.owners.join(',')}`;
  if (b.dataset.sig === sig) return;
  b.dataset.sig = sig;
  const tags = [...b.querySelectorAll('.hover-tag')];
  b.replaceChildren();
  if (c.count > 0) {
    const n = document.createElement('span');
    n.className = 'n';
    n.textContent = String(c.count);
    const dots = document.createElement('span');
    dots.className = 'dots';
    dots.setAttribute('aria-hidden', 'true');
    for (const owner of c.owners.slice(0, 6)) {
      const i = document.createElement('i');
      i.style.setProperty('--c', colorFor(owner));
      dots.append(i);
    }
    b.append(n, dots);
  }
  b.append(...tags);
}

async function toggle(key) {
  if (!room) return;
  const id = itemId(me, key);
  const current = items.get(id);
  try {
    if (isOn(current)) {
      await room.delete(id);
    } else {
      await room.put(id, { name: myName, on: true });
    }
  } catch (err) {
    // A rejected write is reported by onRollback too; this catches the rest (offline, closed).
    if (!isRollbackError(err)) log('error', 'write failed', null, `${key}: ${errorText(err)}`);
  } finally {
    refreshItems();
  }
}

function isRollbackError(err) {
  const code = err && (err.code || (err.error && err.error.code));
  return Boolean(code);
}

function errorText(err) {
  if (!err) return 'unknown error';
  if (typeof err === 'string') return err;
  const e = err.error || err;
  return [e.code, e.message || e.title].filter(Boolean).join(': ') || String(err);
}

// ---------------------------------------------------------------- rollback

let rollbackTimer = null;
function onRollback(raw) {
  const rb = plain(raw);
  const parsed = rb && rb.id ? parseItemId(rb.id) : null;
  const where = parsed ? cellLabel(parsed.cell) : rb?.id || 'an item';
  const err = rb?.error || {};
  const reason = err.code === 'version_conflict'
    ? 'it was changed elsewhere first'
    : (err.message || err.title || err.code || 'the server refused it');
  const box = $('#rollback-message');
  box.textContent = `Your change to ${where} was not saved (${err.code || 'error'}): ${reason}. Showing the server's version again.`;
  box.dataset.code = err.code || '';
  box.dataset.item = rb?.id || '';
  box.hidden = false;
  clearTimeout(rollbackTimer);
  rollbackTimer = setTimeout(() => { box.hidden = true; }, 8000);
  if (parsed) {
    const cell = document.querySelector(`[data-cell="${parsed.cell}"]`);
    if (cell) {
      cell.classList.remove('rolled-back');
      void cell.offsetWidth; // restart the animation
      cell.classList.add('rolled-back');
      setTimeout(() => cell.classList.remove('rolled-back'), 1200);
    }
  }
  log('rollback', 'rollback', null, `${where} ${err.code || ''}`.trim(), `${rb?.id ?? '?'}: ${err.code || ''} ${err.message || ''}`);
  refreshItems();
}

// ---------------------------------------------------------------- presence and hover hints

const memberId = (m) => m.client_id ?? m.clientId ?? m.id ?? '';
const memberMeta = (m) => m.meta || {};

function renderPresence() {
  const ul = $('#presence');
  const list = [...members];
  if (!list.some((m) => memberId(m) === me)) {
    list.unshift({ client_id: me, meta: { name: myName, color: myColor }, local: true });
  }
  ul.replaceChildren(...list.map((m) => {
    const id = memberId(m);
    const meta = memberMeta(m);
    const name = String(meta.name || m.user || id || 'someone');
    const li = document.createElement('li');
    li.dataset.clientId = id;
    li.style.setProperty('--who', safeColor(meta.color, id));
    const av = document.createElement('span');
    av.className = 'avatar';
    av.textContent = name.trim().slice(0, 1).toUpperCase() || '?';
    const nm = document.createElement('span');
    nm.className = 'name';
    nm.textContent = name;
    li.append(av, nm);
    if (id === me) {
      const you = document.createElement('span');
      you.className = 'you';
      you.textContent = '(you)';
      li.append(you);
    }
    return li;
  }));
  $('#presence-count').textContent = String(list.length);
}

function safeColor(c, id) {
  return typeof c === 'string' && /^(#[0-9a-fA-F]{3,8}|hsl\([0-9 .%,]+\))$/.test(c) ? c : colorFor(id || 'x');
}

function refreshMembers(raw) {
  const ev = plain(raw);
  if (!room) return;
  try {
    const got = plain(room.members());
    if (Array.isArray(got)) members = got;
  } catch { /* keep the last list */ }
  if (ev && (ev.type === 'leave' || ev.type === 'presence.leave')) dropHover(ev.member?.client_id ?? ev.data?.client_id);
  renderPresence();
  render();
}

function hoverEnabled() {
  return transportChoice === 'auto' || transportChoice === 'ws';
}

let hoverSent = undefined;
let hoverTimer = null;
function sendHover(cell) {
  if (!room || !hoverEnabled() || hoverSent === cell) return;
  hoverSent = cell;
  clearTimeout(hoverTimer);
  // Coalesce quick moves: at most one broadcast per 80 ms.
  hoverTimer = setTimeout(() => {
    try {
      const p = room.broadcast('cursor', { cell: hoverSent, name: myName, color: myColor });
      if (p && typeof p.catch === 'function') p.catch(() => {});
    } catch { /* broadcasting is best effort */ }
  }, 80);
}

function onBroadcast(raw) {
  const msg = plain(raw);
  const m = msg?.data && msg.event ? msg : msg?.data?.data ? msg.data : msg;
  const from = m?.from;
  const data = m?.data || {};
  if (!from || from === me) return;
  if ($('#log-broadcasts').checked) log('broadcast', 'broadcast', null, `${m.event || ''} ${data.cell ?? '—'} from ${data.name || from}`);
  if (!data.cell) { dropHover(from); return; }
  let tag = hoverTags.get(from);
  if (!tag) {
    tag = { el: document.createElement('span'), timer: null };
    tag.el.className = 'hover-tag';
    hoverTags.set(from, tag);
  }
  tag.cell = String(data.cell);
  tag.el.dataset.name = String(data.name || 'someone').slice(0, 24);
  tag.el.dataset.from = from;
  tag.el.style.setProperty('--who', safeColor(data.color, from));
  placeHoverTag(tag);
  clearTimeout(tag.timer);
  tag.timer = setTimeout(() => dropHover(from), 5000);
}

function placeHoverTag(tag) {
  const cell = document.querySelector(`[data-cell="${CSS.escape(tag.cell)}"]`);
  if (cell && tag.el.parentElement !== cell) cell.append(tag.el);
}

function dropHover(from) {
  const tag = hoverTags.get(from);
  if (!tag) return;
  clearTimeout(tag.timer);
  tag.el.remove();
  hoverTags.delete(from);
}

// ---------------------------------------------------------------- connection badge

function onState(raw) {
  const s = plain(raw);
  const st = typeof s === 'string' ? { state: s } : (s || {});
  const state = st.state || 'connecting';
  const transport = st.transport || safeCall(() => client.transport()) || '';
  const badge = $('#conn-badge');
  const el = $('#conn-state');
  badge.dataset.state = state;
  el.dataset.state = state;
  const tEl = $('#conn-transport');
  tEl.dataset.transport = transport;
  tEl.textContent = TRANSPORT_LABEL[transport] || transport || '–';
  clearInterval(stateTimer);
  if (state === 'reconnecting') {
    const delay = Number(st.delayMs ?? st.delay_ms ?? 0);
    const until = performance.now() + delay;
    el.title = st.attempt ? `attempt ${st.attempt}, waiting ${delay} ms (backoff with jitter)` : '';
    el.dataset.attempt = String(st.attempt ?? '');
    const paint = () => {
      const left = Math.max(0, until - performance.now());
      el.textContent = left > 0 ? `reconnecting in ${(left / 1000).toFixed(1)} s` : 'reconnecting…';
      if (left <= 0) clearInterval(stateTimer);
    };
    paint();
    if (delay > 0) stateTimer = setInterval(paint, 100);
  } else {
    el.textContent = state;
    el.title = '';
  }
  const summary = `${state}${transport ? ` via ${transport}` : ''}${state === 'reconnecting' && st.delayMs != null ? ` in ${(Number(st.delayMs) / 1000).toFixed(1)} s (attempt ${st.attempt ?? '?'})` : ''}`;
  if (summary !== lastState) {
    lastState = summary;
    log('state', 'state', null, summary);
  }
  if (state === 'open') refreshMembers();
}

function safeCall(f) {
  try { return f(); } catch { return null; }
}

function setSeq(seq) {
  if (typeof seq === 'bigint') seq = Number(seq);
  if (typeof seq === 'number' && Number.isFinite(seq) && seq >= 0) {
    lastSeq = seq;
    $('#last-seq').textContent = String(seq);
  }
}

// ---------------------------------------------------------------- event log

function log(kind, type, seq, detail, full, raw) {
  const ol = $('#event-log');
  const li = document.createElement('li');
  li.dataset.kind = kind;
  li.dataset.type = type;
  if (seq != null) li.dataset.seq = String(seq);
  const now = new Date();
  const t = document.createElement('span');
  t.className = 't';
  t.textContent = now.toTimeString().slice(0, 8);
  const ty = document.createElement('span');
  ty.className = 'ty';
  ty.textContent = type;
  const sq = document.createElement('span');
  sq.className = 'sq';
  sq.textContent = seq != null ? `#${seq}` : '';
  const d = document.createElement('span');
  d.className = 'd';
  d.textContent = detail || '';
  d.title = full || detail || '';
  li.append(t, ty, sq, d);
  if (raw !== undefined) {
    // Click an entry to see the whole envelope as it came off the wire.
    li.classList.add('expandable');
    li.tabIndex = 0;
    li.setAttribute('aria-expanded', 'false');
    const flip = () => {
      let pre = li.querySelector('pre');
      if (!pre) {
        pre = document.createElement('pre');
        pre.textContent = JSON.stringify(raw, null, 2);
        pre.addEventListener('click', (e) => e.stopPropagation()); // let people select text
        li.append(pre);
        li.setAttribute('aria-expanded', 'true');
      } else {
        pre.remove();
        li.setAttribute('aria-expanded', 'false');
      }
    };
    li.addEventListener('click', flip);
    li.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); flip(); } });
  }
  ol.prepend(li);
  while (ol.children.length > LOG_MAX) ol.lastElementChild.remove();
}

function logEnvelope(raw) {
  const ev = plain(raw);
  if (!ev || typeof ev !== 'object') return;
  const type = ev.type || 'event';
  const data = ev.data || {};
  let detail = '';
  let kind = 'event';
  let full = '';
  if (type === 'item.put' || type === 'item.deleted') {
    const p = data.id ? parseItemId(data.id) : null;
    const who = data.value?.name || (p ? p.owner.slice(0, 6) : '');
    detail = p ? `${cellLabel(p.cell)} ${who} v${data.version ?? '?'}` : `${data.id ?? ''} v${data.version ?? '?'}`;
    full = `${data.id} v${data.version}${ev.key ? ` key ${ev.key}` : ''}${data.value !== undefined ? ` ${JSON.stringify(data.value)}` : ''}`;
  } else if (type.startsWith('presence.')) {
    kind = 'presence';
    detail = type === 'presence.state'
      ? `${(data.members || []).length} here`
      : String(data.meta?.name || data.client_id || '');
  } else if (type === 'broadcast') {
    if (!$('#log-broadcasts').checked) return;
    kind = 'broadcast';
    detail = `${data.event || ''} from ${data.from || '?'}`;
  } else if (type === 'snapshot') {
    kind = 'state';
    detail = `state loaded at seq ${ev.seq ?? '?'}`;
  } else if (type === 'pending') {
    kind = 'local';
    const p = (ev.id && parseItemId(ev.id)) || null;
    detail = `${p ? cellLabel(p.cell) : ev.id} sent`;
    full = `${ev.id} key ${ev.key ?? '?'}`;
  } else if (type === 'rollback') {
    return; // logged by onRollback with its reason
  } else if (type === 'resync' || type === 'reconnect' || type === 'error') {
    kind = type === 'error' ? 'error' : 'state';
    detail = JSON.stringify(data).slice(0, 120);
  } else {
    detail = JSON.stringify(data).slice(0, 120);
  }
  log(kind, type, ev.seq ?? null, detail, full, ev);
}

// ---------------------------------------------------------------- SDK wiring

function refreshItems() {
  if (!room) return;
  const got = safeCall(() => room.items());
  if (got) setItems(got);
  render();
}

function setItems(raw) {
  items = new Map(normalizeItems(raw).map((it) => [it.id, it]));
}

function joinPresence() {
  // Presence travels over WebSocket: `auto` moves to it, a forced other transport cannot join.
  // The SDK keeps the meta and joins again after every reconnect.
  if (!room || !hoverEnabled()) return;
  try {
    const p = room.join({ name: myName, color: myColor });
    if (p && typeof p.catch === 'function') p.catch((e) => log('error', 'presence', null, errorText(e)));
  } catch (e) {
    log('error', 'presence', null, errorText(e));
  }
}

function connect() {
  const gen = ++generation;
  const live = (f) => (...args) => { if (gen === generation) f(...args); };
  client = new sdk.Client({
    url: location.origin,
    transport: transportChoice,
    clientId: me,
    // The last-resort transport re-reads the snapshot (a board is small): every 400 ms keeps
    // a change visible to everyone within a second even there.
    pollIntervalMs: 400,
  });
  const keep = (sub) => { if (sub) subscriptions.push(sub); };
  keep(client.onState(live(onState)));
  room = client.room(roomName);
  keep(room.subscribe(live((raw) => {
    const update = raw instanceof Map ? plain(raw) : raw;
    if (update?.items) setItems(update.items);
    else refreshItems();
    if (update?.seq != null) setSeq(update.seq);
    if (update?.event) logEnvelope(update.event);
    render();
  })));
  keep(room.onRollback(live(onRollback)));
  keep(room.onPresence(live(refreshMembers)));
  keep(room.onBroadcast(live(onBroadcast)));
  joinPresence();
  refreshItems();
  renderPresence();
  $('#hover-note').textContent = hoverEnabled()
    ? 'Hover a cell: the others see where you point (WebSocket broadcast).'
    : `Presence and hover hints travel over WebSocket; this tab only watches while ${TRANSPORT_LABEL[transportChoice]} is forced.`;
}

function reconnectWith(transport) {
  transportChoice = transport;
  params.set('transport', transport);
  if (transport === 'auto') params.delete('transport');
  history.replaceState(null, '', `${location.pathname}?${params}`);
  generation++;
  for (const sub of subscriptions) safeCall(() => sub.unsubscribe());
  subscriptions = [];
  safeCall(() => client && client.close());
  for (const from of [...hoverTags.keys()]) dropHover(from);
  members = [];
  log('state', 'transport', null, `switching to ${transport}`);
  connect();
}

// ---------------------------------------------------------------- controls

function wireControls() {
  const name = $('#name');
  name.value = myName;
  let nameTimer = null;
  name.addEventListener('input', () => {
    clearTimeout(nameTimer);
    nameTimer = setTimeout(() => {
      const v = name.value.trim().slice(0, 40);
      if (!v || v === myName) return;
      myName = v;
      storageSet(STORE.name, v);
      joinPresence();
      renderPresence();
      render();
    }, 300);
  });

  const share = $('#share-link');
  share.value = `${location.origin}/?board=${encodeURIComponent(boardId)}`;
  share.addEventListener('focus', () => share.select());
  $('#copy-link').addEventListener('click', async () => {
    const btn = $('#copy-link');
    try {
      await navigator.clipboard.writeText(share.value);
    } catch {
      share.select();
      document.execCommand?.('copy');
    }
    btn.textContent = 'Copied';
    setTimeout(() => { btn.textContent = 'Copy link'; }, 1500);
  });

  const picker = $('#transport-picker');
  picker.value = transportChoice;
  picker.addEventListener('change', () => {
    if (TRANSPORTS.includes(picker.value) && picker.value !== transportChoice) reconnectWith(picker.value);
  });

  $('#drop-connection').addEventListener('click', () => {
    if (!client) return;
    log('state', 'drop', null, 'connection cut on purpose');
    try { client.dropConnection(); } catch (e) { log('error', 'drop', null, errorText(e)); }
  });

  $('#clear-log').addEventListener('click', () => $('#event-log').replaceChildren());
  $('#room-name').textContent = roomName;
}

function bootError(msg) {
  const box = $('#boot-error');
  box.textContent = msg;
  box.hidden = false;
  const el = $('#conn-state');
  el.textContent = 'offline';
  el.dataset.state = 'offline';
  $('#conn-badge').dataset.state = 'offline';
}

async function main() {
  document.documentElement.style.setProperty('--me', myColor);
  buildGrid();
  wireControls();
  render();
  renderPresence();
  if (bootNote) bootError(bootNote);
  let entry = PKG_DEFAULT_ENTRY;
  try {
    // The package's own manifest names its entry module (wasm-pack writes `module`).
    const manifest = await (await fetch(`${PKG_DIR}package.json`)).json();
    if (typeof manifest.module === 'string' && /^[\w.-]+\.js$/.test(manifest.module)) entry = manifest.module;
  } catch { /* fall back to the default name */ }
  try {
    sdk = await import(PKG_DIR + entry);
    await sdk.default();
  } catch (e) {
    bootError(`Could not load the Tidewire package from ${PKG_DIR}${entry} (${errorText(e)}). Build it with \`wasm-pack build client --target web --out-dir pkg\` and start \`tidewire serve --pkg-dir client/pkg\`.`);
    return;
  }
  connect();
  window.addEventListener('pagehide', () => safeCall(() => client && client.close()));
}

// For developers poking at the demo in the console, and for the browser tests.
window.tidewireDemo = {
  get client() { return client; },
  get room() { return room; },
  get items() { return [...items.values()]; },
  get lastSeq() { return lastSeq; },
  clientId: me,
  boardId,
  roomName,
};

main();
