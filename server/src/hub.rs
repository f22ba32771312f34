//! Fan-out to this node's connections.
//!
//! The hub consumes the [`Bus`] and pushes each message into the bounded
//! queue of every local connection following its room. Per room it remembers the last `seq`
//! it delivered: a message with `seq <= last` is a duplicate and dropped; a message with
//! `seq > last + 1` reveals a gap (a lossy bus), which is filled from the store before the
//! message is delivered. The hub never asks which transport a connection uses.
//!
//! **Interest**: a hub made [`with_bus`](Hub::with_bus) tells the bus to
//! [`follow`](crate::bus::Bus::follow) a room when its first local connection registers and
//! to [`unfollow`](crate::bus::Bus::unfollow) it when the last one leaves (or is cut off as
//! slow), so the node receives only the rooms it delivers. The bus batches these calls.
//!
//! **Nothing falls between subscribing and reading the head.** A connection registers with
//! the hub before it reads the room's head from the store, but the bus subscription it
//! triggers is confirmed a few milliseconds later. An event committed in that window reaches
//! the connection anyway, three ways: (1) when the bus yields
//! [`Followed`](crate::bus::BusEvent::Followed) the hub reads the room's head from the store
//! once and delivers it if it is past what the hub delivered (writes commit before they are
//! published, so any event the subscription missed is at or below that head); (2) the
//! session fills any `seq` gap the next live event reveals from the store; (3) with Redis
//! the periodic head check does (1) every second for every followed room.
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

use crate::bus::{Bus, BusEvent, BusMessage, Kind};
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
    bus: Option<Arc<dyn Bus>>,
}

impl Hub {
    /// A hub that fills gaps from `store` and declares no interest (its bus delivers every
    /// room).
    pub fn new(store: Arc<dyn Store>) -> Arc<Hub> {
        Arc::new(Hub {
            rooms: Mutex::new(HashMap::new()),
            store,
            bus: None,
        })
    }

    /// A hub that tells `bus` which rooms this node follows; run it on
    /// [`bus.events()`](Bus::events) with [`run_events`](Hub::run_events).
    pub fn with_bus(store: Arc<dyn Store>, bus: Arc<dyn Bus>) -> Arc<Hub> {
        Arc::new(Hub {
            rooms: Mutex::new(HashMap::new()),
            store,
            bus: Some(bus),
        })
    }

    fn first_follower(&self, room: &str) {
        if let Some(bus) = &self.bus {
            bus.follow(room);
        }
    }

    fn last_follower_left(&self, room: &str) {
        if let Some(bus) = &self.bus {
            bus.unfollow(room);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, RoomSubs>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connection `conn` follows `room` (again: updates its presence flag).
    pub fn register(&self, room: &str, conn: &str, outbox: Outbox, presence: bool) {
        let mut rooms = self.lock();
        let entry = rooms.entry(room.into()).or_insert_with(|| {
            self.first_follower(room);
            RoomSubs::default()
        });
        entry.subs.insert(conn.into(), Sub { outbox, presence });
    }

    /// Connection `conn` stops following `room`.
    pub fn unregister(&self, room: &str, conn: &str) {
        let mut rooms = self.lock();
        if let Some(entry) = rooms.get_mut(room) {
            entry.subs.remove(conn);
            if entry.subs.is_empty() {
                rooms.remove(room);
                self.last_follower_left(room);
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

    /// Consumes the bus's [`events`](Bus::events) until they end: messages are delivered;
    /// rooms newly subscribed get their head read once from the store (in the background),
    /// which delivers anything published before the subscription took hold.
    pub async fn run_events(self: Arc<Self>, mut events: BoxStream<'static, BusEvent>) {
        while let Some(event) = events.next().await {
            match event {
                BusEvent::Message(msg) => self.deliver(msg).await,
                BusEvent::Followed(rooms) => {
                    let hub = Arc::downgrade(&self);
                    tokio::spawn(async move {
                        for room in rooms {
                            let Some(hub) = hub.upgrade() else { return };
                            hub.check_head(&room).await;
                        }
                    });
                }
            }
        }
    }

    /// Reads `room`'s head from the store and delivers it when it is past what this hub
    /// delivered (a gap before it is filled from the store as usual). For a room no local
    /// connection follows it does nothing.
    pub async fn check_head(&self, room: &str) {
        let last = match self.lock().get(room) {
            None => return,
            Some(r) => r.last_seq,
        };
        let head = match self.store.head(room).await {
            Ok(h) => h,
            Err(err) => {
                tracing::warn!(%room, %err, "head check");
                return;
            }
        };
        if head == 0 || last.is_some_and(|l| l >= head) {
            return;
        }
        match self.store.read(room, head - 1, 1).await {
            Ok(events) => {
                for ev in events {
                    self.deliver(BusMessage::durable(room, ev.seq, ev.json.into()))
                        .await;
                }
            }
            Err(err) => tracing::warn!(%room, %err, "head check"),
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
            self.last_follower_left(room);
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

    /// A bus that records interest calls.
    #[derive(Default)]
    struct Recording(std::sync::Mutex<Vec<String>>);

    #[async_trait::async_trait]
    impl Bus for Recording {
        async fn publish(&self, _msg: BusMessage) -> crate::Result<()> {
            Ok(())
        }
        fn subscribe(&self) -> BoxStream<'static, BusMessage> {
            futures::stream::empty().boxed()
        }
        fn follow(&self, room: &str) {
            self.0.lock().unwrap().push(format!("+{room}"));
        }
        fn unfollow(&self, room: &str) {
            self.0.lock().unwrap().push(format!("-{room}"));
        }
    }

    #[tokio::test]
    async fn the_bus_is_told_of_the_first_follower_and_the_last_to_leave() {
        let store = Arc::new(
            SqliteStore::open("sqlite::memory:", Retention::default())
                .await
                .unwrap(),
        );
        let bus = Arc::new(Recording::default());
        let hub = Hub::with_bus(store.clone(), bus.clone());
        let (o1, _i1) = queue(8);
        let (o2, _i2) = queue(8);
        let (slow, _s) = queue(1);
        hub.register("r", "c1", o1.clone(), false);
        hub.register("r", "c2", o2, false);
        hub.register("r", "c1", o1, true);
        hub.unregister("r", "c1");
        hub.unregister("r", "c2");
        hub.unregister("r", "c2");
        // A room whose only follower is cut off as slow is unfollowed too.
        hub.register("s", "slow", slow, false);
        for _ in 0..3 {
            hub.deliver(BusMessage::broadcast("s", None, "x".into()))
                .await;
        }
        assert_eq!(*bus.0.lock().unwrap(), ["+r", "-r", "+s", "-s"]);
    }

    #[tokio::test]
    async fn a_confirmed_subscription_delivers_what_it_missed() {
        let (store, hub, mut inbox) = setup().await;
        // Committed (and published) before the bus subscription held: never seen live.
        let _m1 = append(&store).await;
        let _m2 = append(&store).await;
        hub.clone()
            .run_events(futures::stream::iter([BusEvent::Followed(vec!["r".into()])]).boxed())
            .await;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut got = Vec::new();
        while got.is_empty() && tokio::time::Instant::now() < deadline {
            got.extend(seqs(&mut inbox));
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(
            got,
            [2],
            "the head is delivered (the session fills what is before it)"
        );
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
