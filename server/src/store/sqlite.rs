//! The SQLite [`Store`]: embedded, one file (or memory), created and migrated on first run,
//! WAL journal. Writes are serialised by one async mutex (SQLite has one writer anyway), so
//! the read-check-append of a write needs no retry loop. A batch of writes
//! ([`Store::write_batch`]) shares one transaction and one commit: the room's row is read
//! once, the events are inserted by one statement, and retention and the new head are
//! written once.
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

/// Most events inserted by one statement (4 bound values each, well under SQLite's limit).
const INSERT_ROWS: usize = 128;

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
            // An embedded database cannot drop a connection: no ping round trip per acquire.
            SqlitePoolOptions::new()
                .max_connections(4)
                .test_before_acquire(false)
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

/// A room's row as a batch found it and as the batch leaves it.
struct RoomHead {
    room: String,
    head: u64,
    trimmed_through: u64,
    appended: bool,
}

impl SqliteStore {
    /// One write in its own transaction (the caller holds the write lock).
    async fn write_one(&self, req: &WriteRequest) -> Result<Written> {
        self.write_all(std::slice::from_ref(req))
            .await?
            .pop()
            .unwrap_or_else(|| Err(Error::Internal("a write answered nothing".into())))
    }

    /// Applies `reqs` in order inside one `BEGIN IMMEDIATE` transaction and commits once.
    /// The outer error is a database failure that spoils the whole transaction (nothing was
    /// committed); the inner results are each write's own outcome. Every check a write makes
    /// (idempotency, If-Match, not found) happens before it changes anything, so a refused
    /// write leaves nothing behind in the transaction.
    async fn write_all(&self, reqs: &[WriteRequest]) -> Result<Vec<Result<Written>>> {
        let (ts, now_ms) = now();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let mut rooms: Vec<RoomHead> = Vec::new();
        let mut out = Vec::with_capacity(reqs.len());
        // The appended events, inserted together at the end: no write of the batch reads the
        // events table, only items and idempotency keys.
        let mut events: Vec<(usize, u64)> = Vec::new();
        for req in reqs {
            let i = match rooms.iter().position(|r| r.room == req.room) {
                Some(i) => i,
                None => {
                    let row = sqlx::query("SELECT head, trimmed_through FROM rooms WHERE room = ?")
                        .bind(&req.room)
                        .fetch_optional(&mut *tx)
                        .await?;
                    let (head, trimmed_through) = row
                        .map(|r| (Self::to_u64(r.get(0)), Self::to_u64(r.get(1))))
                        .unwrap_or((0, 0));
                    rooms.push(RoomHead {
                        room: req.room.clone(),
                        head,
                        trimmed_through,
                        appended: false,
                    });
                    rooms.len() - 1
                }
            };
            let result = self.apply(&mut tx, req, &ts, now_ms, rooms[i].head).await?;
            if let Ok(w) = &result {
                if !w.replayed {
                    rooms[i].head += 1;
                    rooms[i].appended = true;
                    events.push((out.len(), rooms[i].head));
                }
            }
            out.push(result);
        }
        for chunk in events.chunks(INSERT_ROWS) {
            let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO events (room, seq, ts_ms, envelope) ",
            );
            insert.push_values(chunk, |mut row, &(i, seq)| {
                let (room, json) = match &out[i] {
                    Ok(w) => (w.envelope.room.as_str(), w.json.as_str()),
                    Err(_) => unreachable!("only appended writes are listed"),
                };
                row.push_bind(room)
                    .push_bind(seq as i64)
                    .push_bind(now_ms)
                    .push_bind(json);
            });
            insert.build().execute(&mut *tx).await?;
        }
        for room in rooms.iter().filter(|r| r.appended) {
            self.finish_room(&mut tx, room, now_ms).await?;
        }
        tx.commit().await?;
        Ok(out)
    }

    /// One write inside the batch's transaction, the room's head being `head`: checks, the
    /// item row and the idempotency key (the event itself is inserted by the caller).
    async fn apply(
        &self,
        tx: &mut sqlx::SqliteConnection,
        req: &WriteRequest,
        ts: &str,
        now_ms: i64,
        head: u64,
    ) -> Result<Result<Written>> {
        let fingerprint = req.key.as_ref().map(|_| req.fingerprint());
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
                    return Ok(Err(Error::IdempotencyKeyReused(key.clone())));
                }
                let json: String = row.get(1);
                return Ok(Envelope::decode(&json)
                    .map_err(Error::from)
                    .map(|envelope| Written {
                        envelope,
                        json,
                        replayed: true,
                    }));
            }
        }
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
        let (event, change) = match plan::decide(req, stored) {
            Ok(decided) => decided,
            Err(err) => return Ok(Err(err)),
        };
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
                .bind(ts)
                .execute(&mut *tx)
                .await?;
            }
            ItemChange::Tombstone { id, version } => {
                sqlx::query(
                    "UPDATE items SET value = NULL, version = ?, updated_at = ?
                     WHERE room = ? AND id = ?",
                )
                .bind(*version as i64)
                .bind(ts)
                .bind(&req.room)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
            ItemChange::None => {}
        }
        let (envelope, json) = plan::envelope(req, seq, ts.to_owned(), event);
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
        Ok(Ok(Written {
            envelope,
            json,
            replayed: false,
        }))
    }

    /// After a batch appended to `room`: retention (at most `events`, nothing older than
    /// `secs`) and the new head.
    async fn finish_room(
        &self,
        tx: &mut sqlx::SqliteConnection,
        room: &RoomHead,
        now_ms: i64,
    ) -> Result<()> {
        let mut new_trimmed = room.trimmed_through;
        if room.head > self.retention.events {
            new_trimmed = new_trimmed.max(room.head - self.retention.events);
        }
        let cutoff = now_ms.saturating_sub((self.retention.secs as i64).saturating_mul(1000));
        // Cheap check first: only when the oldest retained event expired, find how many did.
        let oldest_ts: Option<i64> = sqlx::query_scalar(
            "SELECT ts_ms FROM events WHERE room = ? AND seq > ? ORDER BY seq LIMIT 1",
        )
        .bind(&room.room)
        .bind(new_trimmed as i64)
        .fetch_optional(&mut *tx)
        .await?;
        if oldest_ts.is_some_and(|ts| ts < cutoff) {
            let old: Option<i64> =
                sqlx::query_scalar("SELECT MAX(seq) FROM events WHERE room = ? AND ts_ms < ?")
                    .bind(&room.room)
                    .bind(cutoff)
                    .fetch_one(&mut *tx)
                    .await?;
            if let Some(old) = old {
                new_trimmed = new_trimmed.max(Self::to_u64(old));
            }
        }
        if new_trimmed > room.trimmed_through {
            sqlx::query("DELETE FROM events WHERE room = ? AND seq <= ?")
                .bind(&room.room)
                .bind(new_trimmed as i64)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "INSERT INTO rooms (room, head, trimmed_through) VALUES (?, ?, ?)
             ON CONFLICT (room) DO UPDATE SET head = excluded.head,
               trimmed_through = excluded.trimmed_through",
        )
        .bind(&room.room)
        .bind(room.head as i64)
        .bind(new_trimmed as i64)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn write(&self, req: WriteRequest) -> Result<Written> {
        let _guard = self.write_lock.lock().await;
        self.write_one(&req).await
    }

    /// One transaction, one commit for the whole batch. When the database fails it (a full
    /// disk, say) each write is tried again alone, so one bad write fails only itself.
    async fn write_batch(&self, reqs: Vec<WriteRequest>) -> Vec<Result<Written>> {
        let _guard = self.write_lock.lock().await;
        match self.write_all(&reqs).await {
            Ok(out) => out,
            Err(err) if reqs.len() == 1 => vec![Err(err)],
            Err(_) => {
                let mut out = Vec::with_capacity(reqs.len());
                for req in &reqs {
                    out.push(self.write_one(req).await);
                }
                out
            }
        }
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
