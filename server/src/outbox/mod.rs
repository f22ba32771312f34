//! Your database, live: the app's own PostgreSQL feeds Tidewire's rooms, exactly once and in
//! commit order (`tidewire serve --outbox postgres://…`; `docs/outbox.md` has the guarantees
//! and the reasoning).
//!
//! The app calls `tidewire.publish`, `tidewire.put_item`, `tidewire.delete_item` inside its
//! own transactions (or lets `tidewire.watch_table` do it from a trigger); each appends a row
//! to `tidewire.outbox` ([`sql`] holds the SQL, [`install`] installs it). The [`consumer`]
//! reads those rows in id order, partition by partition (a room's rows are all in one of
//! [`PARTITIONS`]), writes each one through the server's normal write path with an
//! idempotency key ([`ingest`]), and deletes what it wrote, or moves what the server refuses
//! to `tidewire.dead_letters`.
//!
//! ```no_run
//! # async fn f(service: std::sync::Arc<tidewire_server::service::Service>) -> tidewire_server::Result<()> {
//! let mut config = tidewire_server::Config::default();
//! config.outbox = Some("postgres://app@127.0.0.1/app".into());
//! // Installs the SQL (or keeps trying in the background) and starts consuming.
//! let health = tidewire_server::outbox::spawn(&config, &service).await?;
//! assert!(health.is_some());
//! # Ok(()) }
//! ```
//!
//! Then, in the app's database:
//!
//! ```text
//! BEGIN;
//! UPDATE cards SET title = 'Ship it' WHERE id = 7;
//! SELECT tidewire.put_item('board-1', 'card-7', '{"title": "Ship it"}', 'req-81');
//! COMMIT;  -- now, and only now, board-1's subscribers get item.put with key "req-81"
//! ```

pub mod consumer;
pub mod ingest;
pub mod install;
pub mod sql;

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;

use crate::service::Service;
use crate::store::{WriteRequest, Written};
use crate::{Config, Error, Result};

/// Partitions of the outbox (a room's rows are all in partition `md5(room) & 15`, see
/// `tidewire.partition_of`). Each is consumed by one node at a time, so this is also the most
/// nodes that share the work.
pub const PARTITIONS: i32 = 16;

/// The notification channel the SQL functions wake consumers on (payload: the partition).
pub const CHANNEL: &str = "tidewire_outbox";

/// The limits the SQL functions and the consumer check, from the server's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest item value (`--max-item-bytes`), in bytes of compact JSON.
    pub max_item_bytes: usize,
    /// Largest app event data (`--max-body-bytes`), in bytes of compact JSON.
    pub max_data_bytes: usize,
}

impl Limits {
    /// The limits `config` sets.
    pub fn of(config: &Config) -> Limits {
        Limits {
            max_item_bytes: config.max_item_bytes,
            max_data_bytes: config.max_body_bytes,
        }
    }
}

/// Where the consumer writes: the server's write path (the [`Service`]), or a test double.
#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// Appends one write (see [`Service::write`]).
    async fn write(&self, req: WriteRequest) -> Result<Written>;
}

#[async_trait]
impl Sink for Service {
    async fn write(&self, req: WriteRequest) -> Result<Written> {
        Service::write(self, req).await
    }
}

/// Whether the outbox database answers, for `/healthz`. Cloned handles share the state.
#[derive(Debug, Clone, Default)]
pub struct Health(Arc<Mutex<Option<String>>>);

impl Health {
    /// Why the outbox is not being consumed (`None`: it is).
    pub fn problem(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, problem: Option<String>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = problem;
    }
}

/// With `--outbox`, installs the SQL (first attempt now, bounded; the consumer keeps trying
/// when the database does not answer yet) and starts the consumer, which stops once `sink`
/// is dropped. Answers the outbox's health; `None` without `--outbox`. A URL that does not
/// parse is a configuration error.
pub async fn spawn<S: Sink>(config: &Config, sink: &Arc<S>) -> Result<Option<Health>> {
    let Some(url) = config.outbox.as_deref() else {
        return Ok(None);
    };
    let pg: sqlx::postgres::PgConnectOptions = url
        .parse()
        .map_err(|e| Error::Config(format!("bad --outbox URL: {e}")))?;
    let health = Health::default();
    let sink: Weak<dyn Sink> = Arc::downgrade(sink) as Weak<dyn Sink>;
    let consumer = consumer::Consumer::new(
        pg,
        consumer::Options {
            poll: Duration::from_millis(config.outbox_poll_ms.max(10)),
            limits: Limits::of(config),
            ..consumer::Options::default()
        },
        sink,
        health.clone(),
    );
    let first = consumer.connect().await;
    if let Err(err) = &first {
        tracing::warn!(%err, "outbox database not ready; retrying in the background");
        health.set(Some(err.to_string()));
    }
    tokio::spawn(consumer.run(first.ok()));
    Ok(Some(health))
}

/// Turns a PostgreSQL error of the outbox database into the crate's error.
trait Db<T> {
    fn db(self) -> Result<T>;
}

impl<T> Db<T> for std::result::Result<T, sqlx::Error> {
    fn db(self) -> Result<T> {
        self.map_err(|e| Error::Outbox(e.to_string()))
    }
}

#[cfg(test)]
mod tests;
