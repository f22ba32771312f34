//! Fan-out to this node's connections.
//!
//! The hub consumes the [`Bus`](crate::bus::Bus) and pushes each message into the bounded
//! queue of every local connection following its room. Per room it remembers the last `seq`
//! it delivered: a message with `seq <= last` is a duplicate and dropped; a message with
//! `seq > last + 1` reveals a gap (a lossy bus), which is filled from the store before the
//! message is delivered. The hub never asks which transport a connection uses.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use tidewire_server::hub::Hub;
//! use tidewire_server::store::{sqlite::SqliteStore, Retention};
//! use tidewire_server::outbound::queue;
//! let store = Arc::new(SqliteStore::open("sqlite::memory:", Retention::default()).await.unwrap());
//! let hub = Hub::new(store);
//! let (outbox, _inbox) = queue(16);
//! hub.register("room-1", "conn-1", outbox, false);
//! assert_eq!(hub.subscribers("room-1"), 1);
//! # });
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::ws::Utf8Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;

use crate::bus::{BusMessage, Kind};
use crate::metrics;
use crate::outbound::{self, Outbound, Outbox, Push};
use crate::Store;

struct Sub {
    outbox: Outbox,
    presence: bool,
}

#[derive(Default)]
struct RoomSubs {
    last_seq: Option<u64>,
    subs: HashMap<Arc<str>, Sub>,
}

/// The local fan-out.
pub struct Hub {
    rooms: Mutex<HashMap<Arc<str>, RoomSubs>>,
    store: Arc<dyn Store>,
}

impl Hub {
    /// A hub that fills gaps from `store`.
    pub fn new(store: Arc<dyn Store>) -> Arc<Hub> {
        Arc::new(Hub {
            rooms: Mutex::new(HashMap::new()),
            store,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, RoomSubs>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connection `conn` follows `room` (again: updates its presence flag).
    pub fn register(&self, room: &str, conn: &str, outbox: Outbox, presence: bool) {
        let mut rooms = self.lock();
        let entry = rooms.entry(room.into()).or_default();
        entry.subs.insert(conn.into(), Sub { outbox, presence });
    }

    /// Connection `conn` stops following `room`.
    pub fn unregister(&self, room: &str, conn: &str) {
        let mut rooms = self.lock();
        if let Some(entry) = rooms.get_mut(room) {
            entry.subs.remove(conn);
            if entry.subs.is_empty() {
                rooms.remove(room);
            }
        }
    }

    /// The rooms local connections follow, each with the last `seq` delivered (for the
    /// periodic head check that finds a lost last event).
    pub fn followed(&self) -> Vec<(Arc<str>, Option<u64>)> {
        self.lock()
            .iter()
            .map(|(room, r)| (room.clone(), r.last_seq))
            .collect()
    }

    /// How many local connections follow `room`.
    pub fn subscribers(&self, room: &str) -> usize {
        self.lock().get(room).map_or(0, |r| r.subs.len())
    }

    /// The `n` rooms with the most local subscribers, most first, and how many rooms local
    /// connections follow in all: one pass over the rooms (for the `/admin` page).
    pub fn top_rooms(&self, n: usize) -> (Vec<(Arc<str>, usize)>, usize) {
        let rooms = self.lock();
        let mut all: Vec<(Arc<str>, usize)> = rooms
            .iter()
            .map(|(room, r)| (room.clone(), r.subs.len()))
            .collect();
        drop(rooms);
        let total = all.len();
        let by_count =
            |a: &(Arc<str>, usize), b: &(Arc<str>, usize)| b.1.cmp(&a.1).then(a.0.cmp(&b.0));
        if n > 0 && all.len() > n {
            all.select_nth_unstable_by(n - 1, by_count);
            all.truncate(n);
        }
        all.sort_unstable_by(by_count);
        all.truncate(n);
        (all, total)
    }

    /// Consumes the bus until it ends.
    pub async fn run(self: Arc<Self>, mut messages: BoxStream<'static, BusMessage>) {
        while let Some(msg) = messages.next().await {
            self.deliver(msg).await;
        }
    }

    /// Delivers one bus message to local connections (deduplicating and filling gaps).
    pub async fn deliver(&self, msg: BusMessage) {
        let text = outbound::text(msg.payload);
        let Some(seq) = msg.seq.filter(|_| msg.kind == Kind::Durable) else {
            self.fan_out(&msg.room, |sub_id, sub| match msg.kind {
                Kind::Presence if !sub.presence => None,
                Kind::Broadcast if msg.origin.as_deref() == Some(&**sub_id) => None,
                _ => Some(Outbound::Message(text.clone())),
            });
            return;
        };
        let last = {
            let rooms = self.lock();
            match rooms.get(&msg.room) {
                None => return,
                Some(r) => r.last_seq,
            }
        };
        if let Some(last) = last {
            if seq <= last {
                metrics::duplicate_dropped();
                crate::stats::duplicate_dropped();
                return;
            }
            if seq > last + 1 {
                self.fill_gap(&msg.room, last, seq).await;
            }
        }
        self.deliver_durable(&msg.room, seq, &text);
    }

    async fn fill_gap(&self, room: &Arc<str>, last: u64, seq: u64) {
        let missing = (seq - last - 1).min(10_000) as usize;
        match self.store.read(room, last, missing).await {
            Ok(events) => {
                metrics::gap_filled();
                crate::stats::gap_filled();
                for ev in events.into_iter().filter(|e| e.seq < seq) {
                    self.deliver_durable(room, ev.seq, &ev.json.into());
                }
            }
            Err(err) => {
                // The connections notice the gap themselves and read (or resync).
                tracing::warn!(%room, %err, "could not fill a bus gap from the store");
            }
        }
    }

    fn deliver_durable(&self, room: &Arc<str>, seq: u64, payload: &Utf8Bytes) {
        {
            let mut rooms = self.lock();
            let Some(entry) = rooms.get_mut(room) else {
                return;
            };
            if entry.last_seq.is_some_and(|l| seq <= l) {
                return;
            }
            entry.last_seq = Some(seq);
        }
        self.fan_out(room, |_, _| {
            Some(Outbound::Durable {
                room: room.clone(),
                seq,
                payload: payload.clone(),
            })
        });
    }

    fn fan_out(&self, room: &str, item_for: impl Fn(&Arc<str>, &Sub) -> Option<Outbound>) {
        let mut rooms = self.lock();
        let Some(entry) = rooms.get_mut(room) else {
            return;
        };
        let mut gone = Vec::new();
        for (id, sub) in &entry.subs {
            if let Some(item) = item_for(id, sub) {
                match sub.outbox.push(item) {
                    Push::Queued => {}
                    Push::Slow | Push::Closed => gone.push(id.clone()),
                }
            }
        }
        for id in gone {
            entry.subs.remove(&id);
        }
        if entry.subs.is_empty() {
            rooms.remove(room);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::{queue, Inbox};
    use crate::store::sqlite::SqliteStore;
    use crate::store::{Retention, WriteOp, WriteRequest};
    use tidewire_protocol::RawAppEvent;

    async fn setup() -> (Arc<SqliteStore>, Arc<Hub>, Inbox) {
        let store = Arc::new(
            SqliteStore::open("sqlite::memory:", Retention::default())
                .await
                .unwrap(),
        );
        let hub = Hub::new(store.clone());
        let (outbox, inbox) = queue(64);
        hub.register("r", "c1", outbox, false);
        (store, hub, inbox)
    }

    async fn append(store: &SqliteStore) -> BusMessage {
        let w = store
            .write(WriteRequest::new(
                "r",
                WriteOp::Publish(RawAppEvent {
                    event_type: "e".into(),
                    data: serde_json::Value::Null,
                }),
            ))
            .await
            .unwrap();
        BusMessage::durable("r", w.envelope.seq.unwrap(), w.json.into())
    }

    fn seqs(inbox: &mut Inbox) -> Vec<u64> {
        std::iter::from_fn(|| inbox.try_recv())
            .map(|o| match o {
                Outbound::Durable { seq, .. } => seq,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn duplicates_are_dropped() {
        let (store, hub, mut inbox) = setup().await;
        let m1 = append(&store).await;
        let m2 = append(&store).await;
        hub.deliver(m1.clone()).await;
        hub.deliver(m2.clone()).await;
        hub.deliver(m1).await;
        hub.deliver(m2).await;
        assert_eq!(seqs(&mut inbox), [1, 2]);
    }

    #[tokio::test]
    async fn a_gap_is_filled_from_the_store() {
        let (store, hub, mut inbox) = setup().await;
        let m1 = append(&store).await;
        let _lost2 = append(&store).await;
        let _lost3 = append(&store).await;
        let m4 = append(&store).await;
        hub.deliver(m1).await;
        hub.deliver(m4).await;
        assert_eq!(seqs(&mut inbox), [1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn broadcasts_skip_their_origin_and_presence_needs_the_flag() {
        let (_store, hub, mut c1) = setup().await;
        let (outbox, mut c2) = queue(8);
        hub.register("r", "c2", outbox, true);
        hub.deliver(BusMessage::broadcast("r", Some("c1"), "b".into()))
            .await;
        hub.deliver(BusMessage::presence("r", "p".into())).await;
        assert_eq!(c1.try_recv(), None);
        assert_eq!(c2.try_recv(), Some(Outbound::Message("b".into())));
        assert_eq!(c2.try_recv(), Some(Outbound::Message("p".into())));
    }

    #[tokio::test]
    async fn top_rooms_are_the_most_followed() {
        let (_store, hub, _c1) = setup().await;
        let mut inboxes = Vec::new();
        for (room, n) in [("a", 3), ("b", 1), ("c", 5)] {
            for i in 0..n {
                let (outbox, inbox) = queue(1);
                hub.register(room, &format!("{room}{i}"), outbox, false);
                inboxes.push(inbox);
            }
        }
        let (top, total) = hub.top_rooms(2);
        assert_eq!(total, 4);
        let names: Vec<(&str, usize)> = top.iter().map(|(r, n)| (&**r, *n)).collect();
        assert_eq!(names, [("c", 5), ("a", 3)]);
        assert_eq!(hub.top_rooms(10).0.len(), 4);
        assert!(hub.top_rooms(0).0.is_empty());
    }

    #[tokio::test]
    async fn a_full_queue_marks_the_connection_slow_and_unregisters_it() {
        let (store, hub, _c1) = setup().await;
        let (outbox, slow) = queue(1);
        hub.register("r", "slow", outbox, false);
        for _ in 0..3 {
            let m = append(&store).await;
            hub.deliver(m).await;
        }
        assert!(slow.is_slow());
        assert_eq!(hub.subscribers("r"), 1);
    }
}
