//! The live dashboard's data, built on Tidewire itself.
//!
//! Once a second a sampler reads [`stats`](crate::stats) and the hub's most followed rooms and
//! sends the figures as an ephemeral `broadcast` (event `stats`) into the room
//! [`ADMIN_ROOM`](crate::stats::ADMIN_ROOM) (`_tidewire.admin`) through the ordinary write
//! path's bus: with `--redis` every node's snapshots reach every node. A collector follows that
//! room in this node's hub like any connection, keeps the last five minutes of every node
//! (bounded: [`HISTORY`] samples of at most [`MAX_NODES`] nodes), measures the bus lag of each
//! snapshot on arrival, and relays it to the `/admin` page's streams. Client tokens never reach
//! `_tidewire.*` rooms ([`identity::authorize`](crate::identity::authorize) refuses them); the
//! admin credential is checked in constant time.
//!
//! ```no_run
//! # async fn f(server: tidewire_server::Server) {
//! let admin = &server.state().admin;
//! let mut headers = axum::http::HeaderMap::new();
//! headers.insert("authorization", "Bearer s3cret".parse().unwrap());
//! if admin.check(&headers).is_ok() {
//!     let nodes = admin.history();
//!     println!("{} node(s)", nodes.len());
//! }
//! # }
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tidewire_protocol::{Envelope, Event};
use tokio::sync::broadcast;

use crate::hub::Hub;
use crate::identity::bearer;
use crate::outbound::{queue, Outbound};
use crate::service::Service;
use crate::shutdown::Shutdown;
use crate::stats::{self, PerTransport, ADMIN_ROOM};
use crate::{clock, Error, Result};

/// Samples kept per node: five minutes at one a second.
pub const HISTORY: usize = 300;
/// Nodes kept; a node silent for [`NODE_TTL`] is forgotten.
pub const MAX_NODES: usize = 32;
/// How long a node that sends nothing is still shown.
pub const NODE_TTL: Duration = Duration::from_secs(60);
/// Rooms listed per snapshot.
pub const TOP_ROOMS: usize = 10;
/// The broadcast event name of a snapshot.
pub const STATS_EVENT: &str = "stats";

/// One room and its local subscribers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopRoom {
    /// The room.
    pub room: String,
    /// Connections of this node following it.
    pub subscribers: usize,
}

/// One node's figures over one second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The node that measured them.
    pub node: String,
    /// When, in Unix milliseconds (the sender's clock).
    pub ts: i64,
    /// Seconds since the node started sampling.
    pub uptime_s: u64,
    /// Open connections per transport.
    pub connections: PerTransport<i64>,
    /// Writes appended per second.
    pub events_in_per_s: f64,
    /// Events sent per second, per transport.
    pub events_out_per_s: PerTransport<f64>,
    /// Writes appended since start.
    pub events_in_total: u64,
    /// Events sent since start.
    pub events_out_total: u64,
    /// Slow consumers cut off during the second.
    pub slow_cuts: u64,
    /// Slow consumers cut off since start.
    pub slow_cuts_total: u64,
    /// Writes answered during the second.
    pub writes: u64,
    /// Median write latency of the second, in milliseconds.
    pub write_p50_ms: Option<f64>,
    /// 99th percentile write latency of the second, in milliseconds.
    pub write_p99_ms: Option<f64>,
    /// Bus gaps filled from the store during the second.
    pub gaps_filled: u64,
    /// Bus gaps filled since start.
    pub gaps_filled_total: u64,
    /// Duplicate bus messages dropped during the second.
    pub duplicates: u64,
    /// Age of the oldest outbox row not yet published, in milliseconds (`null` without an
    /// outbox or when it is empty).
    #[serde(default)]
    pub outbox_lag_ms: Option<u64>,
    /// Rooms this node's connections follow.
    pub rooms: usize,
    /// The most followed of them.
    pub top_rooms: Vec<TopRoom>,
}

/// A snapshot as this node received it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// The figures.
    #[serde(flatten)]
    pub snapshot: Snapshot,
    /// Milliseconds from the sender's `ts` to its arrival here through the bus (clocks of
    /// different nodes may differ; on one node it is the bus's own latency).
    pub bus_lag_ms: i64,
}

/// One node's recent samples, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeHistory {
    /// The node.
    pub node: String,
    /// Whether it is the node answering.
    pub local: bool,
    /// Its samples.
    pub samples: Vec<Sample>,
}

#[derive(Default)]
struct History {
    nodes: HashMap<String, (Instant, VecDeque<Sample>)>,
}

impl History {
    fn push(&mut self, sample: Sample) {
        let now = Instant::now();
        self.nodes
            .retain(|_, (seen, _)| now.duration_since(*seen) < NODE_TTL);
        if !self.nodes.contains_key(&sample.snapshot.node) && self.nodes.len() >= MAX_NODES {
            if let Some(oldest) = self
                .nodes
                .iter()
                .min_by_key(|(_, (seen, _))| *seen)
                .map(|(n, _)| n.clone())
            {
                self.nodes.remove(&oldest);
            }
        }
        let (seen, samples) = self
            .nodes
            .entry(sample.snapshot.node.clone())
            .or_insert_with(|| (now, VecDeque::with_capacity(HISTORY)));
        *seen = now;
        if samples.len() >= HISTORY {
            samples.pop_front();
        }
        samples.push_back(sample);
    }
}

/// The dashboard's credential check, history and live feed (the router's `admin` substate).
#[derive(Clone)]
pub struct Admin {
    /// SHA-256 of each credential: compared digest to digest, so neither a token's bytes
    /// nor its length shows in the time a refusal takes.
    tokens: Arc<[[u8; 32]]>,
    node: Arc<str>,
    history: Arc<Mutex<History>>,
    live: broadcast::Sender<Arc<str>>,
    shutdown: Arc<Shutdown>,
}

impl Admin {
    /// The dashboard, on when `tokens` holds at least one non-empty credential: then the
    /// sampler and the collector start (inside a Tokio runtime). Accepting more kinds of
    /// credential (API keys) is chaining them into `tokens`.
    pub fn new(
        tokens: impl IntoIterator<Item = String>,
        hub: &Arc<Hub>,
        service: &Arc<Service>,
        shutdown: Arc<Shutdown>,
    ) -> Admin {
        let tokens: Arc<[[u8; 32]]> = tokens
            .into_iter()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .map(|t| digest(t.as_bytes()))
            .collect();
        let id = ulid::Ulid::generate().to_string();
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "node".into());
        let host: String = host
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || "_.:-".contains(*c))
            .take(40)
            .collect();
        let node: Arc<str> = format!("{host}-{}", &id[id.len() - 6..]).into();
        let (live, _) = broadcast::channel(64);
        let admin = Admin {
            tokens,
            node,
            history: Arc::default(),
            live,
            shutdown,
        };
        if admin.enabled() {
            admin.spawn_collector(hub);
            spawn_sampler(admin.node.clone(), hub, service);
        }
        admin
    }

    /// Whether a credential is configured (without one every `/admin` route is 404).
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// This node's name in the snapshots.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// `not_found` when the dashboard is off, `unauthorized` unless `headers` carry
    /// `Authorization: Bearer <one of the tokens>` (compared in constant time, every token
    /// tried).
    pub fn check(&self, headers: &HeaderMap) -> Result<()> {
        if !self.enabled() {
            return Err(Error::NotFound("no such endpoint".into()));
        }
        let Some(given) = bearer(headers) else {
            return Err(Error::Unauthorized(
                "the admin dashboard needs `Authorization: Bearer <admin token>`".into(),
            ));
        };
        if self.accepts(given.as_bytes()) {
            Ok(())
        } else {
            Err(Error::Unauthorized("the admin token is not valid".into()))
        }
    }

    fn accepts(&self, given: &[u8]) -> bool {
        let given = digest(given);
        let mut ok = subtle::Choice::from(0);
        for t in self.tokens.iter() {
            ok |= t.ct_eq(&given);
        }
        ok.into()
    }

    /// Every node's recent samples, this node first.
    pub fn history(&self) -> Vec<NodeHistory> {
        let history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<NodeHistory> = history
            .nodes
            .iter()
            .map(|(node, (_, samples))| NodeHistory {
                node: node.clone(),
                local: **node == *self.node,
                samples: samples.iter().cloned().collect(),
            })
            .collect();
        out.sort_by(|a, b| b.local.cmp(&a.local).then(a.node.cmp(&b.node)));
        out
    }

    /// Each sample as it arrives (JSON of a [`Sample`]); a viewer that falls 64 behind skips.
    pub fn live(&self) -> broadcast::Receiver<Arc<str>> {
        self.live.subscribe()
    }

    /// Resolves when the server starts draining.
    pub fn draining(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.shutdown.draining()
    }

    /// Follows [`ADMIN_ROOM`] in the hub like a connection, for as long as the process runs
    /// (re-registering if its queue ever overflowed).
    fn spawn_collector(&self, hub: &Arc<Hub>) {
        let hub = Arc::downgrade(hub);
        let history = self.history.clone();
        let live = self.live.clone();
        let conn = format!("admin-collector-{}", self.node);
        tokio::spawn(async move {
            loop {
                let (outbox, mut inbox) = queue(1024);
                match hub.upgrade() {
                    Some(h) => h.register(ADMIN_ROOM, &conn, outbox, false),
                    None => return,
                }
                while let Some(item) = inbox.recv().await {
                    let Outbound::Message(text) = item else {
                        continue;
                    };
                    let Some(sample) = sample_of(text.as_str()) else {
                        continue;
                    };
                    if let Ok(json) = serde_json::to_string(&sample) {
                        let _ = live.send(json.into());
                    }
                    history
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(sample);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// A stats broadcast's envelope as a [`Sample`] (`None` for anything else in the room).
fn sample_of(text: &str) -> Option<Sample> {
    let envelope: Envelope = Envelope::decode(text).ok()?;
    let Event::Broadcast(b) = envelope.event else {
        return None;
    };
    if b.event != STATS_EVENT {
        return None;
    }
    let snapshot: Snapshot = serde_json::from_value(b.data).ok()?;
    let bus_lag_ms = (clock::now_ms() - snapshot.ts).max(0);
    Some(Sample {
        snapshot,
        bus_lag_ms,
    })
}

/// Reads the counters once a second and broadcasts the snapshot into [`ADMIN_ROOM`].
fn spawn_sampler(node: Arc<str>, hub: &Arc<Hub>, service: &Arc<Service>) {
    let hub = Arc::downgrade(hub);
    let service = Arc::downgrade(service);
    tokio::spawn(async move {
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut last = (Instant::now(), stats::totals());
        let _ = stats::take_latencies();
        loop {
            tick.tick().await;
            let (Some(hub), Some(service)) = (hub.upgrade(), service.upgrade()) else {
                return;
            };
            let now = (Instant::now(), stats::totals());
            let snapshot = snapshot(&node, started, &last, &now, stats::take_latencies(), &hub);
            last = now;
            let data = match serde_json::to_value(&snapshot) {
                Ok(d) => d,
                Err(_) => continue,
            };
            if let Err(err) = service
                .broadcast(
                    ADMIN_ROOM,
                    &node,
                    ("tidewire", None),
                    STATS_EVENT.into(),
                    data,
                )
                .await
            {
                tracing::debug!(%err, "admin stats broadcast");
            }
        }
    });
}

fn snapshot(
    node: &str,
    started: Instant,
    (t0, a): &(Instant, stats::Totals),
    (t1, b): &(Instant, stats::Totals),
    lat: stats::Latencies,
    hub: &Hub,
) -> Snapshot {
    let secs = t1.duration_since(*t0).as_secs_f64().max(0.001);
    let rate = |x: u64, y: u64| (y.saturating_sub(x) as f64 / secs * 10.0).round() / 10.0;
    let (top, rooms) = hub.top_rooms(TOP_ROOMS + 1);
    let top_rooms = top
        .into_iter()
        .filter(|(room, _)| !stats::is_internal_room(room))
        .take(TOP_ROOMS)
        .map(|(room, subscribers)| TopRoom {
            room: room.to_string(),
            subscribers,
        })
        .collect();
    let ms = |s: Option<f64>| s.map(|s| (s * 1e6).round() / 1e3);
    Snapshot {
        node: node.to_owned(),
        ts: clock::now_ms(),
        uptime_s: started.elapsed().as_secs(),
        connections: b.connections,
        events_in_per_s: rate(a.events_in, b.events_in),
        events_out_per_s: PerTransport {
            sse: rate(a.events_out.sse, b.events_out.sse),
            ws: rate(a.events_out.ws, b.events_out.ws),
            poll: rate(a.events_out.poll, b.events_out.poll),
        },
        events_in_total: b.events_in,
        events_out_total: b.events_out.sum(),
        slow_cuts: b.slow_cuts.sum().saturating_sub(a.slow_cuts.sum()),
        slow_cuts_total: b.slow_cuts.sum(),
        writes: lat.count,
        write_p50_ms: ms(lat.p50),
        write_p99_ms: ms(lat.p99),
        gaps_filled: b.gaps_filled.saturating_sub(a.gaps_filled),
        gaps_filled_total: b.gaps_filled,
        duplicates: b.duplicates.saturating_sub(a.duplicates),
        outbox_lag_ms: b.outbox_oldest_pending_ms,
        rooms: rooms.saturating_sub(usize::from(hub.subscribers(ADMIN_ROOM) > 0)),
        top_rooms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(node: &str, ts: i64) -> Sample {
        Sample {
            snapshot: Snapshot {
                node: node.into(),
                ts,
                uptime_s: 0,
                connections: PerTransport::default(),
                events_in_per_s: 0.0,
                events_out_per_s: PerTransport::default(),
                events_in_total: 0,
                events_out_total: 0,
                slow_cuts: 0,
                slow_cuts_total: 0,
                writes: 0,
                write_p50_ms: None,
                write_p99_ms: None,
                gaps_filled: 0,
                gaps_filled_total: 0,
                duplicates: 0,
                outbox_lag_ms: None,
                rooms: 0,
                top_rooms: vec![],
            },
            bus_lag_ms: 0,
        }
    }

    #[test]
    fn history_is_bounded_per_node_and_in_nodes() {
        let mut h = History::default();
        for i in 0..(HISTORY as i64 + 20) {
            h.push(sample("a", i));
        }
        assert_eq!(h.nodes["a"].1.len(), HISTORY);
        assert_eq!(h.nodes["a"].1.front().unwrap().snapshot.ts, 20);
        for n in 0..(MAX_NODES + 5) {
            h.push(sample(&format!("n{n}"), 0));
        }
        assert_eq!(h.nodes.len(), MAX_NODES);
    }

    #[test]
    fn a_stats_broadcast_becomes_a_sample_and_other_messages_do_not() {
        let mut s = sample("a", clock::now_ms() - 5).snapshot;
        s.events_in_per_s = 3.5;
        let json = crate::service::ephemeral_json(
            ADMIN_ROOM,
            Event::Broadcast(tidewire_protocol::BroadcastData {
                event: STATS_EVENT.into(),
                data: serde_json::to_value(&s).unwrap(),
                from: None,
                user: None,
            }),
        );
        let got = sample_of(&json).unwrap();
        assert_eq!(got.snapshot, s);
        assert!((5..1000).contains(&got.bus_lag_ms), "{}", got.bus_lag_ms);
        let other = crate::service::ephemeral_json(
            ADMIN_ROOM,
            Event::Broadcast(tidewire_protocol::BroadcastData {
                event: "cursor".into(),
                data: serde_json::json!({}),
                from: None,
                user: None,
            }),
        );
        assert!(sample_of(&other).is_none());
        assert!(sample_of("not json").is_none());
    }
}
