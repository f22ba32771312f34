//! Fan-out between nodes: every write and ephemeral message is published on the bus, and each
//! node's [`Hub`](crate::hub::Hub) delivers what it receives to its local connections.
//!
//! **Interest**: a node receives only the rooms it [`follow`](Bus::follow)s (the hub follows a
//! room when its first local connection does and unfollows it when the last one leaves), so
//! a node's bus traffic grows with what it delivers, not with the whole deployment.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use futures::StreamExt;
//! use tidewire_server::bus::{memory::MemoryBus, Bus, BusMessage};
//! let bus = MemoryBus::new();
//! let mut rx = bus.subscribe();
//! bus.publish(BusMessage::broadcast("r", None, "{}".into())).await.unwrap();
//! assert_eq!(&*rx.next().await.unwrap().room, "r");
//! # });
//! ```

pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;

use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::payload::Payload;
use crate::Result;

/// What a bus message is, which decides who receives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A durable event with a `seq`: every subscriber of the room.
    Durable,
    /// A `broadcast`: every subscriber of the room but its origin connection.
    Broadcast,
    /// A `presence.*` event: subscribers of the room that follow presence.
    Presence,
}

/// One message on the bus: an envelope serialised once, with its routing.
#[derive(Debug, Clone, PartialEq)]
pub struct BusMessage {
    /// The room.
    pub room: Arc<str>,
    /// The seq, for durable events.
    pub seq: Option<u64>,
    /// Who receives it.
    pub kind: Kind,
    /// The connection that sent it (not echoed back to it).
    pub origin: Option<Arc<str>>,
    /// The envelope JSON.
    pub payload: Payload,
}

impl BusMessage {
    /// A durable event.
    pub fn durable(room: &str, seq: u64, payload: Payload) -> Self {
        BusMessage {
            room: room.into(),
            seq: Some(seq),
            kind: Kind::Durable,
            origin: None,
            payload,
        }
    }

    /// A broadcast from `origin`.
    pub fn broadcast(room: &str, origin: Option<&str>, payload: Payload) -> Self {
        BusMessage {
            room: room.into(),
            seq: None,
            kind: Kind::Broadcast,
            origin: origin.map(Into::into),
            payload,
        }
    }

    /// A presence event.
    pub fn presence(room: &str, payload: Payload) -> Self {
        BusMessage {
            room: room.into(),
            seq: None,
            kind: Kind::Presence,
            origin: None,
            payload,
        }
    }
}

/// What a bus stream yields: messages, and the confirmation that rooms are now subscribed.
#[derive(Debug, Clone, PartialEq)]
pub enum BusEvent {
    /// A published message of a followed room.
    Message(BusMessage),
    /// These rooms are subscribed from now on (after a [`Bus::follow`], or again after a
    /// reconnect): anything published later arrives; anything published before may not have,
    /// so the receiver reads each room's head from the store once now.
    Followed(Vec<Arc<str>>),
}

/// Publish/subscribe between the nodes of a deployment.
///
/// Contract:
/// - Messages one publisher sends for one room arrive in the order they were published.
/// - The bus **may be lossy** (a Redis implementation can drop messages during a reconnect):
///   receivers notice a missing `seq` and read it from the store, so no durable event is
///   lost. Ephemeral messages may be lost.
/// - **Interest**: [`follow`](Bus::follow) and [`unfollow`](Bus::unfollow) say which rooms
///   this bus instance's streams need. They never wait and never fail: the implementation
///   applies them in the background, **batching** what accumulated (a storm of follows is a
///   few subscribe commands, and a follow undone before it was applied costs nothing), and
///   keeps the last call per room. A stream receives every message of a room from the moment
///   its [`BusEvent::Followed`] is yielded until the room is unfollowed; it may receive
///   messages of other rooms too (the in-process bus delivers everything), which the receiver
///   ignores. Interest is per bus instance (per node), shared by all its streams.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Sends to every node subscribed to the message's room (including this one).
    async fn publish(&self, msg: BusMessage) -> Result<()>;
    /// The messages published from now on (of the followed rooms, at least).
    fn subscribe(&self) -> BoxStream<'static, BusMessage>;
    /// Messages and subscription confirmations; by default [`subscribe`](Bus::subscribe)'s
    /// messages, for a bus that delivers every room without being asked.
    fn events(&self) -> BoxStream<'static, BusEvent> {
        use futures::StreamExt;
        self.subscribe().map(BusEvent::Message).boxed()
    }
    /// This node needs the messages of `room` (no-op by default: everything is delivered).
    fn follow(&self, room: &str) {
        let _ = room;
    }
    /// This node no longer needs the messages of `room`.
    fn unfollow(&self, room: &str) {
        let _ = room;
    }
}
