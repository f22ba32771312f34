// Unit tests of the demo board's model (www/board.js): item ids, the heat map fold, the best
// hours and the conversion of what the SDK hands over. No browser, no server.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { ROOT } from './demo-helpers.mjs';

const board = await import(pathToFileURL(join(ROOT, 'www/board.js')).href);
const { DAYS, HOURS, NAME_RE, cellKey, cellLabel, itemId, parseItemId, isOn, randomId, colorFor,
  foldCells, bestCells, normalizeItems, plain } = board;

test('item ids are valid protocol names and parse back', () => {
  for (const day of DAYS.keys()) {
    for (const hour of HOURS) {
      const id = itemId('uabc123def45', cellKey(day, hour));
      assert.match(id, NAME_RE);
      assert.deepEqual(parseItemId(id), { owner: 'uabc123def45', cell: `${day}-${hour}` });
    }
  }
  // Owners may contain dots; the cell is after the last one.
  assert.deepEqual(parseItemId('a.b.2-10'), { owner: 'a.b', cell: '2-10' });
});

test('ids that are not marks of this board are ignored', () => {
  for (const id of ['slot-3', '.2-10', 'u1.7-10', 'u1.2-7', 'u1.2-20', 'u1.2-x', 'u1.22-10', 'u1.']) {
    assert.equal(parseItemId(id), null, id);
  }
});

test('cell labels read as day and hour', () => {
  assert.equal(cellLabel('0-8'), 'Mon 08:00');
  assert.equal(cellLabel('6-19'), 'Sun 19:00');
});

test('isOn: a value with on !== false marks the cell; deleted or null does not', () => {
  assert.equal(isOn({ value: { name: 'a', on: true } }), true);
  assert.equal(isOn({ value: { name: 'a' } }), true);
  assert.equal(isOn({ value: { on: false } }), false);
  assert.equal(isOn({ value: null }), false);
  assert.equal(isOn({ value: 1 }), false);
  assert.equal(isOn({ value: { on: true }, deleted: true }), false);
  assert.equal(isOn(undefined), false);
});

test('foldCells counts people per cell, and knows my own (pending) marks', () => {
  const items = [
    { id: 'me.1-9', value: { name: 'Me', on: true }, version: 1, pending: false },
    { id: 'me.1-10', value: { name: 'Me', on: true }, version: 0, pending: true },
    { id: 'ann.1-9', value: { name: 'Ann', on: true }, version: 2, pending: false },
    { id: 'bob.1-9', value: { name: 'Bob', on: false }, version: 3, pending: false },
    { id: 'bob.2-11', value: { name: 'Bob', on: true }, version: 1, pending: false },
    { id: 'unrelated', value: { x: 1 }, version: 1, pending: false },
  ];
  const { cells, owners } = foldCells(items, 'me');
  assert.deepEqual(cells.get('1-9'), { count: 2, names: ['Me', 'Ann'], owners: ['me', 'ann'], mine: true, minePending: false });
  assert.deepEqual(cells.get('1-10'), { count: 1, names: ['Me'], owners: ['me'], mine: true, minePending: true });
  assert.equal(cells.get('2-11').mine, false);
  assert.equal(cells.get('2-11').count, 1);
  assert.deepEqual([...owners].sort(), ['ann', 'bob', 'me']);
});

test('bestCells: the most shared hours, only when at least two people share them', () => {
  const mk = (entries) => new Map(entries.map(([k, count]) => [k, { count }]));
  assert.deepEqual(bestCells(mk([['0-9', 1], ['1-9', 1]])), { count: 0, keys: [] });
  assert.deepEqual(bestCells(mk([['3-9', 2], ['0-10', 3], ['0-9', 3], ['1-9', 1]])), { count: 3, keys: ['0-9', '0-10'] });
});

test('plain turns Maps, nested arrays and BigInts into JSON-like data', () => {
  const m = new Map([['items', [new Map([['id', 'a'], ['value', new Map([['on', true]])], ['version', 3n]])]]]);
  assert.deepEqual(plain(m), { items: [{ id: 'a', value: { on: true }, version: 3 }] });
  assert.deepEqual(normalizeItems(plain(m).items), [{ id: 'a', value: { on: true }, version: 3 }]);
  assert.deepEqual(normalizeItems({ a: { version: 1 } }), [{ id: 'a', version: 1 }]);
  assert.deepEqual(normalizeItems(null), []);
  assert.deepEqual(normalizeItems([{ nope: 1 }, { id: 'x' }]), [{ id: 'x' }]);
});

test('random ids and colours', () => {
  const ids = new Set(Array.from({ length: 200 }, () => randomId(8)));
  assert.equal(ids.size, 200);
  for (const id of ids) assert.match(id, /^[a-z0-9]{8}$/);
  assert.equal(colorFor('uada'), colorFor('uada'), 'stable');
  assert.match(colorFor('x'), /^hsl\(\d{1,3} 65% 42%\)$/);
});
