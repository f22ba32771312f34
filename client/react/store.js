// The React-free core of `tidewire/react`: the external stores the hooks read through
// `useSyncExternalStore`. Plain JavaScript with no imports, so it runs (and is tested) in Node.
//
//   const handle = new ClientHandle({ client });       // or { options, create }
//   handle.retain();                                   // a Provider mounted
//   const store = handle.roomStore('board-1');
//   const stop = store.subscribe(() => render(store.getSnapshot()));
//   stop(); handle.release();                          // unmounted: released a tick later
//
// Each snapshot is an immutable object replaced as a whole on every room update, so every
// component of one render reads the same `{ items, seq }` (no tearing). Items keep their
// identity across updates when nothing about them changed, so selectors compared with
// `Object.is` or `shallowEqual` see "no change" for items another write did not touch.

/** `Object.is` on each own enumerable key (one level deep); arrays compare element-wise. */
export function shallowEqual(a, b) {
  if (Object.is(a, b)) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  if (Array.isArray(a)) {
    if (a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i])) return false;
    return true;
  }
  const ka = Object.keys(a);
  if (ka.length !== Object.keys(b).length) return false;
  for (const k of ka) {
    if (!Object.prototype.hasOwnProperty.call(b, k) || !Object.is(a[k], b[k])) return false;
  }
  return true;
}

/** Structural equality of JSON values (what item values are). Depth-bounded. */
export function jsonEqual(a, b, depth = 0) {
  if (Object.is(a, b)) return true;
  if (depth > 64 || typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  if (Array.isArray(a)) {
    if (a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (!jsonEqual(a[i], b[i], depth + 1)) return false;
    return true;
  }
  const ka = Object.keys(a);
  if (ka.length !== Object.keys(b).length) return false;
  for (const k of ka) {
    if (!Object.prototype.hasOwnProperty.call(b, k) || !jsonEqual(a[k], b[k], depth + 1)) return false;
  }
  return true;
}

function sameItem(a, b) {
  return a.id === b.id && a.version === b.version && a.pending === b.pending && jsonEqual(a.value, b.value);
}

/**
 * The new item list, reusing the previous objects (and the previous array, when nothing
 * changed) for items that are equal. Both lists are sorted by id, as `room.items()` gives them.
 */
export function shareItems(prev, next) {
  const byId = new Map();
  for (const item of prev) byId.set(item.id, item);
  let same = prev.length === next.length;
  const out = next.map((item, i) => {
    const old = byId.get(item.id);
    if (old !== undefined && sameItem(old, item)) {
      if (prev[i] !== old) same = false;
      return old;
    }
    same = false;
    return Object.freeze(item);
  });
  return same ? prev : Object.freeze(out);
}

/**
 * A memoized selection over a store's snapshots, as `useSyncExternalStoreWithSelector` does:
 * the same snapshot gives the same selection, and a new selection `isEqual` to the last one
 * gives the last one (so React sees no change and does not re-render).
 */
export function memoSelector(selector, isEqual = Object.is, previous = { has: false, value: undefined }) {
  let hasMemo = false;
  let memoSnap;
  let memoSel;
  return (snapshot) => {
    if (hasMemo && Object.is(memoSnap, snapshot)) return memoSel;
    const next = selector(snapshot);
    const last = hasMemo ? { has: true, value: memoSel } : previous;
    hasMemo = true;
    memoSnap = snapshot;
    memoSel = last.has && isEqual(last.value, next) ? last.value : next;
    return memoSel;
  };
}

const EMPTY = Object.freeze([]);

/** Error a write made before the client exists rejects with. */
function notReady(name) {
  const e = new Error(`tidewire/react: room ${JSON.stringify(name)}: the client is not ready yet (the .wasm is still loading)`);
  e.code = 'not_ready';
  return e;
}

/**
 * One room's snapshot store. Reference counted: the first `subscribe` attaches one
 * `room.subscribe` listener, the last unsubscribe removes it, however many components read it.
 */
export class RoomStore {
  constructor(handle, name) {
    this.handle = handle;
    this.name = name;
    this.listeners = new Set();
    this.sub = null;
    this.room = null;
    this.snapshot = Object.freeze({ items: EMPTY, seq: 0, status: 'loading', error: null });
    this.subscribe = this.subscribe.bind(this);
    this.getSnapshot = this.getSnapshot.bind(this);
    this.getServerSnapshot = () => RoomStore.SERVER;
    // Stable write functions (safe in dependency arrays).
    this.put = (id, value, options) => this.withRoom((r) => r.put(id, value, options));
    this.delete = (id, options) => this.withRoom((r) => r.delete(id, options));
    this.publish = (type, data) => this.withRoom((r) => r.publish(type, data));
    this.presence = new PresenceStore(this);
    // The meta this app last joined the room with (JSON), so a re-run effect does not re-join.
    this.joined = undefined;
  }

  /** Joins the room's presence set with `meta` unless already joined with the same (JSON) meta. */
  join(meta) {
    const key = JSON.stringify(meta ?? null);
    const room = this.getRoom();
    if (!room || this.joined === key) return;
    room.join(meta);
    this.joined = key;
  }

  /** How many listeners read this store now (what keeps its room listener attached). */
  get refs() {
    return this.listeners.size;
  }

  getSnapshot() {
    return this.snapshot;
  }

  subscribe(listener) {
    this.listeners.add(listener);
    if (this.listeners.size === 1) {
      this.handle.active.add(this);
      this.attach();
    }
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.listeners.delete(listener);
      if (this.listeners.size === 0) {
        this.handle.active.delete(this);
        this.detach();
      }
    };
  }

  /** The SDK room, once the client exists (`null` before; throws for a bad name). */
  getRoom() {
    if (this.room) return this.room;
    const client = this.handle.client;
    if (!client) return null;
    this.room = client.room(this.name);
    return this.room;
  }

  withRoom(f) {
    let room;
    try {
      room = this.getRoom();
    } catch (e) {
      return Promise.reject(e);
    }
    if (!room) return Promise.reject(notReady(this.name));
    return f(room);
  }

  /** Called when the first listener came, and when the client became ready. */
  attach() {
    if (this.sub || this.listeners.size === 0) return;
    let room;
    try {
      room = this.getRoom();
    } catch (error) {
      this.set({ items: EMPTY, seq: 0, status: 'error', error });
      return;
    }
    if (!room) return;
    this.sub = room.subscribe((u) => this.update(u.items, u.seq, true));
    // A room another part of the app already used may have its snapshot already.
    this.update(room.items(), room.seq(), room.seq() > 0 || this.snapshot.status === 'ready');
  }

  detach() {
    const sub = this.sub;
    this.sub = null;
    sub?.unsubscribe();
  }

  /** The client was closed: forget its room. */
  reset() {
    this.detach();
    this.presence.detach();
    this.room = null;
    this.joined = undefined;
    this.set({ items: EMPTY, seq: 0, status: 'loading', error: null });
  }

  update(items, seq, ready) {
    const prev = this.snapshot;
    const shared = shareItems(prev.items, items);
    const status = ready || prev.status === 'ready' ? 'ready' : 'loading';
    if (shared === prev.items && seq === prev.seq && status === prev.status) return;
    this.set({ items: shared, seq, status, error: null });
  }

  set(next) {
    this.snapshot = Object.freeze(next);
    for (const l of [...this.listeners]) l();
  }
}
/** A room's presence members as a store; reference counted like [`RoomStore`]. */
export class PresenceStore {
  constructor(roomStore) {
    this.roomStore = roomStore;
    this.listeners = new Set();
    this.sub = null;
    this.snapshot = EMPTY;
    this.subscribe = this.subscribe.bind(this);
    this.getSnapshot = () => this.snapshot;
    this.getServerSnapshot = () => EMPTY;
  }

  get refs() {
    return this.listeners.size;
  }

  subscribe(listener) {
    this.listeners.add(listener);
    if (this.listeners.size === 1) {
      this.roomStore.handle.activePresence.add(this);
      this.attach();
    }
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.listeners.delete(listener);
      if (this.listeners.size === 0) {
        this.roomStore.handle.activePresence.delete(this);
        this.detach();
      }
    };
  }

  attach() {
    if (this.sub || this.listeners.size === 0) return;
    let room;
    try {
      room = this.roomStore.getRoom();
    } catch {
      return; // the room store reports the bad name
    }
    if (!room) return;
    this.sub = room.onPresence((p) => this.set(p.members));
    this.set(room.members());
  }

  detach() {
    const sub = this.sub;
    this.sub = null;
    sub?.unsubscribe();
  }

  set(members) {
    const prev = this.snapshot;
    if (prev.length === members.length && prev.every((m, i) => jsonEqual(m, members[i]))) return;
    this.snapshot = Object.freeze(members.map((m) => Object.freeze(m)));
    for (const l of [...this.listeners]) l();
  }
}

RoomStore.SERVER = Object.freeze({ items: EMPTY, seq: 0, status: 'loading', error: null });

const INITIAL_CONNECTION = Object.freeze({
  state: 'connecting',
  transport: null,
  attempt: undefined,
  delayMs: undefined,
  shared: false,
  ready: false,
  error: null,
});

/**
 * What one `<TidewireProvider>` owns: the client (made from `options` by `create`, or given),
 * its connection state as a store, and the room stores. `retain`/`release` count the mounted
 * Providers using it; the owned client is closed a tick after the last release, so React's
 * StrictMode mount–unmount–mount keeps one client and one connection.
 */
export class ClientHandle {
  /**
   * @param {{ client?: object, options?: object, create?: (options: object) => Promise<object> | object,
   *           schedule?: (f: () => void) => unknown, cancel?: (t: unknown) => void }} init
   */
  constructor({ client, options, create, schedule, cancel }) {
    this.owned = !client;
    this.options = options;
    this.create = create;
    this.schedule = schedule ?? ((f) => setTimeout(f, 0));
    this.cancel = cancel ?? ((t) => clearTimeout(t));
    this.client = client ?? null;
    this.stores = new Map();
    this.active = new Set();
    this.activePresence = new Set();
    this.listeners = new Set();
    this.refs = 0;
    this.pendingClose = null;
    this.started = false;
    this.closed = false;
    this.stateSub = null;
    this.generation = 0;
    this.connection = INITIAL_CONNECTION;
    this.subscribe = this.subscribe.bind(this);
    this.getSnapshot = () => this.connection;
    this.getServerSnapshot = () => INITIAL_CONNECTION;
  }

  subscribe(listener) {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  emit() {
    for (const l of [...this.listeners]) l();
  }

  roomStore(name) {
    let store = this.stores.get(name);
    if (!store) {
      store = new RoomStore(this, name);
      this.stores.set(name, store);
    }
    return store;
  }

  retain() {
    this.refs++;
    if (this.pendingClose !== null) {
      this.cancel(this.pendingClose);
      this.pendingClose = null;
    }
    if (!this.started) {
      this.started = true;
      this.start();
    }
  }

  release() {
    this.refs = Math.max(0, this.refs - 1);
    if (this.refs > 0 || this.pendingClose !== null) return;
    this.pendingClose = this.schedule(() => {
      this.pendingClose = null;
      if (this.refs === 0) this.stop();
    });
  }

  async start() {
    this.closed = false;
    const generation = ++this.generation;
    try {
      if (!this.client) {
        const client = await this.create(this.options);
        if (this.closed || generation !== this.generation) {
          // Unmounted while the .wasm loaded: never connect.
          client.close();
          return;
        }
        this.client = client;
      }
      this.watch(this.client);
    } catch (error) {
      if (generation === this.generation) this.setConnection({ ...INITIAL_CONNECTION, state: 'closed', error });
    }
  }

  watch(client) {
    const read = (s) => ({
      state: s.state,
      transport: s.transport ?? client.transport?.() ?? null,
      attempt: s.attempt,
      delayMs: s.delayMs,
      shared: typeof client.shared === 'boolean' ? client.shared : false,
      ready: true,
      error: null,
    });
    this.stateSub = client.onState((s) => this.setConnection(read(s)));
    this.setConnection(read(client.state()));
    for (const store of [...this.active]) store.attach();
    for (const store of [...this.activePresence]) store.attach();
  }

  setConnection(next) {
    const prev = this.connection;
    if (prev && shallowEqual(prev, next)) return;
    this.connection = Object.freeze(next);
    this.emit();
  }

  stop() {
    this.closed = true;
    this.generation++;
    this.started = false;
    this.stateSub?.unsubscribe();
    this.stateSub = null;
    if (this.owned && this.client) {
      this.client.close();
      this.client = null;
      for (const store of this.stores.values()) store.reset();
      this.setConnection(INITIAL_CONNECTION);
    }
  }
}
