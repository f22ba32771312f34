//! The SQLite [`Store`]: embedded, one file (or memory), created and migrated on first run,
//! WAL journal. Writes are serialised by one async mutex (SQLite has one writer anyway), so
//! the read-check-append of a write needs no retry loop.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use tidewire_server::store::{sqlite::SqliteStore, Retention, Store};
//! let store = SqliteStore::open("sqlite::memory:", Retention::default()).await.unwrap();
//! assert_eq!(store.head("r").await.unwrap(), 0);
//! # });
//! ```

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, Row, SqlitePool};
use tidewire_protocol::{Envelope, ItemState, Snapshot};
use tokio::sync::Mutex;

use super::plan::{self, ItemChange, StoredItem};
use super::{now, Retention, StoredEvent, WriteOp, WriteRequest, Written};
use crate::{Error, Result, Store};

const MIGRATIONS: &[&str] = &[
    // version 1
    "CREATE TABLE IF NOT EXISTS rooms (
        room TEXT PRIMARY KEY,
        head INTEGER NOT NULL,
        trimmed_through INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS events (
        room TEXT NOT NULL,
        seq INTEGER NOT NULL,
        ts_ms INTEGER NOT NULL,
        envelope TEXT NOT NULL,
        PRIMARY KEY (room, seq)
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS events_ts ON events (ts_ms);
    CREATE TABLE IF NOT EXISTS items (
        room TEXT NOT NULL,
        id TEXT NOT NULL,
        value TEXT,
        version INTEGER NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (room, id)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS idempotency (
        room TEXT NOT NULL,
        key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        status INTEGER NOT NULL,
        response TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        PRIMARY KEY (room, key)
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS idempotency_created ON idempotency (created_ms);",
];

/// The SQLite store.
pub struct SqliteStore {
    pool: SqlitePool,
    retention: Retention,
    write_lock: Mutex<()>,
}

impl SqliteStore {
    /// Opens (creating and migrating) the database at `url`: `sqlite://path`, `sqlite:path`
    /// or `sqlite::memory:`.
    pub async fn open(url: &str, retention: Retention) -> Result<SqliteStore> {
        let memory = url.contains(":memory:") || url.contains("mode=memory");
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(|e| Error::Config(format!("bad database URL `{url}`: {e}")))?
            .create_if_missing(true)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(false);
        let opts = if memory {
            opts
        } else {
            opts.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
        };
        // An in-memory database lives as long as its one connection.
        let pool = if memory {
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
        } else {
            // A connection whose rollback failed (a full disk fails it too) would come back
            // still inside its transaction and every later write on it would fail: close it
            // instead, and let the pool open a fresh one.
            SqlitePoolOptions::new()
                .max_connections(4)
                .before_acquire(|conn, _| Box::pin(async move { Ok(!conn.is_in_transaction()) }))
        }
        .connect_with(opts)
        .await?;
        let store = SqliteStore {
            pool,
            retention,
            write_lock: Mutex::new(()),
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        let version: i64 = sqlx::query_scalar("PRAGMA user_version")
            .fetch_one(&mut *conn)
            .await?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
            sqlx::raw_sql(*sql).execute(&mut *conn).await?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "PRAGMA user_version = {}",
                i + 1
            )))
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }

    fn to_u64(v: i64) -> u64 {
        v.max(0) as u64
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn write(&self, req: WriteRequest) -> Result<Written> {
        let _guard = self.write_lock.lock().await;
        let (ts, now_ms) = now();
        let fingerprint = req.key.as_ref().map(|_| req.fingerprint());
        // IMMEDIATE takes the write lock up front, so a busy database waits (busy_timeout)
        // instead of failing when a deferred transaction upgrades from read to write.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;

        if let (Some(key), Some(fp)) = (&req.key, &fingerprint) {
            let ttl_ms = (self.retention.idempotency_secs as i64).saturating_mul(1000);
            let row = sqlx::query(
                "SELECT fingerprint, response FROM idempotency
                 WHERE room = ? AND key = ? AND created_ms >= ?",
            )
            .bind(&req.room)
            .bind(key)
            .bind(now_ms.saturating_sub(ttl_ms))
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = row {
                let stored_fp: String = row.get(0);
                if &stored_fp != fp {
                    return Err(Error::IdempotencyKeyReused(key.clone()));
                }
                let json: String = row.get(1);
                let envelope = Envelope::decode(&json)?;
                return Ok(Written {
                    envelope,
                    json,
                    replayed: true,
                });
            }
        }

        let room_row = sqlx::query("SELECT head, trimmed_through FROM rooms WHERE room = ?")
            .bind(&req.room)
            .fetch_optional(&mut *tx)
            .await?;
        let (head, trimmed_through) = room_row
            .map(|r| (Self::to_u64(r.get(0)), Self::to_u64(r.get(1))))
            .unwrap_or((0, 0));
        let seq = head + 1;

        let stored = match &req.op {
            WriteOp::Put { id, .. } | WriteOp::Delete { id } => {
                sqlx::query("SELECT value, version FROM items WHERE room = ? AND id = ?")
                    .bind(&req.room)
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|r| StoredItem {
                        value: r.get(0),
                        version: Self::to_u64(r.get(1)),
                    })
            }
            WriteOp::Publish(_) => None,
        };
        let (event, change) = plan::decide(&req, stored)?;
        match &change {
            ItemChange::Upsert {
                id,
                value_json,
                version,
            } => {
                sqlx::query(
                    "INSERT INTO items (room, id, value, version, updated_at)
                     VALUES (?, ?, ?, ?, ?)
                     ON CONFLICT (room, id) DO UPDATE SET
                       value = excluded.value, version = excluded.version,
                       updated_at = excluded.updated_at",
                )
                .bind(&req.room)
                .bind(id)
                .bind(value_json)
                .bind(*version as i64)
                .bind(&ts)
                .execute(&mut *tx)
                .await?;
            }
            ItemChange::Tombstone { id, version } => {
                sqlx::query(
                    "UPDATE items SET value = NULL, version = ?, updated_at = ?
                     WHERE room = ? AND id = ?",
                )
                .bind(*version as i64)
                .bind(&ts)
                .bind(&req.room)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
            ItemChange::None => {}
        }
        let (envelope, json) = plan::envelope(&req, seq, ts, event);
        sqlx::query("INSERT INTO events (room, seq, ts_ms, envelope) VALUES (?, ?, ?, ?)")
            .bind(&req.room)
            .bind(seq as i64)
            .bind(now_ms)
            .bind(&json)
            .execute(&mut *tx)
            .await?;

        // Retention for this room: at most `events`, nothing older than `secs`.
        let mut new_trimmed = trimmed_through;
        if seq > self.retention.events {
            new_trimmed = new_trimmed.max(seq - self.retention.events);
        }
        let cutoff = now_ms.saturating_sub((self.retention.secs as i64).saturating_mul(1000));
        // Cheap check first: only when the oldest retained event expired, find how many did.
        let oldest_ts: Option<i64> = sqlx::query_scalar(
            "SELECT ts_ms FROM events WHERE room = ? AND seq > ? ORDER BY seq LIMIT 1",
        )
        .bind(&req.room)
        .bind(new_trimmed as i64)
        .fetch_optional(&mut *tx)
        .await?;
        if oldest_ts.is_some_and(|ts| ts < cutoff) {
            let old: Option<i64> =
                sqlx::query_scalar("SELECT MAX(seq) FROM events WHERE room = ? AND ts_ms < ?")
                    .bind(&req.room)
                    .bind(cutoff)
                    .fetch_one(&mut *tx)
                    .await?;
            if let Some(old) = old {
                new_trimmed = new_trimmed.max(Self::to_u64(old));
            }
        }
        if new_trimmed > trimmed_through {
            sqlx::query("DELETE FROM events WHERE room = ? AND seq <= ?")
                .bind(&req.room)
                .bind(new_trimmed as i64)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "INSERT INTO rooms (room, head, trimmed_through) VALUES (?, ?, ?)
             ON CONFLICT (room) DO UPDATE SET head = excluded.head,
               trimmed_through = excluded.trimmed_through",
        )
        .bind(&req.room)
        .bind(seq as i64)
        .bind(new_trimmed as i64)
        .execute(&mut *tx)
        .await?;

        if let (Some(key), Some(fp)) = (&req.key, &fingerprint) {
            sqlx::query(
                "INSERT OR REPLACE INTO idempotency (room, key, fingerprint, status, response, created_ms)
                 VALUES (?, ?, ?, 200, ?, ?)",
            )
            .bind(&req.room)
            .bind(key)
            .bind(fp)
            .bind(&json)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Written {
            envelope,
            json,
            replayed: false,
        })
    }

    async fn snapshot(&self, room: &str) -> Result<Snapshot> {
        let mut tx = self.pool.begin().await?;
        let head: Option<i64> = sqlx::query_scalar("SELECT head FROM rooms WHERE room = ?")
            .bind(room)
            .fetch_optional(&mut *tx)
            .await?;
        let rows = sqlx::query(
            "SELECT id, value, version, updated_at FROM items
             WHERE room = ? AND value IS NOT NULL ORDER BY id",
        )
        .bind(room)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut items = std::collections::BTreeMap::new();
        for r in rows {
            let value: String = r.get(1);
            items.insert(
                r.get::<String, _>(0),
                ItemState {
                    value: serde_json::from_str(&value)
                        .map_err(|e| Error::Internal(format!("stored item is not JSON: {e}")))?,
                    version: Self::to_u64(r.get(2)),
                    updated_at: r.get(3),
                },
            );
        }
        Ok(Snapshot {
            room: room.to_owned(),
            seq: head.map_or(0, Self::to_u64),
            items,
        })
    }

    async fn head(&self, room: &str) -> Result<u64> {
        let head: Option<i64> = sqlx::query_scalar("SELECT head FROM rooms WHERE room = ?")
            .bind(room)
            .fetch_optional(&self.pool)
            .await?;
        Ok(head.map_or(0, Self::to_u64))
    }

    async fn read(&self, room: &str, after: u64, limit: usize) -> Result<Vec<StoredEvent>> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query("SELECT head, trimmed_through FROM rooms WHERE room = ?")
            .bind(room)
            .fetch_optional(&mut *tx)
            .await?;
        let (head, trimmed) = row
            .map(|r| (Self::to_u64(r.get(0)), Self::to_u64(r.get(1))))
            .unwrap_or((0, 0));
        if after > 0 && after < trimmed && after < head {
            return Err(Error::HistoryTrimmed { after, head });
        }
        let rows = sqlx::query(
            "SELECT seq, envelope FROM events WHERE room = ? AND seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(room)
        .bind(after.max(trimmed).min(i64::MAX as u64) as i64)
        .bind(limit.min(i64::MAX as usize) as i64)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows
            .into_iter()
            .map(|r| StoredEvent {
                seq: Self::to_u64(r.get(0)),
                json: r.get(1),
            })
            .collect())
    }

    async fn trim_expired(&self, cutoff_unix_ms: i64) -> Result<u64> {
        let _guard = self.write_lock.lock().await;
        let (_, now_ms) = now();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let rows = sqlx::query("SELECT room, MAX(seq) FROM events WHERE ts_ms < ? GROUP BY room")
            .bind(cutoff_unix_ms)
            .fetch_all(&mut *tx)
            .await?;
        let mut removed = 0;
        for r in rows {
            let room: String = r.get(0);
            let max: i64 = r.get(1);
            removed += sqlx::query("DELETE FROM events WHERE room = ? AND seq <= ?")
                .bind(&room)
                .bind(max)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            sqlx::query(
                "UPDATE rooms SET trimmed_through = MAX(trimmed_through, ?) WHERE room = ?",
            )
            .bind(max)
            .bind(&room)
            .execute(&mut *tx)
            .await?;
        }
        let ttl_ms = (self.retention.idempotency_secs as i64).saturating_mul(1000);
        sqlx::query("DELETE FROM idempotency WHERE created_ms < ?")
            .bind(now_ms.saturating_sub(ttl_ms))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_suite;

    async fn file_store(retention: Retention) -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        (dir, SqliteStore::open(&url, retention).await.unwrap())
    }

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
            store
                .write(WriteRequest::new(
                    "r",
                    WriteOp::Put {
                        id: "x".into(),
                        value: serde_json::json!({"a": 1}),
                    },
                ))
                .await
                .unwrap();
            let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
                .fetch_one(&store.pool)
                .await
                .unwrap();
            assert_eq!(mode, "wal");
            store.pool.close().await;
        }
        let store = SqliteStore::open(&url, Retention::default()).await.unwrap();
        assert_eq!(store.head("r").await.unwrap(), 1);
        let snap = store.snapshot("r").await.unwrap();
        assert_eq!(snap.items["x"].value, serde_json::json!({"a": 1}));
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

#[cfg(test)]
mod concurrency_tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fifty_concurrent_retries_append_one_event() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("c.db").display());
        let store = SqliteStore::open(&url, Retention::default()).await.unwrap();
        crate::store::test_suite::run_concurrent(Arc::new(store)).await;
        let mem = SqliteStore::open("sqlite::memory:", Retention::default())
            .await
            .unwrap();
        crate::store::test_suite::run_concurrent(Arc::new(mem)).await;
    }
}
