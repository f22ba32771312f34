//! [`Room`]: the handle of one room on a client's connection (what centrifuge-js calls a
//! subscription). It reads the room's state, registers listeners, and joins presence and
//! broadcasts; its writes (optimistic `put`/`delete`, `publish`) are in
//! [`crate::optimistic`], changes the application makes elsewhere in [`crate::expect`]. The state itself is [`crate::room::RoomState`].
//!
//! ```ignore
//! let room = client.room("board-1")?;
//! let _u = room.subscribe(|u| log(&format!("{} items at seq {}", u.items.len(), u.seq)));
//! room.join(serde_json::json!({"name": "Ada"}))?;
//! room.broadcast("cursor", serde_json::json!({"x": 1}))?;
//! ```

use std::rc::Rc;

use serde_json::Value;
use tidewire_protocol::{Envelope, Member, RawAppEvent};

use crate::frames;
use crate::listeners::{ListenerStream, Subscription};
use crate::room::ViewItem;
use crate::shared::{Msg, RoomShared, Shared};
use crate::state::TransportKind;
use crate::types::{BroadcastMessage, PresenceUpdate, Rollback, RoomUpdate};
use crate::Error;

/// A room on a client's connection. Cheap to clone.
#[derive(Clone)]
pub struct Room {
    pub(crate) shared: Rc<Shared>,
    pub(crate) room: Rc<RoomShared>,
}

impl Room {
    pub(crate) fn new(shared: Rc<Shared>, room: Rc<RoomShared>) -> Room {
        Room { shared, room }
    }

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

    /// Joins the room's presence set with `meta` (switches `auto` to WebSocket).
    pub fn join(&self, meta: Value) -> Result<(), Error> {
        self.room.inner.borrow_mut().meta = Some(meta.clone());
        if !self
            .shared
            .send_ws(&frames::presence(&self.room.name, meta))
        {
            self.want_ws()?;
        }
        Ok(())
    }

    /// Sends an ephemeral message to everyone else in the room (switches `auto` to
    /// WebSocket; messages sent before the socket opens are queued, at most 64).
    pub fn broadcast(&self, event: &str, data: Value) -> Result<(), Error> {
        let frame = frames::broadcast(&self.room.name, event, data);
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
        match self.shared.options.transport {
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
