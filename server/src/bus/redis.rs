//! The Redis [`Bus`]: Redis pub/sub between the nodes of a deployment, **one channel per
//! room**, subscribed only while a local connection follows the room.
//!
//! A room's channel is `<prefix>bus:{<room>}`. On a single Redis a node `SUBSCRIBE`s and
//! `PUBLISH`es; on a Redis Cluster it uses sharded pub/sub (`SSUBSCRIBE`/`SPUBLISH`, Redis 7),
//! so a room's messages travel only through the shard that owns the room's hash slot (the
//! `{room}` hash tag, the same one the room's presence keys use). [`Bus::follow`] and
//! [`Bus::unfollow`] only record interest; the subscriber task applies what accumulated in
//! one batch (after a 5 ms window, so a storm of joins is a few commands: up to 500 channels
//! per `SUBSCRIBE`, one `SSUBSCRIBE` per hash slot on a cluster), then yields
//! [`BusEvent::Followed`] for the rooms it just subscribed, once Redis confirmed them.
//!
//! Publishing goes through an auto-reconnecting connection. The single-Redis subscription
//! reconnects (every 250 ms) when Redis goes away and subscribes every followed room again;
//! the cluster client re-subscribes on its own. Messages published while a node is
//! disconnected are lost **for that node**: its [`Hub`](crate::hub::Hub) notices the `seq` gap
//! on the next event, and its head check finds a lost last event, and both read the missing
//! events from the store. A failed publish is logged, never returned: the write has
//! committed, and the other nodes will find it in the store.
//!
//! ```no_run
//! # async fn f() -> tidewire_server::Result<()> {
//! use tidewire_server::bus::{redis::RedisBus, Bus, BusMessage};
//! let bus = RedisBus::connect("redis://127.0.0.1:6379", "app1:", 0).await?;
//! let _messages = bus.subscribe();
//! bus.follow("r");
//! bus.publish(BusMessage::broadcast("r", None, "{}".into())).await?;
//! # Ok(()) }
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use redis::aio::ConnectionLike;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::ReceiverStream;

use super::{Bus, BusEvent, BusMessage, Kind};
use crate::metrics;
use crate::redis_conn::{self, Conn, Topology};
use crate::Result;

/// The wire form of a [`BusMessage`] on the Redis channel.
#[derive(Serialize, Deserialize)]
struct Wire {
    r: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    s: Option<u64>,
    k: char,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    o: Option<String>,
    p: String,
}

fn encode(msg: &BusMessage) -> String {
    let wire = Wire {
        r: msg.room.to_string(),
        s: msg.seq,
        k: match msg.kind {
            Kind::Durable => 'd',
            Kind::Broadcast => 'b',
            Kind::Presence => 'p',
        },
        o: msg.origin.as_deref().map(str::to_owned),
        p: msg.payload.to_text(),
    };
    serde_json::to_string(&wire).unwrap_or_default()
}

fn decode(text: &str) -> Option<BusMessage> {
    let wire: Wire = serde_json::from_str(text).ok()?;
    Some(BusMessage {
        room: wire.r.into(),
        seq: wire.s,
        kind: match wire.k {
            'd' => Kind::Durable,
            'b' => Kind::Broadcast,
            'p' => Kind::Presence,
            _ => return None,
        },
        origin: wire.o.map(Into::into),
        payload: wire.p.into(),
    })
}

/// How long the subscriber waits after a change of interest before applying what
/// accumulated.
const BATCH_WINDOW: Duration = Duration::from_millis(5);
/// Channels per `SUBSCRIBE` / `UNSUBSCRIBE` command on a single Redis.
const CHANNELS_PER_COMMAND: usize = 500;
/// Queue between the subscriber task and the stream's reader.
const STREAM_QUEUE: usize = 4096;

/// The changes of interest one stream has not applied yet.
#[derive(Default)]
struct Pending {
    dirty: Mutex<HashSet<Arc<str>>>,
    changed: Notify,
}

/// The rooms this node follows, and each stream's unapplied changes.
#[derive(Default)]
struct Interest {
    state: Mutex<InterestState>,
}

#[derive(Default)]
struct InterestState {
    wanted: HashSet<Arc<str>>,
    streams: Vec<Weak<Pending>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Interest {
    fn set(&self, room: &str, wanted: bool) {
        let mut state = lock(&self.state);
        let room: Arc<str> = room.into();
        if wanted {
            state.wanted.insert(room.clone());
        } else {
            state.wanted.remove(&room);
        }
        state.streams.retain(|w| match w.upgrade() {
            Some(p) => {
                lock(&p.dirty).insert(room.clone());
                p.changed.notify_one();
                true
            }
            None => false,
        });
    }

    /// A new stream's pending changes (nothing: it starts by subscribing everything wanted).
    fn register(&self) -> Arc<Pending> {
        let p = Arc::new(Pending::default());
        lock(&self.state).streams.push(Arc::downgrade(&p));
        p
    }

    /// What to subscribe and unsubscribe given what is `subscribed`; with `all`, every wanted
    /// room is checked (a fresh connection), else only the changed ones.
    fn take(
        &self,
        pending: &Pending,
        subscribed: &HashSet<Arc<str>>,
        all: bool,
    ) -> (Vec<Arc<str>>, Vec<Arc<str>>) {
        let state = lock(&self.state);
        let mut dirty = std::mem::take(&mut *lock(&pending.dirty));
        if all {
            dirty.extend(state.wanted.iter().cloned());
        }
        let (mut sub, mut unsub) = (Vec::new(), Vec::new());
        for room in dirty {
            match (state.wanted.contains(&room), subscribed.contains(&room)) {
                (true, false) => sub.push(room),
                (false, true) => unsub.push(room),
                _ => {}
            }
        }
        (sub, unsub)
    }

    /// Puts rooms whose command failed back for the next batch.
    fn retry(&self, pending: &Pending, rooms: impl IntoIterator<Item = Arc<str>>) {
        lock(&pending.dirty).extend(rooms);
        pending.changed.notify_one();
    }
}

/// The Redis bus.
pub struct RedisBus {
    topology: Topology,
    publisher: Conn,
    prefix: String,
    drop_every: u64,
    durable_sent: AtomicU64,
    interest: Arc<Interest>,
}

impl RedisBus {
    /// Connects to `spec` (a `--redis` value: one Redis or a cluster, see
    /// [`redis_conn`]); channels are named with `prefix`. `drop_every > 0`
    /// is for tests: every `drop_every`-th durable message is not published, as a lossy
    /// network would.
    pub async fn connect(spec: &str, prefix: &str, drop_every: u64) -> Result<RedisBus> {
        let topology = Topology::parse(spec)?;
        let publisher = redis_conn::connect(spec).await?;
        Ok(RedisBus {
            topology,
            publisher,
            prefix: prefix.to_owned(),
            drop_every,
            durable_sent: AtomicU64::new(0),
            interest: Arc::default(),
        })
    }

    /// The channel of `room`.
    pub fn channel(&self, room: &str) -> String {
        channel(&self.prefix, room)
    }
}

fn channel(prefix: &str, room: &str) -> String {
    format!("{prefix}bus:{{{room}}}")
}

/// The room of a channel name (`<prefix>bus:{<room>}`).
fn room_of(prefix_len: usize, channel: &str) -> Option<&str> {
    channel
        .get(prefix_len..)?
        .strip_prefix("bus:{")?
        .strip_suffix('}')
}

/// One subscriber task: applies interest, forwards messages, until the stream is dropped.
struct Subscriber {
    prefix: String,
    interest: Arc<Interest>,
    pending: Arc<Pending>,
    tx: mpsc::Sender<BusEvent>,
}

impl Subscriber {
    fn channels(&self, rooms: &[Arc<str>]) -> Vec<String> {
        rooms.iter().map(|r| channel(&self.prefix, r)).collect()
    }

    /// Forwards one received message; `false` when the stream is gone.
    async fn forward(&self, text: &str) -> bool {
        metrics::bus_received();
        match decode(text) {
            Some(m) => self.tx.send(BusEvent::Message(m)).await.is_ok(),
            None => {
                tracing::warn!("ignoring a malformed bus message");
                true
            }
        }
    }

    async fn followed(&self, rooms: Vec<Arc<str>>) -> bool {
        rooms.is_empty() || self.tx.send(BusEvent::Followed(rooms)).await.is_ok()
    }

    /// One connection to a single Redis, until it fails or the stream is dropped.
    async fn single(&self, client: &redis::Client) -> redis::RedisResult<()> {
        let (mut sink, mut stream) = client.get_async_pubsub().await?.split();
        tracing::info!(prefix = %self.prefix, "subscribed to the Redis bus");
        let mut subscribed: HashSet<Arc<str>> = HashSet::new();
        let mut fresh = true;
        let result = async {
            loop {
                let (sub, unsub) = self.interest.take(&self.pending, &subscribed, fresh);
                fresh = false;
                for chunk in unsub.chunks(CHANNELS_PER_COMMAND) {
                    sink.unsubscribe(self.channels(chunk)).await?;
                    metrics::bus_unsubscribe_commands(1);
                    for room in chunk {
                        subscribed.remove(room);
                    }
                }
                for chunk in sub.chunks(CHANNELS_PER_COMMAND) {
                    sink.subscribe(self.channels(chunk)).await?;
                    metrics::bus_subscribe_commands(1);
                    subscribed.extend(chunk.iter().cloned());
                }
                metrics::bus_rooms_subscribed(subscribed.len());
                if !self.followed(sub).await {
                    return Ok(());
                }
                tokio::select! {
                    () = self.pending.changed.notified() => tokio::time::sleep(BATCH_WINDOW).await,
                    msg = stream.next() => {
                        let Some(msg) = msg else { return Ok(()) };
                        if let Ok(text) = msg.get_payload::<String>() {
                            if !self.forward(&text).await {
                                return Ok(());
                            }
                        }
                    }
                }
            }
        }
        .await;
        metrics::bus_rooms_subscribed(0);
        result
    }

    /// The cluster connection, until the stream is dropped (the client reconnects and
    /// re-subscribes on its own).
    async fn cluster(&self, seeds: &[String]) -> redis::RedisResult<()> {
        let (ptx, mut prx) = mpsc::channel::<redis::PushInfo>(STREAM_QUEUE);
        let client = redis_conn::cluster_builder(seeds)
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(move |p: redis::PushInfo| match ptx.try_send(p) {
                // Full: drop it (the bus may lose messages; the hub fills the gap).
                Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => Ok(()),
                Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
            })
            .build()?;
        let conn = client.get_async_connection().await?;
        tracing::info!(prefix = %self.prefix, "subscribed to the Redis Cluster bus");
        let mut subscribed: HashSet<Arc<str>> = HashSet::new();
        let mut fresh = true;
        let prefix_len = self.prefix.len();
        loop {
            let (sub, unsub) = self.interest.take(&self.pending, &subscribed, fresh);
            fresh = false;
            let (ok, failed) = self.sharded(&conn, "SUNSUBSCRIBE", unsub).await;
            for room in &ok {
                subscribed.remove(room);
            }
            self.interest.retry(&self.pending, failed);
            let (ok, failed) = self.sharded(&conn, "SSUBSCRIBE", sub).await;
            subscribed.extend(ok.iter().cloned());
            if !failed.is_empty() {
                self.interest.retry(&self.pending, failed);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            metrics::bus_rooms_subscribed(subscribed.len());
            if !self.followed(ok).await {
                return Ok(());
            }
            tokio::select! {
                () = self.pending.changed.notified() => tokio::time::sleep(BATCH_WINDOW).await,
                push = prx.recv() => {
                    let Some(push) = push else { return Ok(()) };
                    if push.kind == redis::PushKind::SMessage {
                        let mut data = push.data.into_iter();
                        let (Some(ch), Some(payload)) = (data.next(), data.next()) else { continue };
                        let (Ok(ch), Ok(text)) = (
                            redis::from_redis_value::<String>(ch),
                            redis::from_redis_value::<String>(payload),
                        ) else { continue };
                        if room_of(prefix_len, &ch).is_some() && !self.forward(&text).await {
                            return Ok(());
                        }
                    } else if push.kind == redis::PushKind::Disconnection {
                        tracing::warn!("Redis Cluster subscription disconnected; the client re-subscribes");
                    }
                }
            }
        }
    }

    /// Runs `command` (`SSUBSCRIBE`/`SUNSUBSCRIBE`) for `rooms`, one command per hash slot,
    /// 32 at a time; answers the rooms done and the rooms whose command failed.
    async fn sharded(
        &self,
        conn: &redis::cluster_async::ClusterConnection,
        command: &'static str,
        rooms: Vec<Arc<str>>,
    ) -> (Vec<Arc<str>>, Vec<Arc<str>>) {
        if rooms.is_empty() {
            return (Vec::new(), Vec::new());
        }
        let mut by_slot: HashMap<u16, Vec<Arc<str>>> = HashMap::new();
        for room in rooms {
            by_slot
                .entry(redis_conn::slot(&room))
                .or_default()
                .push(room);
        }
        let results: Vec<(Vec<Arc<str>>, bool)> = futures::stream::iter(by_slot.into_values())
            .map(|group| {
                let mut conn = conn.clone();
                let channels = self.channels(&group);
                async move {
                    let done = match command {
                        "SSUBSCRIBE" => conn.ssubscribe(channels).await,
                        _ => conn.sunsubscribe(channels).await,
                    };
                    if let Err(err) = &done {
                        tracing::warn!(%err, command, "Redis Cluster subscription command failed");
                    }
                    (group, done.is_ok())
                }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        let (mut ok, mut failed) = (Vec::new(), Vec::new());
        for (group, done) in results {
            if done {
                if command == "SSUBSCRIBE" {
                    metrics::bus_subscribe_commands(1);
                } else {
                    metrics::bus_unsubscribe_commands(1);
                }
                ok.extend(group);
            } else {
                failed.extend(group);
            }
        }
        (ok, failed)
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn publish(&self, msg: BusMessage) -> Result<()> {
        if self.drop_every > 0 && msg.kind == Kind::Durable {
            let n = self.durable_sent.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_multiple_of(self.drop_every) {
                tracing::debug!(room = %msg.room, seq = ?msg.seq, "dropping a bus message on purpose");
                return Ok(());
            }
        }
        let mut conn = self.publisher.clone();
        let command = if self.topology.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        let mut cmd = redis::cmd(command);
        cmd.arg(self.channel(&msg.room)).arg(encode(&msg));
        let sent = tokio::time::timeout(Duration::from_secs(1), async {
            conn.req_packed_command(&cmd).await
        })
        .await;
        match sent {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => tracing::warn!(%err, room = %msg.room, "bus publish failed"),
            Err(_) => tracing::warn!(room = %msg.room, "bus publish timed out"),
        }
        Ok(())
    }

    fn subscribe(&self) -> BoxStream<'static, BusMessage> {
        self.events()
            .filter_map(|e| async move {
                match e {
                    BusEvent::Message(m) => Some(m),
                    BusEvent::Followed(_) => None,
                }
            })
            .boxed()
    }

    fn events(&self) -> BoxStream<'static, BusEvent> {
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let sub = Subscriber {
            prefix: self.prefix.clone(),
            interest: self.interest.clone(),
            pending: self.interest.register(),
            tx,
        };
        let topology = self.topology.clone();
        tokio::spawn(async move {
            let client = match &topology {
                Topology::Single(url) => match redis::Client::open(url.as_str()) {
                    Ok(c) => Some(c),
                    Err(err) => {
                        tracing::error!(%err, "the Redis bus URL");
                        return;
                    }
                },
                Topology::Cluster(_) => None,
            };
            while !sub.tx.is_closed() {
                let done = match (&topology, &client) {
                    (Topology::Cluster(seeds), _) => sub.cluster(seeds).await,
                    (_, Some(client)) => sub.single(client).await,
                    _ => return,
                };
                match done {
                    Ok(()) if sub.tx.is_closed() => return,
                    Ok(()) => tracing::warn!("Redis bus subscription ended"),
                    Err(err) => tracing::warn!(%err, "Redis bus subscription failed"),
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        ReceiverStream::new(rx).boxed()
    }

    fn follow(&self, room: &str) {
        self.interest.set(room, true);
    }

    fn unfollow(&self, room: &str) {
        self.interest.set(room, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        for msg in [
            BusMessage::durable("r", 7, "{\"a\":1}".into()),
            BusMessage::broadcast("r", Some("c1"), "x".into()),
            BusMessage::presence("r", "p".into()),
        ] {
            assert_eq!(decode(&encode(&msg)), Some(msg));
        }
        assert_eq!(decode("{\"r\":\"x\",\"k\":\"z\",\"p\":\"\"}"), None);
        assert_eq!(decode("nope"), None);
    }

    async fn next_message(rx: &mut BoxStream<'static, BusEvent>) -> BusMessage {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), rx.next())
                .await
                .expect("a bus event within 5 s")
                .expect("the stream goes on")
            {
                BusEvent::Message(m) => return m,
                BusEvent::Followed(_) => {}
            }
        }
    }

    async fn followed(rx: &mut BoxStream<'static, BusEvent>, room: &str) {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), rx.next())
                .await
                .expect("a confirmation within 5 s")
                .expect("the stream goes on")
            {
                BusEvent::Followed(rooms) if rooms.iter().any(|r| &**r == room) => return,
                _ => {}
            }
        }
    }

    /// Two nodes on `spec`: `a` publishes (dropping every second durable message), `b`
    /// follows only `r`; b gets r's messages in order and nothing of `other`, and once it
    /// unfollows, nothing more.
    async fn interest_and_drops(spec: &str) {
        let prefix = format!("tw-test-{}:", ulid::Ulid::generate());
        let a = RedisBus::connect(spec, &prefix, 2).await.unwrap();
        let b = RedisBus::connect(spec, &prefix, 0).await.unwrap();
        let c = RedisBus::connect(spec, &prefix, 0).await.unwrap();
        let mut rx = b.events();
        for room in ["r", "s"] {
            b.follow(room);
        }
        followed(&mut rx, "r").await;
        for seq in 1..=4 {
            c.publish(BusMessage::durable("other", seq, "{}".into()))
                .await
                .unwrap();
            a.publish(BusMessage::durable("r", seq, "{}".into()))
                .await
                .unwrap();
        }
        a.publish(BusMessage::broadcast("r", None, "b".into()))
            .await
            .unwrap();
        let mut got = Vec::new();
        for _ in 0..3 {
            let m = next_message(&mut rx).await;
            assert_eq!(&*m.room, "r", "only the followed room arrives");
            got.push(m.seq);
        }
        assert_eq!(
            got,
            [Some(1), Some(3), None],
            "in order, every second durable one dropped"
        );
        b.unfollow("r");
        b.unfollow("s");
        tokio::time::sleep(Duration::from_millis(200)).await;
        a.publish(BusMessage::broadcast("r", None, "late".into()))
            .await
            .unwrap();
        a.publish(BusMessage::broadcast("s", None, "late".into()))
            .await
            .unwrap();
        b.follow("t");
        followed(&mut rx, "t").await;
        a.publish(BusMessage::broadcast("t", None, "t".into()))
            .await
            .unwrap();
        let m = next_message(&mut rx).await;
        assert_eq!(&*m.room, "t", "nothing of the unfollowed rooms");
    }

    #[tokio::test]
    async fn a_node_receives_only_the_rooms_it_follows_on_one_redis() {
        if !crate::testing::redis::ensure().await {
            return;
        }
        interest_and_drops(&crate::testing::redis::url()).await;
    }

    #[tokio::test]
    async fn a_node_receives_only_the_rooms_it_follows_on_a_redis_cluster() {
        let Some(cluster) = crate::testing::redis_cluster::Cluster::start() else {
            return;
        };
        interest_and_drops(&cluster.spec()).await;
    }

    #[tokio::test]
    async fn a_storm_of_follows_is_a_few_subscribe_commands() {
        if !crate::testing::redis::ensure().await {
            return;
        }
        let prefix = format!("tw-test-{}:", ulid::Ulid::generate());
        let url = crate::testing::redis::url();
        let a = RedisBus::connect(&url, &prefix, 0).await.unwrap();
        let b = RedisBus::connect(&url, &prefix, 0).await.unwrap();
        let mut rx = b.events();
        for i in 0..1200 {
            b.follow(&format!("room-{i}"));
        }
        let mut confirmed = 0;
        let mut batches = 0;
        while confirmed < 1200 {
            match tokio::time::timeout(Duration::from_secs(5), rx.next())
                .await
                .unwrap()
                .unwrap()
            {
                BusEvent::Followed(rooms) => {
                    confirmed += rooms.len();
                    batches += 1;
                }
                BusEvent::Message(m) => panic!("{m:?}"),
            }
        }
        assert!(batches <= 3, "{batches} batches for 1200 follows");
        let mut c = redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let subscribers: Vec<(String, i64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(b.channel("room-7"))
            .arg(b.channel("room-1199"))
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(subscribers.iter().map(|(_, n)| n).sum::<i64>(), 2);
        a.publish(BusMessage::broadcast("room-1199", None, "x".into()))
            .await
            .unwrap();
        assert_eq!(&*next_message(&mut rx).await.room, "room-1199");
    }
}
