// Tidewire browser SDK: TypeScript declarations of the JavaScript API's objects.
// Generated from the Rust crate tidewire-client (client/src/ts.rs); do not edit.
// Regenerate: TIDEWIRE_UPDATE_TS=1 cargo test -p tidewire-client --features ts --lib

/**
 * Transport names; `auto` (the default) picks SSE, WebSocket for presence/broadcast, and falls back to long-poll then polling.
 */
export type TransportName = 'auto' | 'sse' | 'ws' | 'longpoll' | 'poll';

/**
 * Options of `new Client(options)`. Times are in milliseconds unless named otherwise.
 */
export type ClientOptions = {
  /**
   * The server's base URL, e.g. `http://127.0.0.1:8080`.
   */
  url: string,
  /**
   * Force one transport; `auto` (`None` in Rust, the default) uses SSE, a WebSocket for
   * presence and broadcast, and long-poll then polling as fallbacks.
   */
  transport?: TransportName,
  /**
   * Reconnection backoff: a random delay in `[0, min(capMs, baseMs · 2^attempt))`; the
   * attempt counter resets after a connection stayed up `stableMs`
   * (defaults 500, 30000, 10000).
   */
  backoff?: { baseMs?: number, capMs?: number, stableMs?: number, },
  /**
   * SSE and WebSocket must open within this many milliseconds, or they count as stalled
   * (default 5000).
   */
  openTimeoutMs?: number,
  /**
   * An open SSE stream that brings neither an event nor a heartbeat for twice the server's
   * announced heartbeat interval plus this many milliseconds counts as stalled; so does an
   * open WebSocket that brings no frame for twice the ping interval plus this (default 5000).
   */
  heartbeatSlackMs?: number,
  /**
   * While a WebSocket is open, the client sends a `ping` frame this often, in milliseconds
   * (the server answers `pong`); the WebSocket protocol announces no heartbeat interval, so
   * this is the interval its stall bound is computed from (default 15000).
   */
  wsPingMs?: number,
  /**
   * How long a fallback transport runs before the client tries the preferred one again, in
   * milliseconds (default 30000).
   */
  climbMs?: number,
  /**
   * How long an out-of-order event waits for the gap before the snapshot is re-fetched, in
   * milliseconds (default 1000).
   */
  reorderMs?: number,
  /**
   * Snapshot polling interval of the last-resort transport, in milliseconds (default 3000).
   */
  pollIntervalMs?: number,
  /**
   * Long-poll wait, in seconds (default 25, at most 60).
   */
  longPollWaitSecs?: number,
  /**
   * How many times a write is retried, with the same idempotency key, on a network
   * failure (default 8).
   */
  writeRetries?: number,
  /**
   * The stable client id for presence (random by default).
   */
  clientId?: string,
  /**
   * The random source in `[0, 1)` for the jitter (`Math.random` by default).
   */
  random?: () => number,
  /**
   * With auth on: where this client's tokens come from (JavaScript: `getToken`, a function
   * answering a JWT or a promise of one; called again before the token expires). Each
   * client has its own, also for the same server.
   */
  getToken?: () => string | Promise<string>,
};

/**
 * The connection states.
 */
export type StateName = 'connecting' | 'open' | 'reconnecting' | 'degraded' | 'offline' | 'closed';

/**
 * A connection state change. `attempt` and `delayMs` are set for `reconnecting`.
 */
export type ConnectionState = { state: StateName, attempt?: number, delayMs?: number, transport: 'sse' | 'ws' | 'longpoll' | 'poll' | null };

/**
 * An item as the application sees it.
 */
export type RoomItem = {
  /**
   * The item id.
   */
  id: string,
  /**
   * The value (the optimistic one while `pending`).
   */
  value: any,
  /**
   * The last confirmed version (0 when the item was never confirmed).
   */
  version: number,
  /**
   * Whether an optimistic write to this item is not yet confirmed.
   */
  pending: boolean,
};

/**
 * A server event envelope (see `types/protocol.d.ts` for the typed payloads).
 */
export type TidewireEvent = { v: 1, type: string, room: string, seq?: number, id: string, ts: string, key: string | null, data: any };

/**
 * What caused a room update: a server event, or a local change.
 */
export type RoomUpdateCause = TidewireEvent | LocalCause;

/**
 * A change not caused by one server event.
 */
export type LocalCause = {
  "type": "snapshot",
  /**
   * The room.
   */
  room: string,
  /**
   * The seq the snapshot reflects.
   */
  seq: number,
} | {
  "type": "pending",
  /**
   * The room.
   */
  room: string,
  /**
   * The item.
   */
  id: string,
  /**
   * The write's idempotency key.
   */
  key: string,
} | {
  "type": "rollback",
  /**
   * The room.
   */
  room: string,
  /**
   * The item.
   */
  id: string,
  /**
   * The write's idempotency key.
   */
  key: string,
};

/**
 * A room's new state and what caused it.
 */
export type RoomUpdate = {
  /**
   * The items, sorted by id, pending ones included.
   */
  items: Array<RoomItem>,
  /**
   * The last applied seq.
   */
  seq: number,
  /**
   * The cause.
   */
  event: RoomUpdateCause,
};

/**
 * An error as listeners see it.
 */
export type ErrorInfo = {
  /**
   * The stable code.
   */
  code: string,
  /**
   * A human-readable message.
   */
  message: string,
};

/**
 * An optimistic write the server refused.
 */
export type RollbackInfo = {
  /**
   * The item.
   */
  id: string,
  /**
   * The server's current value (`null` when the item does not exist).
   */
  value: any,
  /**
   * The server's current version, when known.
   */
  version: number | null,
  /**
   * Why.
   */
  error: ErrorInfo,
};

/**
 * A member of a room's presence set.
 */
export type PresenceMember = { client_id: string, user?: string, meta: any };

/**
 * A presence change.
 */
export type PresenceUpdate = {
  /**
   * `join`, `leave` or `state`.
   */
  type: 'join' | 'leave' | 'state',
  /**
   * Who joined or left (absent for `state`).
   */
  member: PresenceMember | null,
  /**
   * Everyone present now.
   */
  members: PresenceMember[],
};

/**
 * A broadcast message from another client.
 */
export type BroadcastMessage = {
  /**
   * The application's name for it.
   */
  event: string,
  /**
   * Its payload.
   */
  data: any,
  /**
   * The sender's client id (chosen by the sending client).
   */
  from: string | null,
  /**
   * The sender's authenticated subject, set by the server when auth is on: what to trust
   * about who sent it.
   */
  user: string | null,
};

/**
 * Options of a write; `ifMatch` overrides the version the client knows (0: only if absent).
 */
export type WriteOptions = { ifMatch?: number };

/**
 * Options of `room.expect`; `timeoutMs` (default 10000, at most 600000): how long to wait for the confirming event before rolling back with code `timeout`.
 */
export type ExpectOptions = { timeoutMs?: number };

/**
 * The change `room.expect` shows (pending) until the event with its key confirms it: a put or a delete.
 */
export type ExpectedChange = { id: string; value: any } | { id: string; deleted: true };

/**
 * Errors thrown or rejected by this package.
 */
export interface TidewireError extends Error {
  /** A protocol error code (`version_conflict`, `bad_room_name`, …), `network`, `closed`, or for `room.expect` `timeout`, `failed`, `too_many_expected`. */
  code: string;
  status?: number;
  current?: { id: string; value: any; version: number };
}
