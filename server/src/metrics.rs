//! Prometheus metrics (`GET /metrics`), recorded through the `metrics` crate.
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `tidewire_connections` | gauge | `transport` |
//! | `tidewire_events_in_total` | counter | |
//! | `tidewire_events_out_total` | counter | `transport` |
//! | `tidewire_bytes_out_total` | counter | `transport` |
//! | `tidewire_slow_consumer_disconnects_total` | counter | `transport` |
//! | `tidewire_replays_total`, `tidewire_resyncs_total` | counter | |
//! | `tidewire_bus_duplicates_total`, `tidewire_bus_gaps_filled_total` | counter | |
//! | `tidewire_write_latency_seconds`, `tidewire_write_batch_size` | summary | |
//! | `tidewire_bus_messages_received_total` | counter | | (messages this node took off the Redis bus)
//! | `tidewire_bus_rooms_subscribed` | gauge | | (rooms this node is subscribed to on the bus)
//! | `tidewire_bus_subscribe_commands_total`, `tidewire_bus_unsubscribe_commands_total` | counter | |
//! | `tidewire_limits_cluster_errors_total` | counter | | (cluster-wide limit checks that fell back to the node's own)
//!
//! ```
//! let handle = tidewire_server::metrics::install();
//! tidewire_server::metrics::event_in();
//! assert!(handle.render().contains("tidewire_events_in_total"));
//! ```

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Installs the process-wide recorder once and answers its handle. When the embedding
/// application already installed another recorder, the handle renders an empty page.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .install_recorder()
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder().handle())
        })
        .clone()
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
