//! Prometheus metrics (`GET /metrics`), recorded through the `metrics` crate.
//!
//! Every series is declared once, in [`SERIES`], with its kind, help text and label values:
//! [`install`] registers them all with `# HELP` and `# TYPE` and at zero, so a fresh server's
//! first scrape already lists every series (dashboards show 0, not "no data", and an alert on
//! a missing series does not fire on every restart). Latencies and sizes are **histograms**
//! (buckets in [`BUCKETS`]), which, unlike summaries, add up across nodes. `docs/operations.md`
//! explains each series; a test scrapes a fresh server for all of them.
//!
//! ```
//! let handle = tidewire_server::metrics::install();
//! let page = handle.render();
//! assert!(page.contains("# TYPE tidewire_events_in_total counter"));
//! assert!(page.contains("tidewire_write_latency_seconds_bucket"));
//! ```

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// What kind of series a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations in buckets.
    Histogram,
}

/// One series: its name, kind, help, and the label values it is registered with at start.
#[derive(Debug, Clone, Copy)]
pub struct Series {
    /// The Prometheus name.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// The `# HELP` text.
    pub help: &'static str,
    /// The label name and the values present from the start (empty: no label).
    pub labels: (&'static str, &'static [&'static str]),
}

const TRANSPORTS: (&str, &[&str]) = ("transport", &["sse", "ws", "poll"]);
const NONE: (&str, &[&str]) = ("", &[]);

const fn series(
    name: &'static str,
    kind: Kind,
    help: &'static str,
    labels: (&'static str, &'static [&'static str]),
) -> Series {
    Series {
        name,
        kind,
        help,
        labels,
    }
}

/// Every series the server exports.
pub const SERIES: &[Series] = &[
    series(
        "tidewire_connections",
        Kind::Gauge,
        "Open streaming connections.",
        TRANSPORTS,
    ),
    series(
        "tidewire_events_in_total",
        Kind::Counter,
        "Durable events appended.",
        NONE,
    ),
    series(
        "tidewire_events_out_total",
        Kind::Counter,
        "Events written to clients.",
        TRANSPORTS,
    ),
    series(
        "tidewire_bytes_out_total",
        Kind::Counter,
        "Bytes of events written to clients.",
        TRANSPORTS,
    ),
    series(
        "tidewire_slow_consumer_disconnects_total",
        Kind::Counter,
        "Connections cut because their outbound queue overflowed.",
        TRANSPORTS,
    ),
    series(
        "tidewire_replays_total",
        Kind::Counter,
        "Catch-ups that read the log.",
        NONE,
    ),
    series(
        "tidewire_replayed_events_total",
        Kind::Counter,
        "Events sent from the log by catch-ups.",
        NONE,
    ),
    series(
        "tidewire_resyncs_total",
        Kind::Counter,
        "Resyncs sent (a position the log no longer holds).",
        NONE,
    ),
    series(
        "tidewire_bus_duplicates_total",
        Kind::Counter,
        "Duplicate bus messages dropped by the hub.",
        NONE,
    ),
    series(
        "tidewire_bus_gaps_filled_total",
        Kind::Counter,
        "Bus gaps the hub filled from the store.",
        NONE,
    ),
    series(
        "tidewire_write_latency_seconds",
        Kind::Histogram,
        "Time from a write's arrival to its answer (commit and publish included).",
        NONE,
    ),
    series(
        "tidewire_write_batch_size",
        Kind::Histogram,
        "Writes carried by one commit (group commit).",
        NONE,
    ),
    series(
        "tidewire_replay_events",
        Kind::Histogram,
        "Events one catch-up page read from the log.",
        NONE,
    ),
];

/// Histogram buckets, by metric. Writes commit in well under a millisecond on SQLite and a
/// few on PostgreSQL, and a slow disk shows in the tail, so latency buckets run from 0.1 ms
/// to 2.5 s; group commits carry 1 to 64 writes; a replay page holds up to 1,000 events.
pub const BUCKETS: &[(&str, &[f64])] = &[
    (
        "tidewire_write_latency_seconds",
        &[
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5,
        ],
    ),
    (
        "tidewire_write_batch_size",
        &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0],
    ),
    (
        "tidewire_replay_events",
        &[1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0],
    ),
];

/// Installs the process-wide recorder once, registers every series of [`SERIES`], and answers
/// its handle. When the embedding application already installed another recorder, the handle
/// renders an empty page.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let mut builder = PrometheusBuilder::new();
            for (name, buckets) in BUCKETS {
                builder = builder
                    .set_buckets_for_metric(Matcher::Full((*name).to_owned()), buckets)
                    .unwrap_or_else(|_| PrometheusBuilder::new());
            }
            let handle = match builder.install_recorder() {
                Ok(handle) => handle,
                Err(_) => return PrometheusBuilder::new().build_recorder().handle(),
            };
            register(SERIES);
            handle
        })
        .clone()
}

/// Describes each of `series` and creates it at zero (for every label value it names).
pub fn register(series: &[Series]) {
    for s in series {
        match s.kind {
            Kind::Counter => metrics::describe_counter!(s.name, s.help),
            Kind::Gauge => metrics::describe_gauge!(s.name, s.help),
            Kind::Histogram => metrics::describe_histogram!(s.name, s.help),
        }
        let (label, values) = s.labels;
        if values.is_empty() {
            touch(s.kind, s.name, None);
        }
        for value in values {
            touch(s.kind, s.name, Some((label, value)));
        }
    }
}

fn touch(kind: Kind, name: &'static str, label: Option<(&'static str, &'static str)>) {
    let labels: Vec<metrics::Label> = label
        .map(|(k, v)| metrics::Label::new(k, v))
        .into_iter()
        .collect();
    match kind {
        Kind::Counter => metrics::counter!(name, labels).increment(0),
        Kind::Gauge => metrics::gauge!(name, labels).increment(0.0),
        // A histogram with no observation still renders its buckets at zero.
        Kind::Histogram => drop(metrics::histogram!(name, labels)),
    }
}

/// Counts a connection for as long as it lives.
pub struct ConnectionGauge(&'static str);

impl ConnectionGauge {
    /// A new connection of `transport` (`sse`, `ws`, `poll`).
    pub fn new(transport: &'static str) -> Self {
        metrics::gauge!("tidewire_connections", "transport" => transport).increment(1.0);
        ConnectionGauge(transport)
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        metrics::gauge!("tidewire_connections", "transport" => self.0).decrement(1.0);
    }
}

/// A request failed in the store.
pub fn store_error() {
    metrics::counter!("tidewire_store_errors_total").increment(1);
}

/// A write was appended.
pub fn event_in() {
    metrics::counter!("tidewire_events_in_total").increment(1);
}

/// Events and bytes sent on a transport.
pub fn sent(transport: &'static str, events: u64, bytes: u64) {
    let out = sent_counters(transport);
    out.events.increment(events);
    out.bytes.increment(bytes);
}

struct Sent {
    events: metrics::Counter,
    bytes: metrics::Counter,
}

/// The `sent` counters of a transport, looked up in the registry once (they are hit for every
/// delivery). The server installs the recorder before any connection exists.
fn sent_counters(transport: &'static str) -> &'static Sent {
    static SSE: OnceLock<Sent> = OnceLock::new();
    static WS: OnceLock<Sent> = OnceLock::new();
    static POLL: OnceLock<Sent> = OnceLock::new();
    let cell = match transport {
        "sse" => &SSE,
        "ws" => &WS,
        _ => &POLL,
    };
    cell.get_or_init(|| Sent {
        events: metrics::counter!("tidewire_events_out_total", "transport" => transport),
        bytes: metrics::counter!("tidewire_bytes_out_total", "transport" => transport),
    })
}

/// A slow consumer is cut off (its queue overflowed).
pub fn slow_consumer(transport: &'static str) {
    metrics::counter!("tidewire_slow_consumer_disconnects_total", "transport" => transport)
        .increment(1);
}

/// A connection replayed events from the log.
pub fn replay(events: u64) {
    metrics::counter!("tidewire_replays_total").increment(1);
    metrics::counter!("tidewire_replayed_events_total").increment(events);
    metrics::histogram!("tidewire_replay_events").record(events as f64);
}

/// A connection was told to resync.
pub fn resync() {
    metrics::counter!("tidewire_resyncs_total").increment(1);
}

/// The hub dropped a duplicate bus message.
pub fn duplicate_dropped() {
    metrics::counter!("tidewire_bus_duplicates_total").increment(1);
}

/// The hub filled a gap from the store.
pub fn gap_filled() {
    metrics::counter!("tidewire_bus_gaps_filled_total").increment(1);
}

/// How many writes one commit carried (group commit).
pub fn write_batch(writes: usize) {
    metrics::histogram!("tidewire_write_batch_size").record(writes as f64);
}

/// Time from a write's arrival to its answer (commit and publish included).
pub fn write_latency(d: Duration) {
    metrics::histogram!("tidewire_write_latency_seconds").record(d.as_secs_f64());
}

/// A TCP connection was refused by a cap (`per_address`, `global`: see
/// [`crate::serve::admission`]).
pub fn connection_refused(reason: &'static str) {
    metrics::counter!("tidewire_connections_refused_total", "reason" => reason).increment(1);
}

/// A TCP connection was closed by a deadline (`first_bytes`, `header`, `idle`: see
/// [`crate::serve::deadline`]).
pub fn connection_timed_out(reason: &'static str) {
    metrics::counter!("tidewire_connections_timed_out_total", "reason" => reason).increment(1);
}

/// Rows waiting in the outbox, and the age of the oldest, in seconds (read every poll).
pub fn outbox_pending(rows: i64, oldest_secs: f64) {
    metrics::gauge!("tidewire_outbox_rows_pending").set(rows as f64);
    metrics::gauge!("tidewire_outbox_oldest_pending_seconds").set(oldest_secs);
}

/// Outbox rows appended to their rooms (idempotent replays of rows read twice included).
pub fn outbox_ingested(rows: u64) {
    metrics::counter!("tidewire_outbox_ingested_total").increment(rows);
}

/// Outbox rows the server refused, moved to `tidewire.dead_letters`.
pub fn outbox_dead_letters(rows: u64) {
    metrics::counter!("tidewire_outbox_dead_letters_total").increment(rows);
}

/// The consumer woke up: `notify` (a notification arrived) or `poll` (the poll interval
/// found rows no notification had announced).
pub fn outbox_wakeup(by: &'static str) {
    metrics::counter!("tidewire_outbox_wakeups_total", "by" => by).increment(1);
}

/// A message was received from the Redis bus.
pub fn bus_received() {
    metrics::counter!("tidewire_bus_messages_received_total").increment(1);
}

/// How many rooms this node is subscribed to on the bus.
pub fn bus_rooms_subscribed(rooms: usize) {
    metrics::gauge!("tidewire_bus_rooms_subscribed").set(rooms as f64);
}

/// `SUBSCRIBE`/`SSUBSCRIBE` commands sent.
pub fn bus_subscribe_commands(n: u64) {
    metrics::counter!("tidewire_bus_subscribe_commands_total").increment(n);
}

/// `UNSUBSCRIBE`/`SUNSUBSCRIBE` commands sent.
pub fn bus_unsubscribe_commands(n: u64) {
    metrics::counter!("tidewire_bus_unsubscribe_commands_total").increment(n);
}

/// A cluster-wide limit check could not reach Redis and the node's own limit decided.
pub fn limits_cluster_error() {
    metrics::counter!("tidewire_limits_cluster_errors_total").increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_on_the_first_scrape_with_help_and_type() {
        let page = install().render();
        for s in SERIES {
            let kind = match s.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            };
            assert!(
                page.contains(&format!("# TYPE {} {kind}", s.name)),
                "{}\n{page}",
                s.name
            );
            assert!(page.contains(&format!("# HELP {} ", s.name)), "{}", s.name);
            let (label, values) = s.labels;
            for v in values {
                assert!(
                    page.contains(&format!("{}{{{label}=\"{v}\"}}", s.name)),
                    "{} {v}\n{page}",
                    s.name
                );
            }
            if s.kind == Kind::Histogram {
                assert!(
                    page.contains(&format!("{}_bucket{{le=", s.name)),
                    "{}",
                    s.name
                );
            }
        }
    }
}
