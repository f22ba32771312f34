//! The SQLite [`Store`]: embedded, one file (or memory), created and migrated on first run,
//! WAL journal.
//!
//! The connection that writes is owned by one named OS thread (`tidewire-sqlite-w`); every
//! store call is one job sent to a connection's thread, run there synchronously, and answered
//! once. So a group commit ([`Store::write_batch`]: one `BEGIN IMMEDIATE` transaction, the
//! room's row read once, retention and the new head written once, one `COMMIT`) costs one hop
//! to that thread and one back, however many statements it runs; and since the thread runs one
//! job at a time, writes are serialised without a lock (SQLite has one writer anyway), so the
//! read-check-append of a write needs no retry loop. A file database has a second thread
//! (`tidewire-sqlite-r`) with its own connection for `read`, `head` and `snapshot`, so a replay
//! storm does not queue behind commits (WAL lets it read while the writer writes); an
//! in-memory database is one connection, so everything runs on the writer's thread.
//!
//! A transaction that fails (a full disk, say) is rolled back; when even the rollback fails,
//! the thread closes its connection and opens a fresh one, so the next write does not find
//! itself inside the failed transaction.
//!
//! The code is split by job: `connection` (opening a connection, transactions that always
//! end), `schema` (the tables and their migrations), `worker` (the thread that owns a
//! connection and runs jobs), `write` (batches, retention, trimming) and `read` (snapshots,
//! heads, log pages). SQLite's errors stay here: they become [`Error::Store`] through the
//! `From` impl in this module.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use tidewire_server::store::{sqlite::SqliteStore, Retention, Store};
//! let store = SqliteStore::open("sqlite::memory:", Retention::default()).await.unwrap();
//! assert_eq!(store.head("r").await.unwrap(), 0);
//! # });
//! ```

mod connection;
mod read;
mod schema;
mod worker;
mod write;

use async_trait::async_trait;
use tidewire_protocol::Snapshot;

use self::connection::{Db, Location, Role};
use self::worker::{stopped, Worker};
use super::{Retention, StoreError, StoredEvent, WriteRequest, Written};
use crate::{Error, Result, Store};

/// SQLite's errors, as the rest of the server sees them: the store is unavailable.
impl From<rusqlite::Error> for Error {
    fn from(err: rusqlite::Error) -> Error {
        Error::Store(StoreError::new("sqlite", err))
    }
}

/// The SQLite store.
pub struct SqliteStore {
    /// Writes, migrations, trimming; in memory, reads too.
    writer: Worker,
    /// Reads: its own thread and connection for a file, the writer's in memory.
    reader: Worker,
    retention: Retention,
}

impl SqliteStore {
    /// Opens (creating and migrating) the database at `url`: `sqlite://path`, `sqlite:path`
    /// or `sqlite::memory:`.
    pub async fn open(url: &str, retention: Retention) -> Result<SqliteStore> {
        let location = Location::parse(url)?;
        let memory = location == Location::Memory;
        let writer = {
            let location = location.clone();
            Worker::spawn("tidewire-sqlite-w", move || {
                let mut db = Db::open(location, Role::Writer)?;
                db.migrate()?;
                Ok(db)
            })
            .await?
        };
        let reader = if memory {
            writer.clone()
        } else {
            Worker::spawn("tidewire-sqlite-r", move || {
                Db::open(location, Role::Reader)
            })
            .await?
        };
        Ok(SqliteStore {
            writer,
            reader,
            retention,
        })
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn write(&self, req: WriteRequest) -> Result<Written> {
        let retention = self.retention;
        self.writer
            .run(move |db| db.write_one(&retention, &req))
            .await?
    }

    /// One job on the writer's thread: one transaction, one commit for the whole batch (and,
    /// when the database fails it, each write again alone, in the same job).
    async fn write_batch(&self, reqs: Vec<WriteRequest>) -> Vec<Result<Written>> {
        let retention = self.retention;
        let n = reqs.len();
        match self
            .writer
            .run(move |db| db.write_batch(&retention, &reqs))
            .await
        {
            Ok(out) => out,
            Err(_) => (0..n).map(|_| Err(stopped())).collect(),
        }
    }

    async fn snapshot(&self, room: &str) -> Result<Snapshot> {
        let room = room.to_owned();
        self.reader.run(move |db| db.snapshot(&room)).await?
    }

    async fn head(&self, room: &str) -> Result<u64> {
        let room = room.to_owned();
        self.reader.run(move |db| db.head(&room)).await?
    }

    async fn read(&self, room: &str, after: u64, limit: usize) -> Result<Vec<StoredEvent>> {
        let room = room.to_owned();
        self.reader
            .run(move |db| db.read(&room, after, limit))
            .await?
    }

    async fn trim_expired(&self, cutoff_unix_ms: i64) -> Result<u64> {
        let retention = self.retention;
        self.writer
            .run(move |db| db.trim_expired(&retention, cutoff_unix_ms))
            .await?
    }
}

#[cfg(test)]
impl SqliteStore {
    /// Runs `f` on the writer's connection (test set-up: triggers, pragmas).
    async fn on_writer<T: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> T + Send + 'static,
    ) -> T {
        self.writer.run(move |db| f(&db.conn)).await.unwrap()
    }
}

/// What the tests of every part of the SQLite store use.
#[cfg(test)]
mod test_support {
    use serde_json::json;
    use tidewire_protocol::RawAppEvent;

    use super::SqliteStore;
    use crate::store::{Retention, WriteOp, WriteRequest};

    /// A store on a file in a fresh temporary directory (kept as long as the `TempDir`).
    pub(super) async fn file_store(retention: Retention) -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        (dir, SqliteStore::open(&url, retention).await.unwrap())
    }

    /// A put of `value` as item `id`.
    pub(super) fn put(room: &str, id: &str, value: serde_json::Value) -> WriteRequest {
        WriteRequest::new(
            room,
            WriteOp::Put {
                id: id.into(),
                value,
            },
        )
    }

    /// An application event.
    pub(super) fn publish(room: &str) -> WriteRequest {
        WriteRequest::new(
            room,
            WriteOp::Publish(RawAppEvent {
                event_type: "e".into(),
                data: json!({"n": 1}),
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::test_support::{file_store, put};
    use super::*;
    use crate::store::{test_suite, WriteOp};

    #[tokio::test]
    async fn suite_on_a_file() {
        let (_dir, store) = file_store(test_suite::RETENTION).await;
        test_suite::run(&store).await;
    }

    #[tokio::test]
    async fn suite_in_memory() {
        let store = SqliteStore::open("sqlite::memory:", test_suite::RETENTION)
            .await
            .unwrap();
        test_suite::run(&store).await;
    }

    #[tokio::test]
    async fn reopening_keeps_the_log_and_uses_wal() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        {
            let store = SqliteStore::open(&url, Retention::default()).await.unwrap();
            store
                .write(WriteRequest::new("r", WriteOp::Delete { id: "x".into() }))
                .await
                .unwrap_err();
            store.write(put("r", "x", json!({"a": 1}))).await.unwrap();
            let mode: String = store
                .on_writer(|c| c.query_row("PRAGMA journal_mode", [], |r| r.get(0)))
                .await
                .unwrap();
            assert_eq!(mode, "wal");
            let sync: i64 = store
                .on_writer(|c| c.query_row("PRAGMA synchronous", [], |r| r.get(0)))
                .await
                .unwrap();
            assert_eq!(sync, 1, "synchronous = NORMAL");
        }
        let store = SqliteStore::open(&url, Retention::default()).await.unwrap();
        assert_eq!(store.head("r").await.unwrap(), 1);
        let snap = store.snapshot("r").await.unwrap();
        assert_eq!(snap.items["x"].value, json!({"a": 1}));
    }

    #[tokio::test]
    async fn an_unopenable_database_is_an_error() {
        let err = SqliteStore::open("sqlite:///nonexistent-dir/sub/x.db", Retention::default())
            .await
            .err()
            .unwrap();
        assert!(matches!(err, Error::Config(_) | Error::Store(_)), "{err}");
    }
}
