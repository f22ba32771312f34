//! The Rust client: one live connection carrying all of a client's rooms, driven by a
//! supervisor task that picks the transport, reconnects with backoff, falls back when SSE
//! stalls, climbs back, and keeps every room's state exact.
//!
//! ```ignore
//! use tidewire_client::{Client, Options};
//! let client = Client::new(Options::new("http://127.0.0.1:8080"))?;
//! let _s = client.on_state(|s| web_sys::console::log_1(&s.state.name().into()));
//! let room = client.room("board-1")?;
//! let _u = room.subscribe(|u| web_sys::console::log_1(&format!("{} items", u.items.len()).into()));
//! room.put("slot-3", serde_json::json!({"free": false})).await?;
//! client.close();
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use futures::channel::mpsc::{unbounded, UnboundedReceiver, UnboundedSender};
use futures::channel::oneshot;
use futures::future::{select, Either};
use futures::StreamExt;
use gloo_events::EventListener;
use gloo_timers::future::TimeoutFuture;
use serde::Serialize;
use serde_json::Value;
use tidewire_protocol::{
    validate_item_id, validate_room, ClientFrame, Cursor, Envelope, Event, Member, RawAppEvent,
};

use crate::auth::TokenSource;
use crate::backoff::{Backoff, BackoffConfig, Random};
use crate::http;
use crate::ladder::{Ladder, Outcome};
use crate::listeners::{ListenerStream, Listeners, Subscription};
use crate::room::{RoomState, ViewItem, WriteOp};
use crate::state::{ConnState, Input, StateMachine, TransportKind};
use crate::transport::{Active, PollLoop, Sink, SseTransport, TransportMsg, WsTransport};
use crate::Error;

/// Client options. [`Options::new`] gives the defaults.
pub struct Options {
    /// The server's base URL, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    /// Force one transport; `None` is `auto` (SSE, WebSocket for presence and broadcast,
    /// long-poll then polling as fallbacks).
    pub transport: Option<TransportKind>,
    /// Reconnection backoff.
    pub backoff: BackoffConfig,
    /// SSE and WebSocket must open within this many milliseconds, or they count as stalled.
    pub open_timeout_ms: u64,
    /// An open SSE stream that brings neither an event nor a heartbeat for twice the server's
    /// announced heartbeat interval plus this many milliseconds counts as stalled; so does an
    /// open WebSocket that brings no frame for twice [`Options::ws_ping_ms`] plus this.
    pub heartbeat_slack_ms: u64,
    /// While a WebSocket is open, the client sends a `ping` frame this often (the server
    /// answers `pong`); the WebSocket protocol announces no heartbeat interval, so this is the
    /// interval its stall bound is computed from.
    pub ws_ping_ms: u64,
    /// How long a fallback transport runs before the client tries the preferred one again.
    pub climb_ms: u64,
    /// How long an out-of-order event waits for the gap before the snapshot is re-fetched.
    pub reorder_ms: u64,
    /// Snapshot polling interval (the last-resort transport).
    pub poll_interval_ms: u64,
    /// Long-poll `wait`, in seconds.
    pub long_poll_wait_secs: u32,
    /// How many times a write is retried (same idempotency key) on a network failure.
    pub write_retries: u32,
    /// The stable client id for presence; random when `None`.
    pub client_id: Option<String>,
    /// The random source for jitter; `Math.random` when `None`.
    pub random: Option<Box<dyn Random>>,
    /// With auth on: where this client's tokens come from (`getToken`). Each client has its
    /// own, also for the same server.
    pub token: Option<Rc<TokenSource>>,
}

impl Options {
    /// Defaults for a server at `url`.
    pub fn new(url: impl Into<String>) -> Options {
        Options {
            url: url.into().trim_end_matches('/').to_owned(),
            transport: None,
            backoff: BackoffConfig::default(),
            open_timeout_ms: 5_000,
            heartbeat_slack_ms: 5_000,
            ws_ping_ms: 15_000,
            climb_ms: 30_000,
            reorder_ms: 1_000,
            poll_interval_ms: 3_000,
            long_poll_wait_secs: 25,
            write_retries: 8,
            client_id: None,
            random: None,
            token: None,
        }
    }
}

/// A state change, as listeners see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StateChange {
    /// The new state.
    #[serde(flatten)]
    pub state: ConnState,
    /// The transport in use or being tried.
    pub transport: Option<TransportKind>,
}

/// Why a room's state changed.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Cause {
    /// A durable event from the server was applied.
    Event(Envelope),
    /// Something local or a snapshot.
    Local(LocalCause),
}

/// A change not caused by one server event.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type")]
pub enum LocalCause {
    /// The snapshot was (re-)fetched.
    #[serde(rename = "snapshot")]
    Snapshot {
        /// The room.
        room: String,
        /// The seq the snapshot reflects.
        seq: u64,
    },
    /// An optimistic write was applied locally.
    #[serde(rename = "pending")]
    Pending {
        /// The room.
        room: String,
        /// The item.
        id: String,
        /// The write's idempotency key.
        key: String,
    },
    /// An optimistic write was rolled back.
    #[serde(rename = "rollback")]
    Rollback {
        /// The room.
        room: String,
        /// The item.
        id: String,
        /// The write's idempotency key.
        key: String,
    },
}

/// A room's new state and what caused it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoomUpdate {
    /// The items, sorted by id, pending ones included.
    pub items: Vec<ViewItem>,
    /// The last applied seq.
    pub seq: u64,
    /// The cause.
    pub event: Cause,
}

/// An error as listeners see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorInfo {
    /// The stable code.
    pub code: String,
    /// A human-readable message.
    pub message: String,
}

impl From<&Error> for ErrorInfo {
    fn from(e: &Error) -> Self {
        ErrorInfo {
            code: e.code().to_owned(),
            message: e.to_string(),
        }
    }
}

/// An optimistic write the server refused.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rollback {
    /// The item.
    pub id: String,
    /// The server's current value (`null` when the item does not exist).
    pub value: Value,
    /// The server's current version, when known.
    pub version: Option<u64>,
    /// Why.
    pub error: ErrorInfo,
}

/// A presence change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PresenceUpdate {
    /// `join`, `leave` or `state`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Who joined or left (absent for `state`).
    pub member: Option<Member>,
    /// Everyone present now.
    pub members: Vec<Member>,
}

/// A broadcast message from another client.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BroadcastMessage {
    /// The application's name for it.
    pub event: String,
    /// Its payload.
    pub data: Value,
    /// The sender's client id.
    pub from: Option<String>,
}

pub(crate) enum Msg {
    Transport(u64, TransportMsg),
    RoomAdded,
    WantWs,
    Online,
    Offline,
    Visible,
    Drop,
    Close,
    /// Recompute deadlines (a reorder gap opened).
    Tick,
}

struct RoomInner {
    state: RoomState,
    meta: Option<Value>,
    outbox: Vec<String>,
}

pub(crate) struct RoomShared {
    name: String,
    inner: RefCell<RoomInner>,
    updates: Listeners<RoomUpdate>,
    rollbacks: Listeners<Rollback>,
    presence: Listeners<PresenceUpdate>,
    broadcasts: Listeners<BroadcastMessage>,
}

struct Conn {
    machine: StateMachine,
    backoff: Backoff,
    random: Box<dyn Random>,
    active: Option<Active>,
    gen: u64,
    ladder: Ladder,
    key_seq: u64,
    window_listeners: Vec<EventListener>,
}

pub(crate) struct Shared {
    url: String,
    /// The server and this client's token source, for every REST call.
    api: http::Endpoint,
    forced: Option<TransportKind>,
    open_timeout_ms: u64,
    heartbeat_slack_ms: u64,
    ws_ping_ms: u64,
    climb_ms: u64,
    reorder_ms: u64,
    poll_interval_ms: u64,
    long_poll_wait_secs: u32,
    write_retries: u32,
    client_id: String,
    tx: UnboundedSender<Msg>,
    conn: RefCell<Conn>,
    rooms: RefCell<BTreeMap<String, Rc<RoomShared>>>,
    states: Listeners<StateChange>,
    /// Writes sent over the WebSocket, waiting for their `ack`, by `ref`. Dropped (failing
    /// the writes, which then retry) when the connection ends.
    acks: RefCell<BTreeMap<String, oneshot::Sender<AckResult>>>,
}

type AckResult = Result<Option<Envelope>, tidewire_protocol::AckError>;

/// Milliseconds on the page's monotonic clock (`performance.now()`), for every elapsed time
/// and deadline: backoff waits, open and climb timeouts, reorder windows. The wall clock
/// (`Date.now()`) can jump days either way when the user or NTP changes it; measured with it,
/// a backoff wait could last days or an open connection look negative seconds old.
fn now_ms() -> u64 {
    web_sys::window()
        .and_then(|w| w.performance())
        .map_or_else(js_sys::Date::now, |p| p.now()) as u64
}

fn random_id() -> String {
    let a = (js_sys::Math::random() * 4_294_967_296.0) as u64;
    let b = (js_sys::Math::random() * 4_294_967_296.0) as u64;
    format!("c{a:08x}{b:08x}")
}

fn warn(text: &str) {
    web_sys::console::warn_1(&text.into());
}

fn clamp_ms(v: u64) -> u32 {
    v.min(u32::MAX as u64) as u32
}

/// Closes the client when the last [`Client`] handle goes away (unless disarmed).
struct CloseOnDrop {
    shared: Rc<Shared>,
    armed: std::cell::Cell<bool>,
}

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        if self.armed.get() {
            self.shared.close();
        }
    }
}

/// A Tidewire client. Cloning gives another handle to the same connection; the connection
/// closes when the last handle is dropped or [`Client::close`] is called.
#[derive(Clone)]
pub struct Client {
    shared: Rc<Shared>,
    _guard: Option<Rc<CloseOnDrop>>,
}

impl Client {
    /// Starts a client. It connects as soon as it has a room.
    pub fn new(options: Options) -> Result<Client, Error> {
        if !(options.url.starts_with("http://") || options.url.starts_with("https://")) {
            return Err(Error::BadOption {
                name: "url",
                reason: format!("`{}` is not an http(s) URL", options.url),
            });
        }
        let (tx, rx) = unbounded();
        let random: Box<dyn Random> = options
            .random
            .unwrap_or_else(|| Box::new(js_sys::Math::random));
        let api = match options.token {
            Some(source) => http::Endpoint::with_token(&options.url, source),
            None => http::Endpoint::new(&options.url),
        };
        let shared = Rc::new(Shared {
            api,
            url: options.url,
            forced: options.transport,
            open_timeout_ms: options.open_timeout_ms,
            heartbeat_slack_ms: options.heartbeat_slack_ms,
            ws_ping_ms: options.ws_ping_ms.max(1),
            climb_ms: options.climb_ms,
            reorder_ms: options.reorder_ms,
            poll_interval_ms: options.poll_interval_ms,
            long_poll_wait_secs: options.long_poll_wait_secs.min(60),
            write_retries: options.write_retries,
            client_id: options.client_id.unwrap_or_else(random_id),
            tx,
            conn: RefCell::new(Conn {
                machine: StateMachine::new(),
                backoff: Backoff::new(options.backoff),
                random,
                active: None,
                gen: 0,
                ladder: Ladder::new(options.transport),
                key_seq: 0,
                window_listeners: Vec::new(),
            }),
            rooms: RefCell::new(BTreeMap::new()),
            states: Listeners::new(),
            acks: RefCell::new(BTreeMap::new()),
        });
        shared.listen_to_window();
        wasm_bindgen_futures::spawn_local(run(shared.clone(), rx));
        Ok(Client {
            _guard: Some(Rc::new(CloseOnDrop {
                shared: shared.clone(),
                armed: std::cell::Cell::new(true),
            })),
            shared,
        })
    }

    /// This handle no longer closes the client when dropped: only [`Client::close`] does
    /// (JavaScript handles work this way, as garbage collection must not end a connection).
    pub fn without_close_on_drop(mut self) -> Client {
        if let Some(guard) = self._guard.take() {
            if Rc::strong_count(&guard) == 1 {
                guard.armed.set(false);
            }
        }
        self
    }

    /// The room `name`, joined on the client's connection (the same object for the same name).
    pub fn room(&self, name: &str) -> Result<Room, Error> {
        validate_room(name)?;
        if self.shared.is_closed() {
            return Err(Error::Closed);
        }
        let mut rooms = self.shared.rooms.borrow_mut();
        if let Some(r) = rooms.get(name) {
            return Ok(Room {
                shared: self.shared.clone(),
                room: r.clone(),
            });
        }
        if rooms.len() >= tidewire_protocol::limits::MAX_ROOMS_PER_CONNECTION {
            return Err(Error::Protocol(
                tidewire_protocol::ProtocolError::TooManyRooms {
                    count: rooms.len() + 1,
                    limit: tidewire_protocol::limits::MAX_ROOMS_PER_CONNECTION,
                },
            ));
        }
        let room = Rc::new(RoomShared {
            name: name.to_owned(),
            inner: RefCell::new(RoomInner {
                state: RoomState::new(name, self.shared.reorder_ms),
                meta: None,
                outbox: Vec::new(),
            }),
            updates: Listeners::new(),
            rollbacks: Listeners::new(),
            presence: Listeners::new(),
            broadcasts: Listeners::new(),
        });
        rooms.insert(name.to_owned(), room.clone());
        drop(rooms);
        let _ = self.shared.tx.unbounded_send(Msg::RoomAdded);
        Ok(Room {
            shared: self.shared.clone(),
            room,
        })
    }

    /// Calls `f` on every state change until the subscription is dropped.
    pub fn on_state(&self, f: impl Fn(&StateChange) + 'static) -> Subscription {
        self.shared.states.add(f)
    }

    /// State changes as a stream.
    pub fn states(&self) -> ListenerStream<StateChange> {
        self.shared.states.stream()
    }

    /// The current state.
    pub fn state(&self) -> ConnState {
        self.shared.conn.borrow().machine.state().clone()
    }

    /// The transport in use (or last tried).
    pub fn transport(&self) -> Option<TransportKind> {
        self.shared.conn.borrow().machine.transport()
    }

    /// The last applied seq of a room this client follows.
    pub fn seq(&self, room: &str) -> Option<u64> {
        self.shared
            .rooms
            .borrow()
            .get(room)
            .map(|r| r.inner.borrow().state.seq())
    }

    /// This client's id (presence, broadcast `from`).
    pub fn client_id(&self) -> &str {
        &self.shared.client_id
    }

    /// Cuts the live connection, as a network failure would; the client recovers by itself.
    pub fn drop_connection(&self) {
        let _ = self.shared.tx.unbounded_send(Msg::Drop);
    }

    /// Closes the connection and removes every listener. Pending writes still finish or fail.
    pub fn close(&self) {
        self.shared.close();
    }
}

impl Shared {
    fn is_closed(&self) -> bool {
        *self.conn.borrow().machine.state() == ConnState::Closed
    }

    fn close(&self) {
        if self.is_closed() {
            return;
        }
        let _ = self.tx.unbounded_send(Msg::Close);
        let (active, listeners) = {
            let mut c = self.conn.borrow_mut();
            c.machine.handle(Input::Close);
            (c.active.take(), std::mem::take(&mut c.window_listeners))
        };
        drop(active);
        drop(listeners);
        self.states.emit(&StateChange {
            state: ConnState::Closed,
            transport: self.conn.borrow().machine.transport(),
        });
        self.states.clear();
        for room in self.rooms.borrow().values() {
            room.updates.clear();
            room.rollbacks.clear();
            room.presence.clear();
            room.broadcasts.clear();
        }
    }

    fn listen_to_window(&self) {
        let Some(window) = web_sys::window() else {
            return;
        };
        let mut listeners = Vec::new();
        let tx = self.tx.clone();
        listeners.push(EventListener::new(&window, "online", move |_| {
            let _ = tx.unbounded_send(Msg::Online);
        }));
        let tx = self.tx.clone();
        listeners.push(EventListener::new(&window, "offline", move |_| {
            let _ = tx.unbounded_send(Msg::Offline);
        }));
        if let Some(doc) = window.document() {
            let tx = self.tx.clone();
            let d = doc.clone();
            listeners.push(EventListener::new(&doc, "visibilitychange", move |_| {
                if !d.hidden() {
                    let _ = tx.unbounded_send(Msg::Visible);
                }
            }));
        }
        self.conn.borrow_mut().window_listeners = listeners;
    }

    fn next_key(&self) -> String {
        let mut c = self.conn.borrow_mut();
        c.key_seq += 1;
        format!(
            "{}-{}-{}",
            self.client_id,
            js_sys::Date::now() as u64,
            c.key_seq
        )
    }

    fn set(&self, input: Input) {
        let change = {
            let mut c = self.conn.borrow_mut();
            c.machine.handle(input).map(|state| StateChange {
                state,
                transport: c.machine.transport(),
            })
        };
        if let Some(change) = change {
            self.states.emit(&change);
        }
    }

    fn room_list(&self) -> Vec<Rc<RoomShared>> {
        self.rooms.borrow().values().cloned().collect()
    }

    fn cursor(&self) -> Cursor {
        let mut c = Cursor::new();
        for r in self.room_list() {
            c.set(&r.name, r.inner.borrow().state.seq());
        }
        c
    }

    /// Applies a durable event and tells the room's subscribers.
    fn apply_durable(&self, room: &RoomShared, env: Envelope) {
        let outcome = {
            let mut inner = room.inner.borrow_mut();
            inner.state.apply(env, now_ms())
        };
        if outcome.buffered {
            let _ = self.tx.unbounded_send(Msg::Tick);
        }
        for env in outcome.applied {
            room.emit_update(Cause::Event(env));
        }
    }

    /// Feeds any envelope from a transport. Returns a server reconnect hint when there is one.
    async fn dispatch(&self, env: Envelope) -> Option<u64> {
        if let Event::Reconnect(r) = &env.event {
            return Some(r.retry_ms);
        }
        let room = self.rooms.borrow().get(&env.room).cloned()?;
        match &env.event {
            Event::Resync(_) => {
                self.refetch(&room).await;
            }
            Event::Broadcast(b) => room.broadcasts.emit(&BroadcastMessage {
                event: b.event.clone(),
                data: b.data.clone(),
                from: b.from.clone(),
            }),
            Event::PresenceJoin(_) | Event::PresenceLeave(_) | Event::PresenceState(_) => {
                let members = {
                    let mut inner = room.inner.borrow_mut();
                    inner.state.apply_presence(&env.event);
                    inner.state.members().to_vec()
                };
                let (kind, member) = match &env.event {
                    Event::PresenceJoin(m) => ("join", Some(m.clone())),
                    Event::PresenceLeave(m) => ("leave", Some(m.clone())),
                    _ => ("state", None),
                };
                room.presence.emit(&PresenceUpdate {
                    kind,
                    member,
                    members,
                });
            }
            _ if env.event.is_durable() => self.apply_durable(&room, env),
            _ => {}
        }
        None
    }

    /// Fetches a room's snapshot and loads it.
    async fn refetch(&self, room: &RoomShared) -> bool {
        match http::snapshot(&self.api, &room.name).await {
            Ok(snap) => {
                self.load_snapshot(room, snap);
                true
            }
            Err(_) => false,
        }
    }

    fn load_snapshot(&self, room: &RoomShared, snap: tidewire_protocol::Snapshot) {
        let seq = snap.seq;
        let applied = room.inner.borrow_mut().state.load_snapshot(snap, now_ms());
        room.emit_update(Cause::Local(LocalCause::Snapshot {
            room: room.name.clone(),
            seq,
        }));
        for env in applied {
            room.emit_update(Cause::Event(env));
        }
    }

    fn send_ws(&self, frame: &str) -> bool {
        let c = self.conn.borrow();
        c.active.as_ref().is_some_and(|a| a.send(frame))
    }

    fn sink(&self, gen: u64) -> Sink {
        let tx = self.tx.clone();
        Rc::new(move |m| {
            let _ = tx.unbounded_send(Msg::Transport(gen, m));
        })
    }

    fn ws_url(&self) -> String {
        let base = if let Some(rest) = self.url.strip_prefix("https://") {
            format!("wss://{rest}")
        } else {
            format!("ws://{}", self.url.trim_start_matches("http://"))
        };
        format!(
            "{base}/v1/ws?client_id={}",
            js_sys::encode_uri_component(&self.client_id)
        )
    }

    fn ws_first_frames(&self, rooms: &[Rc<RoomShared>]) -> Vec<String> {
        let mut frames = vec![self.subscribe_frame(rooms)];
        for r in rooms {
            let mut inner = r.inner.borrow_mut();
            if let Some(meta) = &inner.meta {
                frames.push(presence_frame(&r.name, meta.clone()));
            }
            frames.append(&mut inner.outbox);
        }
        frames
    }

    fn subscribe_frame(&self, rooms: &[Rc<RoomShared>]) -> String {
        let mut since = Cursor::new();
        for r in rooms {
            since.set(&r.name, r.inner.borrow().state.seq());
        }
        ClientFrame::Subscribe {
            r#ref: Some("sub".to_owned()),
            rooms: rooms.iter().map(|r| r.name.clone()).collect(),
            since: Some(since.to_string()),
            presence: true,
        }
        .encode()
    }

    /// `cred`: with auth on, the SSE ticket or the WebSocket token.
    fn start(&self, kind: TransportKind, gen: u64, cred: Option<String>) -> Result<Active, Error> {
        let rooms = self.room_list();
        let names: Vec<String> = rooms.iter().map(|r| r.name.clone()).collect();
        let sink = self.sink(gen);
        let enc = |s: &str| String::from(js_sys::encode_uri_component(s));
        Ok(match kind {
            TransportKind::Sse => {
                let url = format!(
                    "{}/v1/sse?rooms={}&since={}&presence=1&heartbeat=event&client_id={}",
                    self.url,
                    enc(&names.join(",")),
                    enc(&self.cursor().to_string()),
                    enc(&self.client_id)
                );
                let url = match &cred {
                    Some(ticket) => format!("{url}&ticket={}", enc(ticket)),
                    None => url,
                };
                Active::Sse(SseTransport::open(&url, sink)?)
            }
            TransportKind::Ws => {
                let mut first = self.ws_first_frames(&rooms);
                if let Some(token) = cred {
                    // The auth frame goes first: nothing else is accepted before it.
                    first.insert(0, auth_frame(token));
                }
                Active::Ws(WsTransport::open(
                    &self.ws_url(),
                    first,
                    self.ws_ping_ms,
                    sink,
                )?)
            }
            TransportKind::LongPoll => Active::Poll(PollLoop::long_poll(
                self.api.clone(),
                names.join(","),
                self.cursor().to_string(),
                self.long_poll_wait_secs,
                self.open_timeout_ms,
                sink,
            )),
            TransportKind::Poll => Active::Poll(PollLoop::snapshots(
                self.api.clone(),
                names,
                self.poll_interval_ms,
                sink,
            )),
        })
    }
}

fn auth_frame(token: String) -> String {
    ClientFrame::Auth {
        r#ref: Some("auth".to_owned()),
        token,
    }
    .encode()
}

fn presence_frame(room: &str, meta: Value) -> String {
    ClientFrame::Presence {
        r#ref: None,
        room: room.to_owned(),
        meta,
    }
    .encode()
}

impl RoomShared {
    fn emit_update(&self, event: Cause) {
        let (items, seq) = {
            let inner = self.inner.borrow();
            (inner.state.items(), inner.state.seq())
        };
        self.updates.emit(&RoomUpdate { items, seq, event });
    }
}

/// Waits for the next message, or `None` after `timeout_ms`.
async fn recv(rx: &mut UnboundedReceiver<Msg>, timeout_ms: Option<u64>) -> Option<Msg> {
    match timeout_ms {
        None => Some(rx.next().await.unwrap_or(Msg::Close)),
        Some(ms) => {
            let timer = TimeoutFuture::new(clamp_ms(ms));
            match select(rx.next(), timer).await {
                Either::Left((m, _)) => Some(m.unwrap_or(Msg::Close)),
                Either::Right(_) => None,
            }
        }
    }
}

/// How a connection ended.
enum End {
    Close,
    Lost {
        opened_for: Option<u64>,
        /// No answer within the bound: before the first byte, or no event and no heartbeat
        /// (SSE) or no frame (WebSocket) within the watchdog bound after it opened.
        stalled: bool,
        /// The server's SSE `retry:` hint, when the stream announced it.
        retry_ms: Option<u64>,
    },
    Again,
    Offline,
}

fn online() -> bool {
    web_sys::window().is_none_or(|w| w.navigator().on_line())
}

/// The supervisor: one task per client.
async fn run(shared: Rc<Shared>, mut rx: UnboundedReceiver<Msg>) {
    // Set by the browser's `offline` event, cleared by `online`.
    let mut offline_event = false;
    'outer: loop {
        if shared.is_closed() {
            break;
        }
        if offline_event || !online() {
            // Nothing is attempted while offline.
            let by_event = offline_event;
            shared.set(Input::Offline);
            loop {
                match recv(&mut rx, Some(1_000)).await {
                    Some(Msg::Close) => break 'outer,
                    Some(Msg::Online) => break,
                    _ if !by_event && online() => break,
                    _ => {}
                }
            }
            offline_event = false;
            shared.set(Input::Online);
        }
        if shared.rooms.borrow().is_empty() {
            match recv(&mut rx, None).await {
                Some(Msg::Close) => break,
                Some(Msg::Offline) => offline_event = true,
                _ => {}
            }
            continue;
        }
        let (kind, degraded) = shared.conn.borrow().ladder.choose();
        shared.set(Input::Connect);
        // Every room starts from its snapshot.
        let mut fetch_failed = false;
        for room in shared.room_list() {
            if !room.inner.borrow().state.is_synced() && !shared.refetch(&room).await {
                fetch_failed = true;
                break;
            }
        }
        let end = if fetch_failed {
            End::Lost {
                opened_for: None,
                stalled: false,
                retry_ms: None,
            }
        } else {
            connect(&shared, &mut rx, kind, degraded).await
        };
        if shared.is_closed() {
            break;
        }
        match end {
            End::Close => break,
            End::Again => continue,
            End::Offline => {
                offline_event = true;
                continue;
            }
            End::Lost {
                opened_for,
                stalled,
                retry_ms,
            } => {
                // A connection that never opened, or an SSE stream or WebSocket that stalled
                // after it opened, may move the client down the ladder (a failed snapshot fetch says
                // nothing about the transport).
                if (opened_for.is_none() || stalled) && !fetch_failed {
                    let probe = shared.conn.borrow().ladder.needs_probe(kind, stalled);
                    let reachable = if probe {
                        Some(http::reachable(&shared.url).await)
                    } else {
                        None
                    };
                    let outcome = shared
                        .conn
                        .borrow_mut()
                        .ladder
                        .failed(kind, stalled, reachable);
                    if outcome == Outcome::Switch {
                        continue;
                    }
                }
                let (attempt, delay) = {
                    let mut c = shared.conn.borrow_mut();
                    let c = &mut *c;
                    c.backoff.connection_ended(opened_for.unwrap_or(0));
                    let delay = match retry_ms {
                        Some(floor) => c.backoff.next_delay_with_floor(&mut *c.random, floor),
                        None => c.backoff.next_delay(&mut *c.random),
                    };
                    (c.backoff.attempt(), delay)
                };
                shared.set(Input::Lost {
                    attempt,
                    delay_ms: delay,
                });
                let deadline = now_ms() + delay;
                loop {
                    let left = deadline.saturating_sub(now_ms());
                    if left == 0 {
                        break;
                    }
                    match recv(&mut rx, Some(left)).await {
                        None => break,
                        Some(Msg::Close) => break 'outer,
                        Some(Msg::Online) | Some(Msg::Visible) => break,
                        Some(Msg::Offline) => {
                            offline_event = true;
                            continue 'outer;
                        }
                        Some(_) => {}
                    }
                }
            }
        }
    }
    let active = shared.conn.borrow_mut().active.take();
    drop(active);
}

/// Runs one connection until it ends.
async fn connect(
    shared: &Rc<Shared>,
    rx: &mut UnboundedReceiver<Msg>,
    kind: TransportKind,
    degraded: bool,
) -> End {
    let gen = {
        let mut c = shared.conn.borrow_mut();
        c.gen += 1;
        c.gen
    };
    // With auth on: a ticket for SSE, a token for the WebSocket's first frame.
    let source = shared.api.token_source().cloned();
    let cred = match (&source, kind) {
        (Some(_), TransportKind::Sse) => http::ticket(&shared.api).await.map(Some),
        (Some(src), TransportKind::Ws) => src.token().await.map(Some),
        _ => Ok(None),
    };
    let Ok(cred) = cred else {
        return End::Lost {
            opened_for: None,
            stalled: false,
            retry_ms: None,
        };
    };
    let active = match shared.start(kind, gen, cred) {
        Ok(a) => a,
        Err(_) => {
            return End::Lost {
                opened_for: None,
                stalled: false,
                retry_ms: None,
            }
        }
    };
    shared.conn.borrow_mut().active = Some(active);
    let started = now_ms();
    let mut opened_at: Option<u64> = None;
    // Watchdog: the heartbeat interval (SSE: as the server announces it; WebSocket: the
    // client's own ping interval), the SSE retry hint, and when the connection last brought
    // anything (an event, a heartbeat, any WebSocket frame).
    let mut heartbeat_ms: Option<u64> = (kind == TransportKind::Ws).then_some(shared.ws_ping_ms);
    let mut retry_ms: Option<u64> = None;
    let mut last_seen = started;
    let end = loop {
        let now = now_ms();
        let mut deadline: Option<u64> = None;
        let mut consider = |t: u64| deadline = Some(deadline.map_or(t, |d: u64| d.min(t)));
        if opened_at.is_none() {
            consider(started + shared.open_timeout_ms);
        } else if degraded {
            consider(opened_at.unwrap_or(now) + shared.climb_ms);
        }
        // The server sends its first heartbeat right after the headers, so an SSE stream
        // without one within the open bound is held by a proxy as surely as one that never
        // opened.
        let watchdog = match (kind, opened_at, heartbeat_ms) {
            (TransportKind::Sse | TransportKind::Ws, Some(_), Some(h)) => Some(
                last_seen
                    .saturating_add(h.saturating_mul(2))
                    .saturating_add(shared.heartbeat_slack_ms),
            ),
            (TransportKind::Sse, Some(t), None) => Some(t + shared.open_timeout_ms),
            _ => None,
        };
        if let Some(t) = watchdog {
            consider(t);
        }
        // Refresh the token before it expires: a new auth frame on the WebSocket, a new
        // ticket (a reconnect from the same cursor) for SSE.
        let refresh_at = match (&source, kind, opened_at) {
            (Some(src), TransportKind::Sse | TransportKind::Ws, Some(_)) => {
                // The token's expiry is wall-clock time: turn what is left of it into a
                // deadline on the monotonic clock.
                src.refresh_at()
                    .map(|t| now + (t - js_sys::Date::now()).max(0.0) as u64)
            }
            _ => None,
        };
        if let Some(t) = refresh_at {
            consider(t);
        }
        for r in shared.room_list() {
            if let Some(d) = r.inner.borrow().state.gap_deadline() {
                consider(d);
            }
        }
        let timeout = deadline.map(|d| d.saturating_sub(now));
        let msg = recv(rx, timeout).await;
        let now = now_ms();
        match msg {
            None => {
                if let (Some(src), Some(t)) = (&source, refresh_at) {
                    if now >= t {
                        if kind == TransportKind::Sse {
                            break End::Again;
                        }
                        match src.fetch().await {
                            Ok(token) => {
                                shared.send_ws(&auth_frame(token));
                            }
                            Err(_) => {
                                break End::Lost {
                                    opened_for: opened_at.map(|t| now - t),
                                    stalled: false,
                                    retry_ms: None,
                                }
                            }
                        }
                    }
                }
                for r in shared.room_list() {
                    let expired = r.inner.borrow().state.gap_expired(now);
                    if expired {
                        shared.refetch(&r).await;
                    }
                }
                if watchdog.is_some_and(|t| now >= t) {
                    // Neither an event nor a heartbeat (nor, on a WebSocket, a `pong`): the
                    // connection stalled after it opened (a proxy that stopped forwarding, a
                    // half-open path). It is closed and counts as a stall.
                    warn(match kind {
                        TransportKind::Ws => "tidewire: the WebSocket stalled (no frame)",
                        _ => "tidewire: the event stream stalled (no heartbeat)",
                    });
                    break End::Lost {
                        opened_for: heartbeat_ms.and(opened_at).map(|t| now - t),
                        stalled: true,
                        retry_ms,
                    };
                }
                match opened_at {
                    None if now >= started + shared.open_timeout_ms => {
                        break End::Lost {
                            opened_for: None,
                            stalled: true,
                            retry_ms: None,
                        }
                    }
                    Some(t) if degraded && now >= t + shared.climb_ms => {
                        shared.conn.borrow_mut().ladder.climb();
                        break End::Again;
                    }
                    _ => {}
                }
            }
            Some(Msg::Transport(g, _)) if g != gen => {}
            Some(Msg::Transport(_, m)) => match m {
                TransportMsg::Alive => last_seen = now,
                TransportMsg::Heartbeat {
                    heartbeat_ms: h,
                    retry_ms: r,
                } => {
                    last_seen = now;
                    heartbeat_ms = Some(h.max(1));
                    retry_ms = Some(r);
                }
                TransportMsg::Opened => {
                    opened_at = Some(now);
                    last_seen = now;
                    shared.conn.borrow_mut().ladder.opened(kind);
                    shared.set(Input::Opened {
                        transport: kind,
                        degraded,
                    });
                }
                TransportMsg::Envelope(env) => {
                    last_seen = now;
                    if let Some(retry_ms) = shared.dispatch(env).await {
                        shared.conn.borrow_mut().backoff.hint(retry_ms);
                        break End::Lost {
                            opened_for: opened_at.map(|t| now - t),
                            stalled: false,
                            retry_ms: None,
                        };
                    }
                }
                TransportMsg::Snapshot(snap) => {
                    let room = shared.rooms.borrow().get(&snap.room).cloned();
                    if let Some(room) = room {
                        let changed = room.inner.borrow().state.seq() != snap.seq;
                        if changed {
                            shared.load_snapshot(&room, snap);
                        }
                    }
                }
                TransportMsg::Ack { r#ref, result } => {
                    last_seen = now;
                    let waiter = r#ref.and_then(|r| shared.acks.borrow_mut().remove(&r));
                    match (waiter, result) {
                        (Some(tx), result) => {
                            let _ = tx.send(result);
                        }
                        (None, Err(e)) => warn(&format!("tidewire: {}: {}", e.code, e.title)),
                        (None, Ok(_)) => {}
                    }
                }
                TransportMsg::Bad(why) => {
                    last_seen = now;
                    warn(&format!("tidewire: {why}"))
                }
                TransportMsg::Closed { reason, code } => {
                    if code.is_some_and(|c| c >= 4500) {
                        warn(&format!("tidewire: {reason}"));
                    }
                    break End::Lost {
                        opened_for: opened_at.map(|t| now - t),
                        stalled: false,
                        retry_ms: None,
                    };
                }
                TransportMsg::Stalled => {
                    break End::Lost {
                        opened_for: None,
                        stalled: opened_at.is_none() || kind == TransportKind::LongPoll,
                        retry_ms: None,
                    }
                }
            },
            Some(Msg::RoomAdded) => {
                if kind == TransportKind::Ws && opened_at.is_some() {
                    // Subscribe the new rooms on the open socket, after their snapshot.
                    let mut fresh = Vec::new();
                    for r in shared.room_list() {
                        if !r.inner.borrow().state.is_synced() {
                            shared.refetch(&r).await;
                            fresh.push(r);
                        }
                    }
                    if !fresh.is_empty() {
                        shared.send_ws(&shared.subscribe_frame(&fresh));
                    }
                } else {
                    break End::Again;
                }
            }
            Some(Msg::WantWs) => {
                if kind != TransportKind::Ws && shared.forced.is_none() {
                    break End::Again;
                }
            }
            Some(Msg::Drop) => {
                break End::Lost {
                    opened_for: opened_at.map(|t| now - t),
                    stalled: false,
                    retry_ms: None,
                }
            }
            Some(Msg::Offline) => break End::Offline,
            Some(Msg::Online) | Some(Msg::Visible) | Some(Msg::Tick) => {}
            Some(Msg::Close) => break End::Close,
        }
    };
    // Whatever ended an SSE stream that announced the server's `retry:`, the next delay
    // honours it as a floor.
    let end = match end {
        End::Lost {
            opened_for,
            stalled,
            retry_ms: None,
        } => End::Lost {
            opened_for,
            stalled,
            retry_ms,
        },
        end => end,
    };
    let active = shared.conn.borrow_mut().active.take();
    drop(active);
    // Writes waiting for an ack on this socket fail now and retry with the same key.
    let waiting = std::mem::take(&mut *shared.acks.borrow_mut());
    drop(waiting);
    end
}

/// A room on a client's connection. Cheap to clone.
#[derive(Clone)]
pub struct Room {
    shared: Rc<Shared>,
    room: Rc<RoomShared>,
}

impl Room {
    /// The room's name.
    pub fn name(&self) -> &str {
        &self.room.name
    }

    /// The items as the application sees them (pending writes included), sorted by id.
    pub fn items(&self) -> Vec<ViewItem> {
        self.room.inner.borrow().state.items()
    }

    /// The last applied seq.
    pub fn seq(&self) -> u64 {
        self.room.inner.borrow().state.seq()
    }

    /// Present members (presence events arrive over SSE and WebSocket).
    pub fn members(&self) -> Vec<Member> {
        self.room.inner.borrow().state.members().to_vec()
    }

    /// Calls `f` with the new state and its cause on every change.
    pub fn subscribe(&self, f: impl Fn(&RoomUpdate) + 'static) -> Subscription {
        self.room.updates.add(f)
    }

    /// Room updates as a stream.
    pub fn updates(&self) -> ListenerStream<RoomUpdate> {
        self.room.updates.stream()
    }

    /// Calls `f` when an optimistic write is rolled back.
    pub fn on_rollback(&self, f: impl Fn(&Rollback) + 'static) -> Subscription {
        self.room.rollbacks.add(f)
    }

    /// Calls `f` on presence changes.
    pub fn on_presence(&self, f: impl Fn(&PresenceUpdate) + 'static) -> Subscription {
        self.room.presence.add(f)
    }

    /// Calls `f` on broadcast messages from other clients.
    pub fn on_broadcast(&self, f: impl Fn(&BroadcastMessage) + 'static) -> Subscription {
        self.room.broadcasts.add(f)
    }

    /// Optimistically puts `value`; confirmed with the server's event, rolled back on refusal.
    /// `If-Match` is the version the client knows, when it knows the item. The pending value
    /// shows in [`Room::items`] as soon as this is called, before the future is polled.
    pub fn put(
        &self,
        id: &str,
        value: Value,
    ) -> impl std::future::Future<Output = Result<Envelope, Error>> + 'static {
        self.write(id, WriteOp::Put(value), None)
    }

    /// [`Room::put`] with an explicit `If-Match` version (`Some(0)`: only if absent).
    pub fn put_if(
        &self,
        id: &str,
        value: Value,
        if_match: Option<u64>,
    ) -> impl std::future::Future<Output = Result<Envelope, Error>> + 'static {
        self.write(id, WriteOp::Put(value), if_match)
    }

    /// Optimistically deletes an item.
    pub fn delete(
        &self,
        id: &str,
    ) -> impl std::future::Future<Output = Result<Envelope, Error>> + 'static {
        self.write(id, WriteOp::Delete, None)
    }

    /// [`Room::delete`] with an explicit `If-Match` version.
    pub fn delete_if(
        &self,
        id: &str,
        if_match: Option<u64>,
    ) -> impl std::future::Future<Output = Result<Envelope, Error>> + 'static {
        self.write(id, WriteOp::Delete, if_match)
    }

    /// Appends an application event to the room's log.
    pub async fn publish(&self, event_type: &str, data: Value) -> Result<Envelope, Error> {
        tidewire_protocol::validate_event_type(event_type)?;
        let key = self.shared.next_key();
        let env = http::publish(&self.shared.api, &self.room.name, event_type, &data, &key).await?;
        self.shared.apply_durable(&self.room, env.clone());
        Ok(env)
    }

    /// Applies the write locally at once; the returned future sends it.
    fn write(
        &self,
        id: &str,
        op: WriteOp,
        if_match: Option<u64>,
    ) -> impl std::future::Future<Output = Result<Envelope, Error>> + 'static {
        let started = self.begin(id, &op, if_match);
        let this = self.clone();
        let id = id.to_owned();
        async move {
            let (key, expected) = started?;
            this.send_write(key, id, op, expected).await
        }
    }

    fn begin(
        &self,
        id: &str,
        op: &WriteOp,
        if_match: Option<u64>,
    ) -> Result<(String, Option<u64>), Error> {
        validate_item_id(id)?;
        if self.shared.is_closed() {
            return Err(Error::Closed);
        }
        let key = self.shared.next_key();
        let expected = {
            let mut inner = self.room.inner.borrow_mut();
            let expected = if_match.or_else(|| inner.state.expected_version(id));
            inner.state.begin_write(key.clone(), id, op.clone());
            expected
        };
        self.room.emit_update(Cause::Local(LocalCause::Pending {
            room: self.room.name.clone(),
            id: id.to_owned(),
            key: key.clone(),
        }));
        Ok((key, expected))
    }

    async fn send_write(
        self,
        key: String,
        id: String,
        op: WriteOp,
        expected: Option<u64>,
    ) -> Result<Envelope, Error> {
        let id = id.as_str();
        let mut attempt = 0u32;
        loop {
            let result = match self.write_over_ws(id, &op, &key, expected) {
                Some(ack) => ack.await,
                None => match &op {
                    WriteOp::Put(v) => {
                        http::put(&self.shared.api, &self.room.name, id, v, &key, expected).await
                    }
                    WriteOp::Delete => {
                        http::delete(&self.shared.api, &self.room.name, id, &key, expected).await
                    }
                },
            };
            match result {
                Ok(env) => {
                    self.shared.apply_durable(&self.room, env.clone());
                    return Ok(env);
                }
                Err(e) if e.is_retryable() && attempt < self.shared.write_retries => {
                    let wait = (250u64 << attempt.min(5)).min(5_000);
                    attempt += 1;
                    TimeoutFuture::new(clamp_ms(wait)).await;
                    while !online() && !self.shared.is_closed() {
                        TimeoutFuture::new(500).await;
                    }
                }
                Err(e) => {
                    self.roll_back(&key, id, &e);
                    return Err(e);
                }
            }
        }
    }

    /// Sends the write as a frame when a WebSocket is open; the future resolves with its ack
    /// (a network error when the socket closes first or no ack comes within 10 s).
    fn write_over_ws(
        &self,
        id: &str,
        op: &WriteOp,
        key: &str,
        if_match: Option<u64>,
    ) -> Option<impl std::future::Future<Output = Result<Envelope, Error>>> {
        let r = format!("w{}", self.shared.next_key());
        let frame = match op {
            WriteOp::Put(value) => ClientFrame::Put {
                r#ref: Some(r.clone()),
                room: self.room.name.clone(),
                id: id.to_owned(),
                value: value.clone(),
                key: Some(key.to_owned()),
                if_match,
            },
            WriteOp::Delete => ClientFrame::Delete {
                r#ref: Some(r.clone()),
                room: self.room.name.clone(),
                id: id.to_owned(),
                key: Some(key.to_owned()),
                if_match,
            },
        }
        .encode();
        let (tx, rx) = oneshot::channel();
        self.shared.acks.borrow_mut().insert(r.clone(), tx);
        if !self.shared.send_ws(&frame) {
            self.shared.acks.borrow_mut().remove(&r);
            return None;
        }
        let shared = self.shared.clone();
        Some(async move {
            let outcome = match select(rx, TimeoutFuture::new(10_000)).await {
                Either::Left((Ok(result), _)) => Some(result),
                _ => None,
            };
            shared.acks.borrow_mut().remove(&r);
            match outcome {
                Some(Ok(Some(env))) => Ok(env),
                Some(Ok(None)) => Err(Error::Network("an ack without the event".into())),
                Some(Err(e)) => Err(Error::Server {
                    code: e.code,
                    status: 0,
                    message: e.title,
                    current: e.current,
                }),
                None => Err(Error::Network("the WebSocket closed before the ack".into())),
            }
        })
    }

    fn roll_back(&self, key: &str, id: &str, error: &Error) {
        let (value, version) = match error {
            Error::Server {
                current: Some(item),
                ..
            } => (item.value.clone(), Some(item.version)),
            _ => {
                let inner = self.room.inner.borrow();
                match inner.state.confirmed(id) {
                    Some((v, ver)) => (v.clone(), Some(ver)),
                    None => (Value::Null, None),
                }
            }
        };
        let removed = self.room.inner.borrow_mut().state.rollback(key);
        if removed.is_none() {
            return;
        }
        self.room.rollbacks.emit(&Rollback {
            id: id.to_owned(),
            value,
            version,
            error: ErrorInfo::from(error),
        });
        self.room.emit_update(Cause::Local(LocalCause::Rollback {
            room: self.room.name.clone(),
            id: id.to_owned(),
            key: key.to_owned(),
        }));
    }

    /// Joins the room's presence set with `meta` (switches `auto` to WebSocket).
    pub fn join(&self, meta: Value) -> Result<(), Error> {
        self.room.inner.borrow_mut().meta = Some(meta.clone());
        if !self.shared.send_ws(&presence_frame(&self.room.name, meta)) {
            self.want_ws()?;
        }
        Ok(())
    }

    /// Sends an ephemeral message to everyone else in the room (switches `auto` to
    /// WebSocket; messages sent before the socket opens are queued, at most 64).
    pub fn broadcast(&self, event: &str, data: Value) -> Result<(), Error> {
        let frame = ClientFrame::Broadcast {
            r#ref: None,
            room: self.room.name.clone(),
            event: event.to_owned(),
            data,
        }
        .encode();
        if !self.shared.send_ws(&frame) {
            self.want_ws()?;
            let mut inner = self.room.inner.borrow_mut();
            if inner.outbox.len() < 64 {
                inner.outbox.push(frame);
            }
        }
        Ok(())
    }

    fn want_ws(&self) -> Result<(), Error> {
        if self.shared.is_closed() {
            return Err(Error::Closed);
        }
        match self.shared.forced {
            Some(TransportKind::Ws) | None => {}
            Some(other) => {
                return Err(Error::BadOption {
                    name: "transport",
                    reason: format!(
                        "presence and broadcast need a WebSocket; the client is forced to {}",
                        other.as_str()
                    ),
                })
            }
        }
        let changed = self.shared.conn.borrow_mut().ladder.want_ws();
        if changed {
            let _ = self.shared.tx.unbounded_send(Msg::WantWs);
        }
        Ok(())
    }

    /// Feeds an envelope as if a transport had delivered it (for tests and custom transports).
    #[doc(hidden)]
    pub fn feed(&self, env: Envelope<RawAppEvent>) {
        if env.event.is_durable() {
            self.shared.apply_durable(&self.room, env);
        } else {
            let shared = self.shared.clone();
            wasm_bindgen_futures::spawn_local(async move {
                shared.dispatch(env).await;
            });
        }
    }
}
