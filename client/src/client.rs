//! The client facade: [`Client`] starts the supervisor, hands out [`Room`]s and reports the
//! connection state. One live connection carries all of a client's rooms; the supervisor
//! ([`crate::supervisor`]) picks the transport, reconnects with backoff, falls back when SSE
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

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use futures::channel::mpsc::unbounded;
use tidewire_protocol::validate_room;

use crate::backoff::{Backoff, Random};
use crate::browser::random_id;
use crate::http;
use crate::ladder::Ladder;
use crate::listeners::{ListenerStream, Listeners, Subscription};
use crate::room_handle::Room;
use crate::shared::{Conn, Msg, RoomShared, Shared};
use crate::state::{ConnState, StateMachine, TransportKind};
use crate::supervisor;
use crate::types::ErrorInfo;
use crate::{Error, Options, StateChange};

/// Closes the client when the last [`Client`] handle goes away (unless disarmed).
struct CloseOnDrop {
    shared: Rc<Shared>,
    armed: Cell<bool>,
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
    pub fn new(mut options: Options) -> Result<Client, Error> {
        if !(options.url.starts_with("http://") || options.url.starts_with("https://")) {
            return Err(Error::BadOption {
                name: "url",
                reason: format!("`{}` is not an http(s) URL", options.url),
            });
        }
        let (tx, rx) = unbounded();
        let random: Box<dyn Random> = options
            .random
            .take()
            .unwrap_or_else(|| Box::new(js_sys::Math::random));
        let api = match options.token.take() {
            Some(source) => http::Endpoint::with_token(&options.url, source),
            None => http::Endpoint::new(&options.url),
        };
        options.ws_ping_ms = options.ws_ping_ms.max(1);
        options.long_poll_wait_secs = options.long_poll_wait_secs.min(60);
        let client_id = options.client_id.clone().unwrap_or_else(random_id);
        let conn = Conn {
            machine: StateMachine::new(),
            backoff: Backoff::new(options.backoff),
            random,
            active: None,
            gen: 0,
            ladder: Ladder::new(options.transport),
            key_seq: 0,
            window_listeners: Vec::new(),
        };
        let shared = Rc::new(Shared {
            options,
            api,
            client_id,
            tx,
            conn: RefCell::new(conn),
            rooms: RefCell::new(BTreeMap::new()),
            states: Listeners::new(),
            errors: Listeners::new(),
            acks: RefCell::new(BTreeMap::new()),
        });
        shared.listen_to_window();
        wasm_bindgen_futures::spawn_local(supervisor::run(shared.clone(), rx));
        Ok(Client {
            _guard: Some(Rc::new(CloseOnDrop {
                shared: shared.clone(),
                armed: Cell::new(true),
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
            return Ok(Room::new(self.shared.clone(), r.clone()));
        }
        if rooms.len() >= tidewire_protocol::limits::MAX_ROOMS_PER_CONNECTION {
            return Err(Error::Protocol(
                tidewire_protocol::ProtocolError::TooManyRooms {
                    count: rooms.len() + 1,
                    limit: tidewire_protocol::limits::MAX_ROOMS_PER_CONNECTION,
                },
            ));
        }
        let room = Rc::new(RoomShared::new(name, self.shared.options.reorder_ms));
        rooms.insert(name.to_owned(), room.clone());
        drop(rooms);
        let _ = self.shared.tx.unbounded_send(Msg::RoomAdded);
        Ok(Room::new(self.shared.clone(), room))
    }

    /// Calls `f` on every state change until the subscription is dropped.
    pub fn on_state(&self, f: impl Fn(&StateChange) + 'static) -> Subscription {
        self.shared.states.add(f)
    }

    /// Calls `f` with `{ code, message }` when something arrives that breaks the protocol (an
    /// envelope with an unknown `v` or `type`, a malformed frame) or the server sends an
    /// error frame. The connection keeps running; what follows is still applied.
    pub fn on_error(&self, f: impl Fn(&ErrorInfo) + 'static) -> Subscription {
        self.shared.errors.add(f)
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
        self.shared.room(room).map(|r| r.inner.borrow().state.seq())
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
