// Unit tests of the React-free store behind `tidewire/react`, with a fake client:
//   node --test client/react/
import assert from 'node:assert/strict';
import test from 'node:test';
import { ClientHandle, memoSelector, shallowEqual, shareItems } from './store.js';

/** A client double that records listeners the way the SDK's `Client`/`Room` hand them out. */
function fakeClient() {
  const rooms = new Map();
  const client = {
    closed: 0,
    stateListeners: new Set(),
    clientId: 'me',
    state: () => ({ state: 'open', transport: 'sse' }),
    transport: () => 'sse',
    onState(f) {
      client.stateListeners.add(f);
      return { unsubscribe: () => client.stateListeners.delete(f) };
    },
    close() {
      client.closed++;
    },
    room(name) {
      if (name.includes(' ')) throw Object.assign(new Error('bad room name'), { code: 'bad_room_name' });
      let r = rooms.get(name);
      if (!r) {
        r = {
          name,
          state: { items: [], seq: 0 },
          listeners: new Set(),
          presence: new Set(),
          joins: [],
          items: () => r.state.items.map((i) => ({ ...i })),
          seq: () => r.state.seq,
          members: () => [],
          join: (meta) => r.joins.push(meta),
          subscribe(f) {
            r.listeners.add(f);
            return { unsubscribe: () => r.listeners.delete(f) };
          },
          onPresence(f) {
            r.presence.add(f);
            return { unsubscribe: () => r.presence.delete(f) };
          },
          emit(items, seq) {
            r.state = { items, seq };
            for (const f of r.listeners) f({ items: r.items(), seq, event: { type: 'item.put' } });
          },
          put: async () => ({ type: 'item.put' }),
        };
        rooms.set(name, r);
      }
      return r;
    },
  };
  return client;
}

test('shallowEqual compares one level deep', () => {
  const a = { x: 1 };
  assert.ok(shallowEqual({ a, n: 1 }, { a, n: 1 }));
  assert.ok(!shallowEqual({ a, n: 1 }, { a: { x: 1 }, n: 1 }));
  assert.ok(shallowEqual([a, 2], [a, 2]));
  assert.ok(!shallowEqual([a], [a, 2]));
  assert.ok(!shallowEqual([], {}));
  assert.ok(!shallowEqual({ a: 1 }, { b: 1 }));
  assert.ok(shallowEqual(NaN, NaN));
  assert.ok(!shallowEqual(null, {}));
});

test('shareItems keeps unchanged items (and the array) by identity', () => {
  const prev = shareItems([], [
    { id: 'a', value: { n: 1 }, version: 1, pending: false },
    { id: 'b', value: { n: 2 }, version: 1, pending: false },
  ]);
  const same = shareItems(prev, [
    { id: 'a', value: { n: 1 }, version: 1, pending: false },
    { id: 'b', value: { n: 2 }, version: 1, pending: false },
  ]);
  assert.equal(same, prev, 'nothing changed: the same array');
  const next = shareItems(prev, [
    { id: 'a', value: { n: 5 }, version: 2, pending: false },
    { id: 'b', value: { n: 2 }, version: 1, pending: false },
  ]);
  assert.notEqual(next, prev);
  assert.notEqual(next[0], prev[0], 'a changed');
  assert.equal(next[1], prev[1], 'b kept its identity');
  const pending = shareItems(next, [
    { id: 'a', value: { n: 5 }, version: 2, pending: true },
    { id: 'b', value: { n: 2 }, version: 1, pending: false },
  ]);
  assert.notEqual(pending[0], next[0], 'a pending flag change is a change');
});

test('memoSelector returns the previous selection when isEqual says so', () => {
  let calls = 0;
  const select = memoSelector((s) => (calls++, s.items.map((i) => i.id)), shallowEqual);
  const s1 = { items: [{ id: 'a' }] };
  const first = select(s1);
  assert.equal(select(s1), first, 'same snapshot: memoized');
  assert.equal(calls, 1);
  const second = select({ items: [{ id: 'a' }] });
  assert.equal(second, first, 'equal selection keeps the old one');
  assert.deepEqual(select({ items: [{ id: 'a' }, { id: 'b' }] }), ['a', 'b']);
  const carried = memoSelector((s) => [s.n], shallowEqual, { has: true, value: [1] });
  const previous = carried({ n: 1 });
  assert.deepEqual(previous, [1]);
});

test('room stores are reference counted: one room listener however many readers', () => {
  const client = fakeClient();
  const handle = new ClientHandle({ client });
  handle.retain();
  const store = handle.roomStore('board');
  assert.equal(handle.roomStore('board'), store, 'one store per room');
  let seen = 0;
  const stopA = store.subscribe(() => seen++);
  const stopB = store.subscribe(() => seen++);
  const room = client.room('board');
  assert.equal(room.listeners.size, 1, 'two readers, one listener');
  room.emit([{ id: 'a', value: 1, version: 1, pending: false }], 1);
  assert.equal(seen, 2);
  assert.equal(store.getSnapshot().status, 'ready');
  assert.equal(store.getSnapshot().items[0].id, 'a');
  const snap = store.getSnapshot();
  room.emit([{ id: 'a', value: 1, version: 1, pending: false }], 1);
  assert.equal(store.getSnapshot(), snap, 'an identical update keeps the snapshot');
  stopA();
  stopA(); // twice is harmless
  assert.equal(room.listeners.size, 1);
  stopB();
  assert.equal(room.listeners.size, 0, 'the last reader removed the listener');
  // StrictMode's subscribe → unsubscribe → subscribe ends with exactly one listener.
  const s1 = store.subscribe(() => {});
  s1();
  const s2 = store.subscribe(() => {});
  assert.equal(room.listeners.size, 1);
  s2();
});

test('a bad room name gives status error, not a throw', () => {
  const handle = new ClientHandle({ client: fakeClient() });
  handle.retain();
  const store = handle.roomStore('not a name');
  store.subscribe(() => {});
  assert.equal(store.getSnapshot().status, 'error');
  assert.equal(store.getSnapshot().error.code, 'bad_room_name');
});

test('an owned client is made once and closed a tick after the last release (StrictMode)', async () => {
  const made = [];
  const timers = [];
  const handle = new ClientHandle({
    options: { url: 'http://127.0.0.1:1' },
    create: async (o) => {
      const c = fakeClient();
      made.push([o, c]);
      return c;
    },
    schedule: (f) => (timers.push(f), timers.length),
    cancel: (t) => (timers[t - 1] = null),
  });
  const store = handle.roomStore('board');
  store.subscribe(() => {});
  assert.equal(store.getSnapshot().status, 'loading');
  await assert.rejects(store.put('a', 1), (e) => e.code === 'not_ready');
  // mount, StrictMode unmount, mount again
  handle.retain();
  handle.release();
  handle.retain();
  for (const t of timers) t?.();
  await new Promise((r) => setImmediate(r));
  assert.equal(made.length, 1, 'one client');
  const client = made[0][1];
  assert.equal(client.closed, 0);
  assert.equal(handle.getSnapshot().state, 'open');
  assert.equal(handle.getSnapshot().ready, true);
  assert.equal(client.room('board').listeners.size, 1, 'the waiting store attached once ready');
  assert.equal(client.stateListeners.size, 1);
  handle.release();
  assert.equal(client.closed, 0, 'not yet: a remount may follow');
  for (const t of timers) t?.();
  assert.equal(client.closed, 1, 'closed after the last release');
  assert.equal(client.stateListeners.size, 0);
  assert.equal(handle.getSnapshot().ready, false);
  assert.equal(store.getSnapshot().status, 'loading');
});

test('a given client is never closed by the handle', async () => {
  const client = fakeClient();
  const handle = new ClientHandle({ client, schedule: (f) => f() });
  handle.retain();
  await new Promise((r) => setImmediate(r));
  handle.release();
  assert.equal(client.closed, 0);
  assert.equal(client.stateListeners.size, 0);
});

test('join is sent once per distinct meta', () => {
  const client = fakeClient();
  const handle = new ClientHandle({ client });
  handle.retain();
  const store = handle.roomStore('board');
  store.join({ name: 'Ada' });
  store.join({ name: 'Ada' });
  store.join({ name: 'Grace' });
  assert.deepEqual(client.room('board').joins, [{ name: 'Ada' }, { name: 'Grace' }]);
});
