//! The state one client's parts share: the options, the connection (state machine, backoff,
//! ladder, live transport), the rooms with their listeners and expected changes, the error
//! listeners, and the writes waiting for an `ack`. The facade ([`crate::Client`]), the room handles, the supervisor and the connection
//! all hold an `Rc<Shared>`; the supervisor is told about changes through [`Msg`]s.
//!
//! ```ignore
//! let shared: Rc<Shared> = client_shared();
//! shared.set(Input::Connect); // notifies the state listeners once
//! let cursor = shared.cursor(); // every room's last applied seq
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use futures::channel::mpsc::UnboundedSender;
use futures::channel::oneshot;
use gloo_events::EventListener;
use serde_json::Value;
use tidewire_protocol::{Cursor, Envelope, Snapshot};

use crate::backoff::{Backoff, Random};
use crate::browser::now_ms;
use crate::deadlines::Bounds;
use crate::expect::Expectations;
use crate::http;
use crate::ladder::Ladder;
use crate::listeners::Listeners;
use crate::room::RoomState;
use crate::state::{ConnState, Input, StateMachine};
use crate::transport::{Active, Sink};
use crate::types::{
    BroadcastMessage, Cause, ErrorInfo, LocalCause, PresenceUpdate, Rollback, RoomUpdate,
};
use crate::{Options, StateChange};

/// What the supervisor is told.
pub(crate) enum Msg {
    /// A transport of connection number `gen` reports.
    Transport(u64, crate::transport::TransportMsg),
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

pub(crate) struct RoomInner {
    pub(crate) state: RoomState,
    /// The presence meta, once the application joined.
    pub(crate) meta: Option<Value>,
    /// Broadcast frames waiting for a WebSocket.
    pub(crate) outbox: Vec<String>,
}

/// One room of a client: its state and its listeners.
pub(crate) struct RoomShared {
    pub(crate) name: String,
    pub(crate) inner: RefCell<RoomInner>,
    pub(crate) updates: Listeners<RoomUpdate>,
    pub(crate) rollbacks: Listeners<Rollback>,
    pub(crate) presence: Listeners<PresenceUpdate>,
    pub(crate) broadcasts: Listeners<BroadcastMessage>,
    /// Changes the application expects by key ([`crate::Room::expect`]).
    pub(crate) expected: Expectations,
}

impl RoomShared {
    pub(crate) fn new(name: &str, reorder_ms: u64) -> RoomShared {
        RoomShared {
            name: name.to_owned(),
            inner: RefCell::new(RoomInner {
                state: RoomState::new(name, reorder_ms),
                meta: None,
                outbox: Vec::new(),
            }),
            updates: Listeners::new(),
            rollbacks: Listeners::new(),
            presence: Listeners::new(),
            broadcasts: Listeners::new(),
            expected: Expectations::default(),
        }
    }

    /// Tells the room's subscribers its state now, and why.
    pub(crate) fn emit_update(&self, event: Cause) {
        let (items, seq) = {
            let inner = self.inner.borrow();
            (inner.state.items(), inner.state.seq())
        };
        self.updates.emit(&RoomUpdate { items, seq, event });
    }

    fn clear_listeners(&self) {
        self.updates.clear();
        self.rollbacks.clear();
        self.presence.clear();
        self.broadcasts.clear();
    }

    /// `(name, last applied seq)`, for cursors and frames.
    pub(crate) fn position(&self) -> (String, u64) {
        (self.name.clone(), self.inner.borrow().state.seq())
    }
}

/// The connection: everything the supervisor changes.
pub(crate) struct Conn {
    pub(crate) machine: StateMachine,
    pub(crate) backoff: Backoff,
    pub(crate) random: Box<dyn Random>,
    pub(crate) active: Option<Active>,
    /// The number of the current connection; reports of older ones are ignored.
    pub(crate) gen: u64,
    pub(crate) ladder: Ladder,
    pub(crate) key_seq: u64,
    pub(crate) window_listeners: Vec<EventListener>,
}

/// The outcome of a write sent over the WebSocket.
pub(crate) type AckResult = Result<Option<Envelope>, tidewire_protocol::AckError>;

pub(crate) struct Shared {
    /// The options (their function-valued parts moved to `conn` and `api`).
    pub(crate) options: Options,
    /// The server and this client's token source, for every REST call.
    pub(crate) api: http::Endpoint,
    pub(crate) client_id: String,
    pub(crate) tx: UnboundedSender<Msg>,
    pub(crate) conn: RefCell<Conn>,
    pub(crate) rooms: RefCell<BTreeMap<String, Rc<RoomShared>>>,
    pub(crate) states: Listeners<StateChange>,
    /// Protocol errors: what arrived and could not be understood, the server's error frames.
    pub(crate) errors: Listeners<ErrorInfo>,
    /// Writes sent over the WebSocket, waiting for their `ack`, by `ref`. Dropped (failing
    /// the writes, which then retry) when the connection ends.
    pub(crate) acks: RefCell<BTreeMap<String, oneshot::Sender<AckResult>>>,
}

impl Shared {
    pub(crate) fn bounds(&self) -> Bounds {
        Bounds {
            open_timeout_ms: self.options.open_timeout_ms,
            heartbeat_slack_ms: self.options.heartbeat_slack_ms,
            climb_ms: self.options.climb_ms,
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        *self.conn.borrow().machine.state() == ConnState::Closed
    }

    pub(crate) fn close(&self) {
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
        self.errors.clear();
        for room in self.rooms.borrow().values() {
            room.clear_listeners();
        }
    }

    /// Tells the supervisor when the browser goes online or offline and when the tab
    /// becomes visible.
    pub(crate) fn listen_to_window(&self) {
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

    /// A fresh idempotency key (also used for frame `ref`s).
    pub(crate) fn next_key(&self) -> String {
        let mut c = self.conn.borrow_mut();
        c.key_seq += 1;
        format!(
            "{}-{}-{}",
            self.client_id,
            js_sys::Date::now() as u64,
            c.key_seq
        )
    }

    /// Feeds the state machine; notifies the state listeners when the state changed.
    pub(crate) fn set(&self, input: Input) {
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

    pub(crate) fn room_list(&self) -> Vec<Rc<RoomShared>> {
        self.rooms.borrow().values().cloned().collect()
    }

    pub(crate) fn room(&self, name: &str) -> Option<Rc<RoomShared>> {
        self.rooms.borrow().get(name).cloned()
    }

    /// Every room's last applied seq.
    pub(crate) fn cursor(&self) -> Cursor {
        let positions: Vec<(String, u64)> = self.room_list().iter().map(|r| r.position()).collect();
        crate::frames::cursor(&positions)
    }

    /// Applies a durable event and tells the room's subscribers.
    pub(crate) fn apply_durable(&self, room: &RoomShared, env: Envelope) {
        let outcome = {
            let mut inner = room.inner.borrow_mut();
            inner.state.apply(env, now_ms())
        };
        if outcome.buffered {
            let _ = self.tx.unbounded_send(Msg::Tick);
        }
        for env in outcome.applied {
            room.emit_update(Cause::Event(env.clone()));
            room.expected.confirm(&env);
        }
    }

    /// Fetches a room's snapshot and loads it.
    pub(crate) async fn refetch(&self, room: &RoomShared) -> bool {
        match http::snapshot(&self.api, &room.name).await {
            Ok(snap) => {
                self.load_snapshot(room, snap);
                true
            }
            Err(_) => false,
        }
    }

    pub(crate) fn load_snapshot(&self, room: &RoomShared, snap: Snapshot) {
        let seq = snap.seq;
        let applied = room.inner.borrow_mut().state.load_snapshot(snap, now_ms());
        room.emit_update(Cause::Local(LocalCause::Snapshot {
            room: room.name.clone(),
            seq,
        }));
        for env in applied {
            room.emit_update(Cause::Event(env.clone()));
            room.expected.confirm(&env);
        }
    }

    /// Sends a frame on the open WebSocket; false when there is none.
    pub(crate) fn send_ws(&self, frame: &str) -> bool {
        let c = self.conn.borrow();
        c.active.as_ref().is_some_and(|a| a.send(frame))
    }

    /// Where the transport of connection number `gen` reports.
    pub(crate) fn sink(&self, gen: u64) -> Sink {
        let tx = self.tx.clone();
        Rc::new(move |m| {
            let _ = tx.unbounded_send(Msg::Transport(gen, m));
        })
    }
}
