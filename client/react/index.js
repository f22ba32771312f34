// `tidewire/react`: React bindings of the Tidewire browser SDK. Every hook reads an external
// store through `useSyncExternalStore`, so a render never mixes two states of a room and a
// component re-renders only when what it selected changed.
//
//   import { TidewireProvider, useRoom, useItem } from 'tidewire/react';
//
//   function Cell({ id }) {
//     const item = useItem('board-1', id);              // re-renders only when `id` changes
//     return <td className={item?.pending ? 'pending' : ''}>{item?.value?.label}</td>;
//   }
//   function Board() {
//     const { items, status, put } = useRoom('board-1');
//     if (status === 'loading') return <p>loading…</p>;
//     return <button onClick={() => put('slot-3', { label: 'taken' })}>take</button>;
//   }
//   <TidewireProvider options={{ url: 'http://127.0.0.1:8080' }}><Board /></TidewireProvider>
//
// Importing this module touches no browser global; on the server the hooks give the loading
// state. The store logic lives in ./store.js (no React, tested with `node --test`).
import {
  createContext,
  createElement,
  useCallback,
  useContext,
  useEffect,
  useLayoutEffect,
  useMemo,
  useRef,
  useSyncExternalStore,
} from 'react';
import * as sdk from 'tidewire';
import { ClientHandle, memoSelector, shallowEqual } from './store.js';

export { shallowEqual };

// The `--target web` build exports `init()`, which loads the .wasm; the bundler build loads it
// on import. Loaded once for the page, however many Providers there are.
let wasmReady = null;
function loadWasm() {
  if (wasmReady === null) {
    // Read dynamically: a bundler warns about a static `sdk.default` the bundler build lacks.
    const init = Reflect.get(sdk, 'default');
    wasmReady = Promise.resolve(typeof init === 'function' ? init() : undefined);
  }
  return wasmReady;
}

async function createClient(options) {
  await loadWasm();
  return new sdk.Client(options);
}

const useIsomorphicLayoutEffect = typeof document !== 'undefined' ? useLayoutEffect : useEffect;

const TidewireContext = createContext(null);

/**
 * Owns one `Client` for its subtree: made from `options` (once, when it mounts; closed when it
 * unmounts) or the given `client` (never closed here). Changing `options` later has no effect;
 * give the Provider a `key` to start over.
 */
export function TidewireProvider({ options, client, children }) {
  if (!client && (options === null || typeof options !== 'object')) {
    throw new Error('tidewire/react: <TidewireProvider> needs options={{ url }} or client={client}');
  }
  const optionsRef = useRef(options);
  const handle = useMemo(
    () => new ClientHandle(client ? { client } : { options: optionsRef.current, create: createClient }),
    [client],
  );
  useEffect(() => {
    handle.retain();
    return () => handle.release();
  }, [handle]);
  return createElement(TidewireContext.Provider, { value: handle }, children);
}

function useHandle(hook) {
  const handle = useContext(TidewireContext);
  if (handle === null) {
    throw new Error(`tidewire/react: ${hook}() must be used inside a <TidewireProvider>`);
  }
  return handle;
}

function roomName(room, hook) {
  if (typeof room === 'string') return room;
  if (room !== null && typeof room === 'object' && typeof room.name === 'string') return room.name;
  throw new TypeError(`tidewire/react: ${hook}(room, …): room must be a room name or what useRoom() returned`);
}

/** The connection: `{ state, transport, attempt, delayMs, shared, ready, error }`. */
export function useConnection() {
  const handle = useHandle('useConnection');
  return useSyncExternalStore(handle.subscribe, handle.getSnapshot, handle.getServerSnapshot);
}

/** The Provider's `Client`, or `null` while it is being made (and on the server). */
export function useClient() {
  const handle = useHandle('useClient');
  const getClient = useCallback(() => (handle.connection.ready ? handle.client : null), [handle]);
  return useSyncExternalStore(handle.subscribe, getClient, () => null);
}

/** A room: `{ name, items, seq, status, error, put, delete, publish }` (the writes are stable). */
export function useRoom(name) {
  const handle = useHandle('useRoom');
  const store = handle.roomStore(roomName(name, 'useRoom'));
  const snap = useSyncExternalStore(store.subscribe, store.getSnapshot, store.getServerSnapshot);
  return useMemo(
    () => ({
      name: store.name,
      items: snap.items,
      seq: snap.seq,
      status: snap.status,
      error: snap.error,
      put: store.put,
      delete: store.delete,
      publish: store.publish,
    }),
    [store, snap],
  );
}

/**
 * `selector(items)` of a room, re-rendering only when the selection changes by `isEqual`
 * (`Object.is` by default; `shallowEqual` for arrays and objects built by the selector).
 */
export function useItems(room, selector, isEqual = Object.is) {
  const handle = useHandle('useItems');
  const store = handle.roomStore(roomName(room, 'useItems'));
  const last = useRef({ has: false, value: undefined });
  const [get, getServer] = useMemo(() => {
    const select = memoSelector((snap) => selector(snap.items), isEqual, last.current);
    return [() => select(store.getSnapshot()), () => select(store.getServerSnapshot())];
  }, [store, selector, isEqual]);
  const value = useSyncExternalStore(store.subscribe, get, getServer);
  useEffect(() => {
    last.current = { has: true, value };
  }, [value]);
  return value;
}

/** One item (`{ id, value, version, pending }`) or `null`; re-renders only when it changes. */
export function useItem(room, id) {
  const selector = useCallback((items) => items.find((i) => i.id === id) ?? null, [id]);
  return useItems(room, selector);
}

/**
 * The room's presence: `{ me, others, members }`. With `meta` the client joins the set (again
 * when `meta` changes by value); without, it only watches.
 */
export function usePresence(room, meta) {
  const handle = useHandle('usePresence');
  const store = handle.roomStore(roomName(room, 'usePresence'));
  const members = useSyncExternalStore(
    store.presence.subscribe,
    store.presence.getSnapshot,
    store.presence.getServerSnapshot,
  );
  const client = useClient();
  const metaKey = meta === undefined ? undefined : JSON.stringify(meta);
  useEffect(() => {
    if (client === null || metaKey === undefined) return;
    store.join(JSON.parse(metaKey));
  }, [client, store, metaKey]);
  return useMemo(() => {
    const id = client?.clientId;
    const me = members.find((m) => m.client_id === id) ?? null;
    return { me, others: members.filter((m) => m !== me), members };
  }, [client, members]);
}

function useRoomListener(hook, room, subscribe, handler) {
  const name = roomName(room, hook);
  useHandle(hook);
  const client = useClient();
  const latest = useRef(handler);
  useIsomorphicLayoutEffect(() => {
    latest.current = handler;
  });
  useEffect(() => {
    if (client === null) return;
    const sub = subscribe(client.room(name), (value) => latest.current?.(value));
    return () => sub.unsubscribe();
  }, [client, name, subscribe]);
  return { client, name };
}

function notReady(what) {
  const e = new Error(`tidewire/react: ${what}: the client is not ready yet (the .wasm is still loading)`);
  e.code = 'not_ready';
  return e;
}

/**
 * Calls the latest `handler({ event, data, from })` for broadcasts named `event` from others
 * (`'*'`: every broadcast), without re-subscribing when `handler` changes. Returns the sender
 * `send(data)` of that event.
 */
export function useBroadcast(room, event, handler) {
  const subscribe = useCallback(
    (r, f) => r.onBroadcast((m) => (event === '*' || m.event === event) && f(m)),
    [event],
  );
  const { client, name } = useRoomListener('useBroadcast', room, subscribe, handler);
  return useCallback(
    (data) => {
      if (client === null) throw notReady(`useBroadcast(${JSON.stringify(name)})`);
      client.room(name).broadcast(event, data);
    },
    [client, name, event],
  );
}

/** Calls the latest `handler({ id, value, version, error })` when a write to the room is rolled back. */
export function useRollback(room, handler) {
  const subscribe = useCallback((r, f) => r.onRollback(f), []);
  useRoomListener('useRollback', room, subscribe, handler);
}
