//! The durable side: each room's append-only log and its materialized items.
//!
//! [`Store`] is the contract every backend implements (SQLite for one node, PostgreSQL for several).
//! A backend's driver errors stay inside it: each turns them into [`StoreError`]. The unit
//! tests' `test_suite` holds behaviour tests written once against `&dyn Store`, which every
//! implementation runs.
//!
//! ```
//! # tokio_test_shim::run(async {
//! use tidewire_server::store::{sqlite::SqliteStore, Retention, Store, WriteOp, WriteRequest};
//! let store = SqliteStore::open("sqlite::memory:", Retention::default()).await.unwrap();
//! let w = store
//!     .write(WriteRequest::new("board-1", WriteOp::Put { id: "a".into(), value: serde_json::json!(1) }))
//!     .await
//!     .unwrap();
//! assert_eq!(w.envelope.seq, Some(1));
//! assert_eq!(store.snapshot("board-1").await.unwrap().seq, 1);
//! # });
//! # mod tokio_test_shim { pub fn run<F: std::future::Future>(f: F) -> F::Output {
//! #   tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f) } }
//! ```

mod plan;

pub use crate::error::StoreError;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;
#[cfg(all(test, feature = "sqlite"))]
mod test_suite;

use async_trait::async_trait;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tidewire_protocol::{Envelope, RawAppEvent, Snapshot};

use crate::Result;

/// What a write does.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOp {
    /// Upsert an item.
    Put {
        /// Item id.
        id: String,
        /// New value.
        value: Value,
    },
    /// Delete an item (leaves a tombstone).
    Delete {
        /// Item id.
        id: String,
    },
    /// Append an application event.
    Publish(RawAppEvent),
}

/// One write, as the store receives it (already validated).
#[derive(Debug, Clone, PartialEq)]
pub struct WriteRequest {
    /// The room.
    pub room: String,
    /// The operation.
    pub op: WriteOp,
    /// The idempotency key, if any.
    pub key: Option<String>,
    /// The expected current version (0: the item must not exist). Ignored for `Publish`.
    pub if_match: Option<u64>,
}

impl WriteRequest {
    /// A write without key or precondition.
    pub fn new(room: impl Into<String>, op: WriteOp) -> Self {
        WriteRequest {
            room: room.into(),
            op,
            key: None,
            if_match: None,
        }
    }

    /// With an idempotency key.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// With an `If-Match` version.
    pub fn if_match(mut self, version: u64) -> Self {
        self.if_match = Some(version);
        self
    }

    /// The request fingerprint recorded with an idempotency key: method, item, body and
    /// precondition. Same key + other fingerprint is `idempotency_key_reused`.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        match &self.op {
            WriteOp::Put { id, value } => {
                h.update(b"PUT\n");
                h.update(id.as_bytes());
                h.update(b"\n");
                h.update(value.to_string().as_bytes());
            }
            WriteOp::Delete { id } => {
                h.update(b"DELETE\n");
                h.update(id.as_bytes());
            }
            WriteOp::Publish(ev) => {
                h.update(b"POST\n");
                h.update(ev.event_type.as_bytes());
                h.update(b"\n");
                h.update(ev.data.to_string().as_bytes());
            }
        }
        h.update(format!("\n{:?}", self.if_match).as_bytes());
        h.finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    }
}

/// The outcome of a successful write.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// The appended event.
    pub envelope: Envelope,
    /// The envelope as JSON text, exactly as first answered (a replay answers the same bytes).
    pub json: String,
    /// True when an earlier write with the same key and request is answered again.
    pub replayed: bool,
}

/// A durable event read from the log.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// Its `seq`.
    pub seq: u64,
    /// The envelope JSON text, as stored.
    pub json: String,
}

impl StoredEvent {
    /// Decodes the envelope.
    pub fn envelope(&self) -> Result<Envelope> {
        Ok(Envelope::decode(&self.json)?)
    }
}

/// How much of each room's log is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// At most this many events per room.
    pub events: u64,
    /// Events older than this many seconds are removed.
    pub secs: u64,
    /// Idempotency keys are remembered this many seconds.
    pub idempotency_secs: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            events: 10_000,
            secs: 604_800,
            idempotency_secs: 86_400,
        }
    }
}

/// The durable store of logs and items.
///
/// Contract, for every implementation:
/// - `write` appends exactly one event with `seq = head + 1` (contiguous per room, starting at
///   1), updates the item, and records the idempotency key, all in **one transaction**.
/// - With a key already recorded (within `idempotency_secs`) for the same fingerprint, `write`
///   appends nothing and answers the first outcome with `replayed = true`; with another
///   fingerprint it fails with `Error::IdempotencyKeyReused`. This holds under concurrent
///   writers with one key: exactly one event is appended.
/// - `if_match` mismatch fails with `Error::VersionConflict` carrying the current live item;
///   nothing is appended. `if_match: Some(0)` means "the item must not exist". Deleting an item
///   that is not live is `Error::NotFound`. A delete leaves a tombstone; a later put continues
///   from the tombstone's version + 1.
/// - `snapshot` returns live items and the `seq` of the last event they reflect, read
///   consistently with each other.
/// - `read(room, after, limit)` returns up to `limit` events with `seq > after`, in order. When
///   `after > 0` and the log no longer holds `after + 1` it fails with
///   `Error::HistoryTrimmed`; `after == 0` reads from the start of the retained log.
/// - Retention keeps at most `events` per room and nothing older than `secs`; trimming never
///   lowers a room's head.
/// - `write_batch(reqs)` answers, in order, exactly what `write` would have answered for each
///   request applied one after the other (each sees the writes before it: their `seq`, items
///   and idempotency keys), and answers none of them before all its appended events are
///   durable. One request's error (conflict, not found, key reused) does not fail the others.
///   A backend may commit the batch as one transaction (group commit).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Appends one event (see the contract above).
    async fn write(&self, req: WriteRequest) -> Result<Written>;
    /// Applies several writes in order (see the contract above). By default one transaction
    /// per write.
    async fn write_batch(&self, reqs: Vec<WriteRequest>) -> Vec<Result<Written>> {
        let mut out = Vec::with_capacity(reqs.len());
        for req in reqs {
            out.push(self.write(req).await);
        }
        out
    }
    /// Live items and the seq they reflect.
    async fn snapshot(&self, room: &str) -> Result<Snapshot>;
    /// The seq of the room's last event (0 when it has none).
    async fn head(&self, room: &str) -> Result<u64>;
    /// Events with `seq > after`, at most `limit`.
    async fn read(&self, room: &str, after: u64, limit: usize) -> Result<Vec<StoredEvent>>;
    /// Removes events older than `cutoff_unix_ms` in every room and expired idempotency keys;
    /// answers how many events were removed.
    async fn trim_expired(&self, cutoff_unix_ms: i64) -> Result<u64>;
}

/// An integer column as a `seq`, version or count (never negative in the database).
fn to_u64(v: i64) -> u64 {
    v.max(0) as u64
}

/// A `seq`, version or count as an integer column (SQL integers are signed 64-bit).
fn to_i64(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}
