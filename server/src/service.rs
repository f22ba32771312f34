//! The write path: store, then publish, in seq order per room.
//!
//! A room's writes are serialised by a striped async mutex held across commit and publish, so
//! events of one room reach the bus in `seq` order. Ephemeral messages (broadcast, presence)
//! go straight to the bus.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use tidewire_server::{bus::memory::MemoryBus, presence::memory::MemoryPresence, service::Service};
//! use tidewire_server::store::{sqlite::SqliteStore, Retention, WriteOp, WriteRequest};
//! let store = Arc::new(SqliteStore::open("sqlite::memory:", Retention::default()).await.unwrap());
//! let presence = Arc::new(MemoryPresence::new(std::time::Duration::from_secs(5), std::time::Duration::from_secs(60)));
//! let service = Service::new(store, Arc::new(MemoryBus::new()), presence);
//! let w = service.write(WriteRequest::new("r", WriteOp::Delete { id: "x".into() })).await;
//! assert!(w.is_err(), "nothing to delete");
//! # });
//! ```

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;
use tidewire_protocol::{BroadcastData, Envelope, Event, Member};
use tokio::sync::Mutex;

use crate::bus::{Bus, BusMessage};
use crate::presence::Presence;
use crate::store::{now, Store, WriteRequest, Written};
use crate::{metrics, Result};

const STRIPES: usize = 256;

/// Store, bus and presence, and the ordering of writes.
pub struct Service {
    /// The durable store.
    pub store: Arc<dyn Store>,
    /// The bus.
    pub bus: Arc<dyn Bus>,
    /// Presence sets.
    pub presence: Arc<dyn Presence>,
    stripes: Vec<Mutex<()>>,
}

/// An ephemeral envelope's JSON.
pub fn ephemeral_json(room: &str, event: Event) -> String {
    Envelope::ephemeral(room, ulid::Ulid::generate().to_string(), now().0, event).encode()
}

impl Service {
    /// Wires the parts together.
    pub fn new(store: Arc<dyn Store>, bus: Arc<dyn Bus>, presence: Arc<dyn Presence>) -> Self {
        Service {
            store,
            bus,
            presence,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }

    fn stripe(&self, room: &str) -> &Mutex<()> {
        let mut h = DefaultHasher::new();
        room.hash(&mut h);
        &self.stripes[(h.finish() as usize) % STRIPES]
    }

    /// Appends, then publishes (not when the write was a replay).
    pub async fn write(&self, req: WriteRequest) -> Result<Written> {
        let started = Instant::now();
        let _guard = self.stripe(&req.room).lock().await;
        let written = self.store.write(req).await?;
        if !written.replayed {
            let seq = written.envelope.seq.unwrap_or_default();
            self.bus
                .publish(BusMessage::durable(
                    &written.envelope.room,
                    seq,
                    written.json.clone().into(),
                ))
                .await?;
            metrics::event_in();
        }
        metrics::write_latency(started.elapsed());
        Ok(written)
    }

    /// Sends a `broadcast` to the room's subscribers other than connection `origin`.
    pub async fn broadcast(
        &self,
        room: &str,
        origin: &str,
        from: &str,
        event: String,
        data: Value,
    ) -> Result<()> {
        let json = ephemeral_json(
            room,
            Event::Broadcast(BroadcastData {
                event,
                data,
                from: Some(from.to_owned()),
            }),
        );
        self.bus
            .publish(BusMessage::broadcast(room, Some(origin), json.into()))
            .await
    }

    /// Joins (or updates) `member` in `room` for connection `conn`, telling the room when
    /// something changed.
    pub async fn presence_join(&self, room: &str, conn: &str, member: Member) -> Result<()> {
        if self.presence.join(room, conn, member.clone()).await? {
            let json = ephemeral_json(room, Event::PresenceJoin(member));
            self.bus
                .publish(BusMessage::presence(room, json.into()))
                .await?;
        }
        Ok(())
    }

    /// Announces members whose grace or TTL ran out.
    pub async fn reap_presence(&self) -> Result<()> {
        for (room, member) in self.presence.reap().await? {
            let json = ephemeral_json(&room, Event::PresenceLeave(member));
            self.bus
                .publish(BusMessage::presence(&room, json.into()))
                .await?;
        }
        Ok(())
    }
}
