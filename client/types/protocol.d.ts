// Tidewire protocol v1: TypeScript declarations of every wire type.
// Generated from the Rust crate tidewire-protocol (shared/src/ts.rs); do not edit.
// Regenerate: TIDEWIRE_UPDATE_TS=1 cargo test -p tidewire-protocol --features ts

/**
 * Any JSON value.
 */
export type JsonValue = number | string | boolean | Array<JsonValue> | { [key in string]: JsonValue } | null;

/**
 * The protocol version: the `v` field of every envelope.
 */
export type ProtocolVersion = 1;

/**
 * A stable error code: 4000-4499 retryable, 4500-4999 terminal (see `ErrorCodeNumber`).
 */
export type ErrorCode =
  | "internal"
  | "shutting_down"
  | "slow_consumer"
  | "idle_timeout"
  | "store_unavailable"
  | "rate_limited"
  | "too_many_connections"
  | "token_expired"
  | "history_trimmed"
  | "bad_request"
  | "bad_json"
  | "unsupported_version"
  | "unknown_type"
  | "bad_room_name"
  | "bad_item_id"
  | "bad_cursor"
  | "payload_too_large"
  | "too_many_rooms"
  | "version_conflict"
  | "not_found"
  | "bad_event_type"
  | "bad_idempotency_key"
  | "unauthorized"
  | "forbidden"
  | "idempotency_key_reused"
  | "method_not_allowed";

/**
 * The number of each error code; also the WebSocket close code.
 */
export type ErrorCodeNumber = {
  internal: 4000;
  shutting_down: 4001;
  slow_consumer: 4002;
  idle_timeout: 4003;
  store_unavailable: 4004;
  rate_limited: 4005;
  too_many_connections: 4006;
  token_expired: 4007;
  history_trimmed: 4008;
  bad_request: 4500;
  bad_json: 4501;
  unsupported_version: 4502;
  unknown_type: 4503;
  bad_room_name: 4504;
  bad_item_id: 4505;
  bad_cursor: 4506;
  payload_too_large: 4507;
  too_many_rooms: 4508;
  version_conflict: 4509;
  not_found: 4510;
  bad_event_type: 4511;
  bad_idempotency_key: 4512;
  unauthorized: 4513;
  forbidden: 4514;
  idempotency_key_reused: 4515;
  method_not_allowed: 4516;
};

/**
 * Resume positions: `room=seq` pairs joined by commas, e.g. `board-1=42,chat=7`.
 */
export type Cursor = string;

/**
 * An item as a state-changing event carries it: the whole new value and its version, so a
 * client can rebuild from a single late event.
 */
export type Item = {
  /**
   * The item id, unique within its room.
   */
  id: string,
  /**
   * The item's value: any JSON.
   */
  value: JsonValue,
  /**
   * The item's version: 1 on first write, +1 on every write or delete.
   */
  version: number, };

/**
 * `item.deleted`: the item is gone; `version` is the version the delete produced.
 */
export type ItemDeleted = {
  /**
   * The item id.
   */
  id: string,
  /**
   * The version of the deletion (the last version + 1).
   */
  version: number, };

/**
 * `broadcast`: an ephemeral message to everyone in the room (cursor moves, typing).
 */
export type BroadcastData = {
  /**
   * The application's name for this broadcast (`cursor`, `typing`, …).
   */
  event: string,
  /**
   * Any JSON payload.
   */
  data: JsonValue,
  /**
   * The sending connection's client id, when known (chosen by that client).
   */
  from?: string,
  /**
   * The sender's authenticated subject, set by the server when auth is on (a client cannot
   * choose it): what to trust about who sent it.
   */
  user?: string, };

/**
 * One member of a room's presence set.
 */
export type Member = {
  /**
   * The connection's client id (stable across a quick reconnect).
   */
  client_id: string,
  /**
   * The authenticated subject, when auth is on.
   */
  user?: string,
  /**
   * Application metadata (name, colour, …).
   */
  meta: JsonValue, };

/**
 * `presence.state`: the whole presence set, sent when a connection starts following presence.
 */
export type PresenceState = {
  /**
   * Everyone present now.
   */
  members: Array<Member>, };

/**
 * `resync`: the log no longer reaches back to the client's position; re-fetch the snapshot.
 */
export type ResyncData = {
  /**
   * Why (`history_trimmed`, `slow_consumer`, …).
   */
  reason: string,
  /**
   * The room's latest `seq` when the resync was sent.
   */
  seq: number, };

/**
 * `reconnect`: the server is going away; reconnect after `retry_ms` (already jittered).
 */
export type ReconnectData = {
  /**
   * How long to wait before reconnecting, in milliseconds.
   */
  retry_ms: number,
  /**
   * Why (`shutting_down`, `slow_consumer`, `token_expired`, …).
   */
  reason: string, };

/**
 * `error`: something went wrong on this stream.
 */
export type ErrorData = {
  /**
   * The stable code.
   */
  code: ErrorCode,
  /**
   * A human-readable message.
   */
  message: string, };

/**
 * An application event in its dynamic form: any non-reserved `type` with any JSON `data`.
 * This is also the body of `POST /v1/rooms/{room}/events`.
 */
export type RawAppEvent = {
  /**
   * The application's event type, e.g. `chat.message`.
   */
  type: string,
  /**
   * Any JSON payload.
   */
  data: JsonValue, };

/**
 * The fields every envelope carries besides `type` and `data`. `seq` is present on durable events (item.put, item.deleted, application events) only; `room` is empty only on connection-wide `reconnect` / `error`; `key` is the Idempotency-Key of the write that produced the event, or null.
 */
export type EnvelopeHeader = { v: ProtocolVersion, room: string, seq?: number, id: string, ts: string, key: string | null };

/**
 * The `type` and `data` of each built-in event.
 */
export type BuiltinEvent =
  | { type: "item.put", data: Item }
  | { type: "item.deleted", data: ItemDeleted }
  | { type: "broadcast", data: BroadcastData }
  | { type: "presence.join", data: Member }
  | { type: "presence.leave", data: Member }
  | { type: "presence.state", data: PresenceState }
  | { type: "resync", data: ResyncData }
  | { type: "reconnect", data: ReconnectData }
  | { type: "error", data: ErrorData };

/**
 * The built-in event types.
 */
export type BuiltinEventType = BuiltinEvent["type"];

/**
 * The shape of an application event: any non-reserved `type` and its `data`. An application can declare its own union, e.g. `{ type: "chat.message", data: { text: string } }`, and use it as `Envelope<MyEvents>`.
 */
export type AppEventShape = { type: string, data?: unknown };

/**
 * Every event, on every transport: the header and one built-in event or an application event `A`.
 */
export type Envelope<A extends AppEventShape = RawAppEvent> = EnvelopeHeader & (BuiltinEvent | A);

/**
 * A frame from client to server.
 */
export type ClientFrame = { "type": "subscribe",
  /**
   * Echoed in the reply.
   */
  ref?: string,
  /**
   * Rooms to follow.
   */
  rooms: Array<string>,
  /**
   * Resume positions.
   */
  since?: string,
  /**
   * Also receive presence events (`presence.*`) of these rooms.
   */
  presence?: boolean, } | { "type": "unsubscribe",
  /**
   * Echoed in the reply.
   */
  ref?: string,
  /**
   * Rooms to stop following.
   */
  rooms: Array<string>, } | { "type": "put",
  /**
   * Echoed in the ack.
   */
  ref?: string,
  /**
   * The room.
   */
  room: string,
  /**
   * The item id.
   */
  id: string,
  /**
   * The new value.
   */
  value: JsonValue,
  /**
   * Idempotency key.
   */
  key?: string,
  /**
   * Expected current version (0: the item must not exist).
   */
  if_match?: number, } | { "type": "delete",
  /**
   * Echoed in the ack.
   */
  ref?: string,
  /**
   * The room.
   */
  room: string,
  /**
   * The item id.
   */
  id: string,
  /**
   * Idempotency key.
   */
  key?: string,
  /**
   * Expected current version.
   */
  if_match?: number, } | { "type": "publish",
  /**
   * Echoed in the ack.
   */
  ref?: string,
  /**
   * The room.
   */
  room: string,
  /**
   * The event: `{type, data}`.
   */
  event: RawAppEvent,
  /**
   * Idempotency key.
   */
  key?: string, } | { "type": "broadcast",
  /**
   * Echoed in the ack.
   */
  ref?: string,
  /**
   * The room.
   */
  room: string,
  /**
   * The application's name for the message.
   */
  event: string,
  /**
   * Any JSON.
   */
  data: JsonValue, } | { "type": "presence",
  /**
   * Echoed in the ack.
   */
  ref?: string,
  /**
   * The room.
   */
  room: string,
  /**
   * Application metadata (name, colour, …).
   */
  meta: JsonValue, } | { "type": "ping",
  /**
   * Echoed in the pong.
   */
  ref?: string, } | { "type": "auth",
  /**
   * Echoed in the ack.
   */
  ref?: string,
  /**
   * The token (a JWT).
   */
  token: string, };

/**
 * Why a request failed, inside a failed `ack`.
 */
export type AckError = {
  /**
   * The stable code.
   */
  code: ErrorCode,
  /**
   * A human-readable message.
   */
  title: string,
  /**
   * For `version_conflict`: the current item (absent when it does not exist).
   */
  current?: Item, };

/**
 * The outcome of the client frame with this `ref`: for writes the appended event, for `subscribe` the cursor it starts from, or the error.
 */
export type AckFrame<A extends AppEventShape = RawAppEvent> =
  | { type: "ack", ref?: string, ok: true, event?: Envelope<A>, cursor?: string }
  | { type: "ack", ref?: string, ok: false, error: AckError, cursor?: string };

/**
 * The reply to `ping`.
 */
export type PongFrame = { type: "pong", ref?: string };

/**
 * A frame could not be handled; the connection stays open unless a close follows.
 */
export type ErrorFrame = { type: "error", ref?: string, code: ErrorCode, message: string };

/**
 * A WebSocket frame from server to client: an envelope (as on SSE) or a reply.
 */
export type ServerFrame<A extends AppEventShape = RawAppEvent> = Envelope<A> | AckFrame<A> | PongFrame | ErrorFrame;

/**
 * An HTTP error body, `application/problem+json` (RFC 9457), with Tidewire's stable `code`.
 *
 * A `version_conflict` problem also carries `current`: the item as the server has it now
 * (absent when it does not exist), which is what an optimistic update rolls back to.
 */
export type Problem = {
  /**
   * A URI naming the problem type: `https://tidewire.dev/problems/<code>`.
   */
  type: string,
  /**
   * A short, human-readable summary of the problem type.
   */
  title: string,
  /**
   * The HTTP status code.
   */
  status: number,
  /**
   * What went wrong with this request.
   */
  detail: string,
  /**
   * The stable error code.
   */
  code: ErrorCode,
  /**
   * For `version_conflict`: the item as the server has it now (absent when it does not exist).
   */
  current?: Item,
  /**
   * For `rate_limited`: seconds until a retry may succeed.
   */
  retry_after?: number, };

/**
 * One item in a snapshot.
 */
export type ItemState = {
  /**
   * The value.
   */
  value: JsonValue,
  /**
   * The version (see [`Item::version`](crate::Item::version)).
   */
  version: number,
  /**
   * When it was last written, RFC 3339.
   */
  updated_at: string, };

/**
 * `GET /v1/rooms/{room}/snapshot`: the room's state and the `seq` it reflects.
 */
export type Snapshot = {
  /**
   * The room.
   */
  room: string,
  /**
   * The last `seq` whose effect the items include.
   */
  seq: number,
  /**
   * Live items by id.
   */
  items: { [key in string]: ItemState }, };

/**
 * `GET /v1/poll`: events after the cursor and the cursor to poll from next.
 */
export type PollResponse<A extends AppEventShape = RawAppEvent> = { events: Array<Envelope<A>>, cursor: Cursor };

/**
 * `GET /v1/rooms/{room}/presence`.
 */
export type PresenceList = {
  /**
   * The room.
   */
  room: string,
  /**
   * Who is here now.
   */
  members: Array<Member>, };

/**
 * `POST /v1/tickets`: a short-lived single-use ticket for `?ticket=` on SSE and WebSocket.
 */
export type TicketResponse = {
  /**
   * The ticket.
   */
  ticket: string,
  /**
   * Seconds until it expires.
   */
  expires_in: number, };
