//! Live figures for the `/admin` page: process-wide atomics fed beside the Prometheus calls
//! (one line at each call site of [`metrics`](crate::metrics)), read once a second by the
//! sampler in [`admin`](crate::admin).
//!
//! Prometheus keeps totals for scrapers; this module keeps what a live chart needs and the
//! exporter does not give cheaply: totals to difference per second, connections per transport,
//! and write latencies of *the last second* (a log-scale histogram that the sampler empties
//! each time it reads it), so p50/p99 over the last minutes is a series of per-second points.
//!
//! ```
//! use std::time::Duration;
//! use tidewire_server::stats;
//! let before = stats::totals();
//! stats::event_in();
//! stats::write_latency(Duration::from_micros(900));
//! let after = stats::totals();
//! assert!(after.events_in > before.events_in);
//! let lat = stats::take_latencies();
//! assert!(lat.count >= 1);
//! ```

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

/// The room the server's stats snapshots are broadcast into. Rooms starting with
/// [`INTERNAL_ROOM_PREFIX`] are the server's own: no client token reaches them.
pub const ADMIN_ROOM: &str = "_tidewire.admin";

/// The prefix of the server's own rooms.
pub const INTERNAL_ROOM_PREFIX: &str = "_tidewire.";

/// Whether `room` is one of the server's own rooms.
pub fn is_internal_room(room: &str) -> bool {
    room.starts_with(INTERNAL_ROOM_PREFIX)
}

const TRANSPORTS: usize = 3;

/// Index of a transport label (`sse`, `ws`, anything else is `poll`), as the metrics use.
fn slot(transport: &str) -> usize {
    match transport {
        "sse" => 0,
        "ws" => 1,
        _ => 2,
    }
}

/// Four buckets per doubling, from 1 µs up to 2^26 µs (about 67 s); the last bucket takes
/// everything slower.
const BUCKETS: usize = 26 * 4 + 1;

struct Counters {
    events_in: AtomicU64,
    events_out: [AtomicU64; TRANSPORTS],
    connections: [AtomicI64; TRANSPORTS],
    slow_cuts: [AtomicU64; TRANSPORTS],
    gaps_filled: AtomicU64,
    duplicates: AtomicU64,
    latency: [AtomicU64; BUCKETS],
    /// Milliseconds; -1 when nothing reports an outbox.
    outbox_oldest_pending_ms: AtomicI64,
}

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicU64 = AtomicU64::new(0);
#[allow(clippy::declare_interior_mutable_const)]
const ZERO_I: AtomicI64 = AtomicI64::new(0);

static C: Counters = Counters {
    events_in: ZERO,
    events_out: [ZERO; TRANSPORTS],
    connections: [ZERO_I; TRANSPORTS],
    slow_cuts: [ZERO; TRANSPORTS],
    gaps_filled: ZERO,
    duplicates: ZERO,
    latency: [ZERO; BUCKETS],
    outbox_oldest_pending_ms: AtomicI64::new(-1),
};

/// A write was appended (beside `metrics::event_in`).
pub fn event_in() {
    C.events_in.fetch_add(1, Ordering::Relaxed);
}

/// Events sent on a transport (beside `metrics::sent`).
pub fn sent(transport: &str, events: u64) {
    C.events_out[slot(transport)].fetch_add(events, Ordering::Relaxed);
}

/// A slow consumer was cut off (beside `metrics::slow_consumer`).
pub fn slow_consumer(transport: &str) {
    C.slow_cuts[slot(transport)].fetch_add(1, Ordering::Relaxed);
}

/// The hub filled a bus gap from the store (beside `metrics::gap_filled`).
pub fn gap_filled() {
    C.gaps_filled.fetch_add(1, Ordering::Relaxed);
}

/// The hub dropped a duplicate bus message (beside `metrics::duplicate_dropped`).
pub fn duplicate_dropped() {
    C.duplicates.fetch_add(1, Ordering::Relaxed);
}

/// The age of the oldest outbox row not yet published (`None`: the outbox is empty or
/// absent), beside the `tidewire_outbox_oldest_pending_seconds` gauge.
pub fn outbox_oldest_pending(age: Option<Duration>) {
    let ms = age.map_or(-1, |d| d.as_millis().min(i64::MAX as u128) as i64);
    C.outbox_oldest_pending_ms.store(ms, Ordering::Relaxed);
}

fn bucket_of(d: Duration) -> usize {
    let us = d.as_micros().max(1) as f64;
    ((us.log2() * 4.0) as usize).min(BUCKETS - 1)
}

/// The middle of a bucket, in seconds (geometric: buckets are log-scale).
fn bucket_mid(i: usize) -> f64 {
    2f64.powf((i as f64 + 0.5) / 4.0) / 1e6
}

/// A write's latency (beside `metrics::write_latency`).
pub fn write_latency(d: Duration) {
    C.latency[bucket_of(d)].fetch_add(1, Ordering::Relaxed);
}

/// Counts a connection of one transport for as long as it lives (beside `ConnectionGauge`).
#[derive(Debug)]
pub struct Connection(usize);

impl Connection {
    /// A new connection of `transport` (`sse`, `ws`, `poll`).
    pub fn new(transport: &str) -> Self {
        let i = slot(transport);
        C.connections[i].fetch_add(1, Ordering::Relaxed);
        Connection(i)
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        C.connections[self.0].fetch_sub(1, Ordering::Relaxed);
    }
}

/// Per-transport figures, in the order `sse`, `ws`, `poll`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PerTransport<T> {
    /// Server-Sent Events.
    pub sse: T,
    /// WebSocket.
    pub ws: T,
    /// Long-poll and polling.
    pub poll: T,
}

impl<T: Copy + std::ops::Add<Output = T>> PerTransport<T> {
    /// The three added up.
    pub fn sum(&self) -> T {
        self.sse + self.ws + self.poll
    }
}

fn per<T>(f: impl Fn(usize) -> T) -> PerTransport<T> {
    PerTransport {
        sse: f(0),
        ws: f(1),
        poll: f(2),
    }
}

/// Every total since the process started, read at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Writes appended.
    pub events_in: u64,
    /// Events sent, per transport.
    pub events_out: PerTransport<u64>,
    /// Open connections, per transport.
    pub connections: PerTransport<i64>,
    /// Slow consumers cut off, per transport.
    pub slow_cuts: PerTransport<u64>,
    /// Bus gaps filled from the store.
    pub gaps_filled: u64,
    /// Duplicate bus messages dropped.
    pub duplicates: u64,
    /// The oldest unpublished outbox row's age in milliseconds, when an outbox reports one.
    pub outbox_oldest_pending_ms: Option<u64>,
}

/// Reads every total.
pub fn totals() -> Totals {
    Totals {
        events_in: C.events_in.load(Ordering::Relaxed),
        events_out: per(|i| C.events_out[i].load(Ordering::Relaxed)),
        connections: per(|i| C.connections[i].load(Ordering::Relaxed).max(0)),
        slow_cuts: per(|i| C.slow_cuts[i].load(Ordering::Relaxed)),
        gaps_filled: C.gaps_filled.load(Ordering::Relaxed),
        duplicates: C.duplicates.load(Ordering::Relaxed),
        outbox_oldest_pending_ms: u64::try_from(C.outbox_oldest_pending_ms.load(Ordering::Relaxed))
            .ok(),
    }
}

/// Write latencies recorded since the last [`take_latencies`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latencies {
    /// How many writes.
    pub count: u64,
    /// The median, in seconds (`None` without writes).
    pub p50: Option<f64>,
    /// The 99th percentile, in seconds.
    pub p99: Option<f64>,
}

/// Empties the latency histogram and answers its quantiles (to about ±10%: four buckets per
/// doubling). With several samplers in one process (tests), each sees part of the writes.
pub fn take_latencies() -> Latencies {
    let counts: Vec<u64> = C
        .latency
        .iter()
        .map(|b| b.swap(0, Ordering::Relaxed))
        .collect();
    let count: u64 = counts.iter().sum();
    let quantile = |q: f64| -> Option<f64> {
        if count == 0 {
            return None;
        }
        let rank = ((count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(bucket_mid(i));
            }
        }
        Some(bucket_mid(BUCKETS - 1))
    };
    Latencies {
        count,
        p50: quantile(0.5),
        p99: quantile(0.99),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_within_a_fifth_of_the_value() {
        for us in [1u64, 7, 150, 900, 12_000, 480_000, 3_000_000] {
            let d = Duration::from_micros(us);
            let mid = bucket_mid(bucket_of(d));
            let ratio = mid / d.as_secs_f64();
            assert!((0.8..1.25).contains(&ratio), "{us} µs → {mid} s");
        }
        assert_eq!(bucket_of(Duration::from_secs(3600)), BUCKETS - 1);
        assert_eq!(bucket_of(Duration::ZERO), 0);
    }

    #[test]
    fn connections_count_while_they_live() {
        let before = totals().connections.ws;
        let c = Connection::new("ws");
        assert!(totals().connections.ws > before - 1);
        drop(c);
        assert_eq!(slot("sse"), 0);
        assert_eq!(slot("poll"), 2);
    }

    #[test]
    fn the_outbox_age_is_reported_until_cleared() {
        outbox_oldest_pending(Some(Duration::from_millis(1500)));
        assert_eq!(totals().outbox_oldest_pending_ms, Some(1500));
        outbox_oldest_pending(None);
        assert_eq!(totals().outbox_oldest_pending_ms, None);
    }

    #[test]
    fn internal_rooms_are_recognised() {
        assert!(is_internal_room(ADMIN_ROOM));
        assert!(!is_internal_room("tidewire.admin"));
        assert!(!is_internal_room("board-1"));
    }
}
