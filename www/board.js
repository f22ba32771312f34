// Board model of the availability demo: cell keys, item ids and the heat map.
// Pure functions only (no DOM, no SDK), so the rules are easy to read and to test.
//
// One item per (person, cell): id `<clientId>.<day>-<hour>`, value `{name, on: true}`.
// Unmarking deletes the item. The heat of a cell is the number of people marking it.

/** Day labels, Monday first; a cell's day is its index here. */
export const DAYS = ['Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat', 'Sun'];
/** Hours shown, 24 h clock: 08:00 … 19:00 (each cell is one hour). */
export const HOURS = Array.from({ length: 12 }, (_, i) => 8 + i);

/** Names of rooms and items: the protocol's alphabet. */
export const NAME_RE = /^[A-Za-z0-9_.:-]{1,128}$/;
/** Board ids are short enough that `board-<id>` stays a valid room name. */
export const BOARD_RE = /^[A-Za-z0-9_-]{1,64}$/;

/** The key of a cell, as used in `data-cell` and in item ids: `<day>-<hour>`. */
export const cellKey = (day, hour) => `${day}-${hour}`;

/** A readable label for a cell key: `Tue 10:00`. */
export function cellLabel(key) {
  const [day, hour] = key.split('-').map(Number);
  return `${DAYS[day] ?? '?'} ${String(hour).padStart(2, '0')}:00`;
}

/** The item id of one person's mark on one cell. */
export const itemId = (clientId, key) => `${clientId}.${key}`;

/** Splits an item id into `{owner, cell}`, or null when it is not a mark of this board. */
export function parseItemId(id) {
  const dot = id.lastIndexOf('.');
  if (dot <= 0) return null;
  const owner = id.slice(0, dot);
  const cell = id.slice(dot + 1);
  const m = /^(\d)-(\d{1,2})$/.exec(cell);
  if (!m) return null;
  const day = Number(m[1]);
  const hour = Number(m[2]);
  if (day >= DAYS.length || !HOURS.includes(hour)) return null;
  return { owner, cell };
}

/** True when an item (as the SDK reports it) marks its cell as free. */
export function isOn(item) {
  if (!item || item.deleted) return false;
  const v = item.value;
  return v != null && typeof v === 'object' && v.on !== false;
}

/** A random id from the protocol's alphabet, `len` characters long. */
export function randomId(len = 10) {
  const alphabet = 'abcdefghijkmnopqrstuvwxyz23456789';
  const bytes = new Uint8Array(len);
  crypto.getRandomValues(bytes);
  let out = '';
  for (const b of bytes) out += alphabet[b % alphabet.length];
  return out;
}

/** A stable colour for a person, from their client id. */
export function colorFor(clientId) {
  let h = 2166136261;
  for (let i = 0; i < clientId.length; i++) {
    h ^= clientId.charCodeAt(i);
    h = Math.imul(h, 16777619);
  }
  const hue = (h >>> 0) % 360;
  return `hsl(${hue} 65% 42%)`;
}

/**
 * Folds the room's items into per-cell facts.
 *
 * `items` is an iterable of `{id, value, version, pending}`. Returns a Map from cell key to
 * `{count, names, owners, mine, minePending}`: `count` people mark the cell (my own mark counts as soon
 * as I make it), `mine` is whether I mark it (optimistically), `minePending` whether my last
 * write to it is still unconfirmed.
 */
export function foldCells(items, me) {
  const cells = new Map();
  const cell = (k) => {
    let c = cells.get(k);
    if (!c) {
      c = { count: 0, names: [], owners: [], mine: false, minePending: false };
      cells.set(k, c);
    }
    return c;
  };
  const owners = new Set();
  for (const it of items) {
    const parsed = parseItemId(it.id);
    if (!parsed) continue;
    const c = cell(parsed.cell);
    const on = isOn(it);
    if (parsed.owner === me) {
      c.mine = on;
      c.minePending = Boolean(it.pending);
    }
    if (on) {
      c.count += 1;
      c.names.push(it.value.name || parsed.owner);
      c.owners.push(parsed.owner);
      owners.add(parsed.owner);
    }
  }
  return { cells, owners };
}

/** The cells with the highest count, when at least two people share them. */
export function bestCells(cells) {
  let best = 1;
  let keys = [];
  for (const [k, c] of cells) {
    if (c.count > best) {
      best = c.count;
      keys = [k];
    } else if (c.count === best && best > 1) {
      keys.push(k);
    }
  }
  return { count: keys.length ? best : 0, keys: keys.sort(compareCells) };
}

function compareCells(a, b) {
  const [ad, ah] = a.split('-').map(Number);
  const [bd, bh] = b.split('-').map(Number);
  return ad - bd || ah - bh;
}

/**
 * Deep-copies a value the SDK handed over into plain JSON-like data: `Map`s become objects
 * (serde-wasm-bindgen turns JSON objects into `Map`s unless told otherwise), `BigInt`s numbers.
 */
export function plain(v, depth = 0) {
  if (depth > 32) return null;
  if (v instanceof Map) {
    const o = {};
    for (const [k, x] of v) o[String(k)] = plain(x, depth + 1);
    return o;
  }
  if (Array.isArray(v)) return v.map((x) => plain(x, depth + 1));
  if (typeof v === 'bigint') return Number(v);
  if (v && typeof v === 'object') {
    const o = {};
    for (const k of Object.keys(v)) o[k] = plain(v[k], depth + 1);
    return o;
  }
  return v;
}

/** Turns whatever collection the SDK hands over into an array of plain `{id, ...item}`. */
export function normalizeItems(items) {
  const p = plain(items);
  if (!p) return [];
  if (Array.isArray(p)) return p.filter((it) => it && typeof it.id === 'string');
  if (typeof p === 'object') return Object.entries(p).map(([id, it]) => ({ id, ...it }));
  return [];
}
