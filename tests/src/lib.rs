//! # tidewire-tests
//!
//! End-to-end tests of the `tidewire` server over real sockets, and the small kit they are
//! built from (reused by the drills and the multi-node tests):
//!
//! - [`Server`]: spawn the binary on port 0 with a temp SQLite file; kill, SIGTERM, restart
//!   on the same port and file; read its RSS.
//! - [`Rest`]: typed writes, snapshot, history, presence, long-poll, raw requests.
//! - [`SseClient`], [`WsClient`], [`PollClient`]: the three live transports.
//! - [`Delivery`]: lost / duplicated accounting for resume tests.
//! - [`Database`]: a fresh PostgreSQL database per test (the app's side of the outbox tests).
//!
//! ```no_run
//! # async fn demo() -> tidewire_tests::Result<()> {
//! use std::time::Duration;
//! use serde_json::json;
//! use tidewire_tests::{Server, SseClient, SseRequest, WriteOptions};
//! let server = Server::start()?;
//! let mut sse = SseClient::connect(&server.url(), &SseRequest::rooms(&["a"])).await?;
//! server.rest().put("a", "x", &json!(1), &WriteOptions::key("k")).await?.ok();
//! let ev = sse.next_durable(Duration::from_secs(5)).await?;
//! assert_eq!(ev.envelope.seq, Some(1));
//! # Ok(()) }
//! ```
//!
//! The tests themselves are in `tests/single_node/` (one module per concern: `resume`, `sse`,
//! `resync`, `writes`, `slow_consumer`, `bad_input`, `shutdown`, `restart`, `ws`, `poll`,
//! `limits`, `endpoints`); each starts its own server on port 0, so they run in parallel:
//!
//! ```text
//! CARGO_TARGET_DIR=target-e2e cargo test -p tidewire-tests
//! ```
//!
//! The multi-node tests (`tests/multi_node.rs`) start several servers on one PostgreSQL and
//! one Redis (their own database and key prefix each, removed at the end):
//!
//! ```text
//! CARGO_TARGET_DIR=target-multi cargo test -p tidewire-tests --test multi_node
//! ```
//!
//! Environment: `TIDEWIRE_BIN` (the binary under test; default: beside the test executable,
//! rebuilt when `server/` or `shared/src` is newer), `TIDEWIRE_E2E_SEED` (replay the random
//! choices of a run; every randomised test prints its seed).

mod check;
mod error;
mod pg;
mod poll;
pub mod proxy;
mod raw_http;
mod rest;
mod server;
mod sse;
mod ws;

pub use check::{Counts, Delivery};
pub use error::{within, Error, Result};
pub use pg::Database;
pub use poll::PollClient;
pub use raw_http::{dechunk, split_response};
pub use rest::{decode_body, metric_sum, Answer, RawAnswer, Rest, WriteOptions, REQUEST_TIMEOUT};
pub use server::{binary, Server, ServerBuilder, START_TIMEOUT};
pub use sse::{SseClient, SseEvent, SseRequest, RAW_KEEP};
pub use ws::{WsClient, REPLY_TIMEOUT};

/// A seed for a test's random choices: `TIDEWIRE_E2E_SEED` when set, else from the clock.
/// Tests print it so a failing run can be replayed.
pub fn seed() -> u64 {
    std::env::var("TIDEWIRE_E2E_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}
