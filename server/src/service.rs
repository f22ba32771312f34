//! The write path: store, then publish, in seq order per room.
//!
//! A room's writes go through one of a fixed set of lanes (striped by room). A lane's writes
//! are committed by one task at a time: it takes every write waiting in the lane, hands them
//! to [`Store::write_batch`] (one transaction and one commit on SQLite: group commit), then
//! publishes the appended events in `seq` order and answers each writer. Writes that arrive
//! while a batch commits form the next batch, so under load one commit serves many writes,
//! and with one writer a batch is just that write. The committing task is spawned, so a
//! writer that goes away (a closed HTTP request) never strands the others of its batch.
//! Ephemeral messages (broadcast, presence) go straight to the bus.
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
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::Value;
use tidewire_protocol::{BroadcastData, Envelope, Event, Member, Snapshot};
use tokio::sync::oneshot;

use crate::bus::{Bus, BusMessage};
use crate::clock::now;
use crate::presence::Presence;
use crate::store::{Store, StoredEvent, WriteRequest, Written};
use crate::{metrics, Error, Result};

const STRIPES: usize = 256;

/// Most writes committed as one batch.
const MAX_BATCH: usize = 64;

type Answer = oneshot::Sender<Result<Written>>;

/// The writes of the rooms hashed to one stripe, waiting for their commit.
#[derive(Default)]
struct Lane {
    state: Mutex<LaneState>,
}

#[derive(Default)]
struct LaneState {
    pending: Vec<(WriteRequest, Answer)>,
    /// A task is committing this lane's writes (it takes new ones until none are left).
    committing: bool,
}

impl Lane {
    fn lock(&self) -> std::sync::MutexGuard<'_, LaneState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Ends a lane's committing task: if it stops early (a panic), the writes still waiting are
/// answered with an error (their senders drop) and the next write starts a new task.
struct Committing {
    lane: Arc<Lane>,
    done: bool,
}

impl Drop for Committing {
    fn drop(&mut self) {
        if !self.done {
            let mut st = self.lane.lock();
            st.committing = false;
            st.pending.clear();
        }
    }
}

/// Store, bus and presence, and the ordering of writes. Its parts are private: sessions and
/// routes use the operations below.
pub struct Service {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    presence: Arc<dyn Presence>,
    lanes: Vec<Arc<Lane>>,
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
            lanes: (0..STRIPES).map(|_| Arc::new(Lane::default())).collect(),
        }
    }

    fn lane(&self, room: &str) -> &Arc<Lane> {
        let mut h = DefaultHasher::new();
        room.hash(&mut h);
        &self.lanes[(h.finish() as usize) % STRIPES]
    }

    /// Appends, then publishes (not when the write was a replay); answers once the event is
    /// durable and published.
    pub async fn write(&self, req: WriteRequest) -> Result<Written> {
        let started = Instant::now();
        let lane = self.lane(&req.room);
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut st = lane.lock();
            st.pending.push((req, answer));
            !std::mem::replace(&mut st.committing, true)
        };
        if start {
            tokio::spawn(commit(
                Committing {
                    lane: lane.clone(),
                    done: false,
                },
                self.store.clone(),
                self.bus.clone(),
            ));
        }
        let written = answered
            .await
            .map_err(|_| Error::Internal("the write's commit stopped".into()))??;
        metrics::write_latency(started.elapsed());
        crate::stats::write_latency(started.elapsed());
        Ok(written)
    }

    /// Sends a `broadcast` to the room's subscribers other than connection `origin`, from
    /// client `from` of the authenticated `user` (when auth is on).
    pub async fn broadcast(
        &self,
        room: &str,
        origin: &str,
        (from, user): (&str, Option<&str>),
        event: String,
        data: Value,
    ) -> Result<()> {
        let json = ephemeral_json(
            room,
            Event::Broadcast(BroadcastData {
                event,
                data,
                from: Some(from.to_owned()),
                user: user.map(str::to_owned),
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

    /// The state of `room` and the `seq` it reflects.
    pub async fn snapshot(&self, room: &str) -> Result<Snapshot> {
        self.store.snapshot(room).await
    }

    /// Up to `limit` durable events of `room` after `after`
    /// ([`Error::HistoryTrimmed`] when the log no longer reaches back).
    pub async fn read(&self, room: &str, after: u64, limit: usize) -> Result<Vec<StoredEvent>> {
        self.store.read(room, after, limit).await
    }

    /// The last `seq` of `room` (0 when it has none).
    pub async fn head(&self, room: &str) -> Result<u64> {
        self.store.head(room).await
    }

    /// Who is in `room` now.
    pub async fn members(&self, room: &str) -> Result<Vec<Member>> {
        self.presence.members(room).await
    }

    /// Connection `conn` (client `client_id`) leaves `room`'s presence.
    pub async fn presence_leave(&self, room: &str, conn: &str, client_id: &str) -> Result<()> {
        self.presence.leave(room, conn, client_id).await
    }

    /// Connection `conn` is alive (presence TTLs).
    pub async fn presence_touch(&self, conn: &str) -> Result<()> {
        self.presence.touch(conn).await
    }

    /// Removes events older than `cutoff_ms` (retention by age); answers how many.
    pub async fn trim_expired(&self, cutoff_ms: i64) -> Result<u64> {
        self.store.trim_expired(cutoff_ms).await
    }

    /// The store, for the parts below the service that read it directly (the hub's gap
    /// filling).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
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

/// Commits a lane's waiting writes batch by batch until none are left.
async fn commit(mut lane: Committing, store: Arc<dyn Store>, bus: Arc<dyn Bus>) {
    loop {
        let batch: Vec<(WriteRequest, Answer)> = {
            let mut st = lane.lane.lock();
            if st.pending.is_empty() {
                st.committing = false;
                lane.done = true;
                return;
            }
            let n = st.pending.len().min(MAX_BATCH);
            st.pending.drain(..n).collect()
        };
        let (reqs, answers): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        metrics::write_batch(reqs.len());
        let results = store.write_batch(reqs).await;
        for (result, answer) in results.into_iter().zip(answers) {
            let result = match result {
                Ok(written) if !written.replayed => {
                    let seq = written.envelope.seq.unwrap_or_default();
                    let published = bus
                        .publish(BusMessage::durable(
                            &written.envelope.room,
                            seq,
                            written.json.clone().into(),
                        ))
                        .await;
                    metrics::event_in();
                    crate::stats::event_in();
                    published.map(|()| written)
                }
                other => other,
            };
            let _ = answer.send(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::memory::MemoryBus;
    use crate::presence::memory::MemoryPresence;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{Retention, WriteOp};
    use futures::StreamExt;
    use std::time::Duration;
    use tidewire_protocol::RawAppEvent;

    /// A service over a SQLite file (kept while the directory lives), and its bus's messages.
    async fn on_a_file() -> (
        tempfile::TempDir,
        Arc<SqliteStore>,
        Arc<Service>,
        futures::stream::BoxStream<'static, BusMessage>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("s.db").display());
        let store = Arc::new(SqliteStore::open(&url, Retention::default()).await.unwrap());
        let bus = Arc::new(MemoryBus::new());
        let published = bus.subscribe();
        let presence = Arc::new(MemoryPresence::new(
            Duration::from_secs(5),
            Duration::from_secs(60),
        ));
        let service = Arc::new(Service::new(store.clone(), bus, presence));
        (dir, store, service, published)
    }

    /// Concurrent writers of one room (batched by the lane) each get their own seq, the seqs
    /// are contiguous, and the bus sees them in seq order; a refused write in the crowd fails
    /// alone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_are_batched_in_seq_order() {
        let (_dir, _store, service, mut published) = on_a_file().await;
        let mut tasks = Vec::new();
        for i in 0..60 {
            let service = service.clone();
            tasks.push(tokio::spawn(async move {
                let op = if i == 30 {
                    WriteOp::Delete { id: "none".into() }
                } else {
                    WriteOp::Publish(RawAppEvent {
                        event_type: "e".into(),
                        data: serde_json::json!({ "i": i }),
                    })
                };
                service.write(WriteRequest::new("r", op)).await
            }));
        }
        let mut seqs = Vec::new();
        for (i, t) in tasks.into_iter().enumerate() {
            match t.await.unwrap() {
                Ok(w) => seqs.push(w.envelope.seq.unwrap()),
                Err(e) => assert!(i == 30 && matches!(e, crate::Error::NotFound(_)), "{e}"),
            }
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=59).collect::<Vec<u64>>());
        for want in 1..=59 {
            let msg = tokio::time::timeout(Duration::from_secs(5), published.next())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(msg.seq, Some(want), "published in seq order");
        }
    }

    /// Several rooms written at once: their lanes commit batches concurrently on one store.
    /// Each room's answered seqs are 1..=n, the log holds exactly the answered envelopes
    /// (byte for byte, each once), and the bus sees each room in seq order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_batches_of_several_rooms_keep_each_log_contiguous() {
        let (_dir, store, service, mut published) = on_a_file().await;
        let rooms = ["m-a", "m-b", "m-c", "m-d"];
        let per_room = 40u64;
        let mut tasks = Vec::new();
        for i in 0..per_room {
            for room in rooms {
                let service = service.clone();
                tasks.push(tokio::spawn(async move {
                    let op = if i % 3 == 0 {
                        WriteOp::Put {
                            id: format!("item-{}", i % 5),
                            value: serde_json::json!(i),
                        }
                    } else {
                        WriteOp::Publish(RawAppEvent {
                            event_type: "e".into(),
                            data: serde_json::json!({ "i": i }),
                        })
                    };
                    service.write(WriteRequest::new(room, op)).await.unwrap()
                }));
            }
        }
        let mut answered: std::collections::BTreeMap<String, Vec<(u64, String)>> =
            Default::default();
        for t in tasks {
            let w = t.await.unwrap();
            answered
                .entry(w.envelope.room.clone())
                .or_default()
                .push((w.envelope.seq.unwrap(), w.json));
        }
        for room in rooms {
            let mut got = answered.remove(room).unwrap();
            got.sort();
            let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
            assert_eq!(seqs, (1..=per_room).collect::<Vec<_>>(), "{room}");
            let log = store.read(room, 0, 1000).await.unwrap();
            let log: Vec<(u64, String)> = log.into_iter().map(|e| (e.seq, e.json)).collect();
            assert_eq!(log, got, "{room}: the log is exactly what was answered");
        }
        let mut last: std::collections::HashMap<String, u64> = Default::default();
        for _ in 0..per_room * rooms.len() as u64 {
            let msg = tokio::time::timeout(Duration::from_secs(5), published.next())
                .await
                .unwrap()
                .unwrap();
            let prev = last
                .insert(msg.room.to_string(), msg.seq.unwrap())
                .unwrap_or(0);
            assert_eq!(
                msg.seq,
                Some(prev + 1),
                "{} published in seq order",
                msg.room
            );
        }
    }
}
