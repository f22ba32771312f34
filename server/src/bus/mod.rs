//! Fan-out between nodes: every write and ephemeral message is published on the bus, and each
//! node's [`Hub`](crate::hub::Hub) delivers what it receives to its local connections.
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

/// Publish/subscribe between the nodes of a deployment.
///
/// Contract: messages one publisher sends for one room arrive in the order they were
/// published. The bus **may be lossy** (a Redis implementation can drop messages during a
/// reconnect): receivers notice a missing `seq` and read it from the store, so no durable
/// event is lost. Ephemeral messages may be lost.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Sends to every subscriber, on every node (including this one).
    async fn publish(&self, msg: BusMessage) -> Result<()>;
    /// Everything published from now on.
    fn subscribe(&self) -> BoxStream<'static, BusMessage>;
}
