//! The PostgreSQL [`Store`], for several nodes sharing one database. Tables are created and
//! migrated on start (under an advisory lock, so nodes starting together migrate once).
//!
//! Every write runs in one transaction that first locks the room's row
//! (`SELECT … FOR UPDATE`): writers of one room on any node queue on that lock, so `seq` stays
//! contiguous, and the idempotency check and `If-Match` are read under it, so they hold across
//! nodes too.
//!
//! ```no_run
//! # async fn f() -> tidewire_server::Result<()> {
//! use tidewire_server::store::{postgres::PostgresStore, Retention, Store};
//! let store = PostgresStore::open("postgres://root@127.0.0.1/tidewire", Retention::default()).await?;
//! assert_eq!(store.head("r").await?, 0);
//! # Ok(()) }
//! ```

use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Postgres, Row, Transaction};
use tidewire_protocol::{Envelope, ItemState, Snapshot};

use super::plan::{self, ItemChange, StoredItem};
use super::{to_i64, to_u64, Retention, StoreError, StoredEvent, WriteOp, WriteRequest, Written};
use crate::clock::now;
use crate::{Error, Result, Store};

/// An arbitrary constant: the advisory lock held while migrating.
const MIGRATION_LOCK: i64 = 0x7469_6465_7769_7265;

const MIGRATIONS: &[&str] = &[
    // version 1
    "CREATE TABLE IF NOT EXISTS tidewire_rooms (
        room TEXT PRIMARY KEY,
        head BIGINT NOT NULL,
        trimmed_through BIGINT NOT NULL DEFAULT 0
    );
    CREATE TABLE IF NOT EXISTS tidewire_events (
        room TEXT NOT NULL,
        seq BIGINT NOT NULL,
        ts_ms BIGINT NOT NULL,
        envelope TEXT NOT NULL,
        PRIMARY KEY (room, seq)
    );
    CREATE INDEX IF NOT EXISTS tidewire_events_ts ON tidewire_events (ts_ms);
    CREATE TABLE IF NOT EXISTS tidewire_items (
        room TEXT NOT NULL,
        id TEXT NOT NULL,
        value TEXT,
        version BIGINT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (room, id)
    );
    CREATE TABLE IF NOT EXISTS tidewire_idempotency (
        room TEXT NOT NULL,
        key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        status INTEGER NOT NULL,
        response TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        PRIMARY KEY (room, key)
    );
    CREATE INDEX IF NOT EXISTS tidewire_idempotency_created ON tidewire_idempotency (created_ms);",
];

/// PostgreSQL's errors, as the rest of the server sees them: the store is unavailable.
impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Error {
        Error::Store(StoreError::new("postgres", err))
    }
}

/// The PostgreSQL store.
pub struct PostgresStore {
    pool: PgPool,
    retention: Retention,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user@host:port/db`), creating and migrating the tables.
    pub async fn open(url: &str, retention: Retention) -> Result<PostgresStore> {
        let opts: PgConnectOptions = url
            .parse()
            .map_err(|e| Error::Config(format!("bad database URL `{url}`: {e}")))?;
        // One direct connection first: an unreachable server fails now, not after the pool's
        // acquire timeout.
        let first = tokio::time::timeout(Duration::from_secs(5), PgConnection::connect_with(&opts))
            .await
            .map_err(|_| Error::Config(format!("PostgreSQL at `{url}` did not answer")))??;
        first.close().await?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await?;
        let store = PostgresStore { pool, retention };
        store.migrate().await?;
        Ok(store)
    }

    /// The connection pool (for embedding and tests).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn migrate(&self) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await?;
        sqlx::raw_sql("CREATE TABLE IF NOT EXISTS tidewire_schema (version INTEGER NOT NULL)")
            .execute(&mut *tx)
            .await?;
        let version: Option<i32> = sqlx::query_scalar("SELECT MAX(version) FROM tidewire_schema")
            .fetch_one(&mut *tx)
            .await?;
        for (i, sql) in MIGRATIONS
            .iter()
            .enumerate()
            .skip(version.unwrap_or(0).max(0) as usize)
        {
            sqlx::raw_sql(*sql).execute(&mut *tx).await?;
            sqlx::query("INSERT INTO tidewire_schema (version) VALUES ($1)")
                .bind((i + 1) as i32)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn snapshot_tx(&self) -> Result<Transaction<'static, Postgres>> {
        let mut tx = self.pool.begin().await?;
        sqlx::raw_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn write(&self, req: WriteRequest) -> Result<Written> {
        let (ts, now_ms) = now();
        let fingerprint = req.key.as_ref().map(|_| req.fingerprint());
        let mut tx = self.pool.begin().await?;

        // The room's row is the lock every writer of the room queues on, on every node.
        sqlx::query(
            "INSERT INTO tidewire_rooms (room, head, trimmed_through) VALUES ($1, 0, 0)
             ON CONFLICT (room) DO NOTHING",
        )
        .bind(&req.room)
        .execute(&mut *tx)
        .await?;
        let room_row = sqlx::query(
            "SELECT head, trimmed_through FROM tidewire_rooms WHERE room = $1 FOR UPDATE",
        )
        .bind(&req.room)
        .fetch_one(&mut *tx)
        .await?;
        let head = to_u64(room_row.get(0));
        let trimmed_through = to_u64(room_row.get(1));

        if let (Some(key), Some(fp)) = (&req.key, &fingerprint) {
            let ttl_ms = (self.retention.idempotency_secs as i64).saturating_mul(1000);
            let row = sqlx::query(
                "SELECT fingerprint, response FROM tidewire_idempotency
                 WHERE room = $1 AND key = $2 AND created_ms >= $3",
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
        let seq = head + 1;

        let stored = match &req.op {
            WriteOp::Put { id, .. } | WriteOp::Delete { id } => {
                sqlx::query("SELECT value, version FROM tidewire_items WHERE room = $1 AND id = $2")
                    .bind(&req.room)
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|r| StoredItem {
                        value: r.get(0),
                        version: to_u64(r.get(1)),
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
                    "INSERT INTO tidewire_items (room, id, value, version, updated_at)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (room, id) DO UPDATE SET
                       value = excluded.value, version = excluded.version,
                       updated_at = excluded.updated_at",
                )
                .bind(&req.room)
                .bind(id)
                .bind(value_json)
                .bind(to_i64(*version))
                .bind(&ts)
                .execute(&mut *tx)
                .await?;
            }
            ItemChange::Tombstone { id, version } => {
                sqlx::query(
                    "UPDATE tidewire_items SET value = NULL, version = $1, updated_at = $2
                     WHERE room = $3 AND id = $4",
                )
                .bind(to_i64(*version))
                .bind(&ts)
                .bind(&req.room)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
            ItemChange::None => {}
        }
        let (envelope, json) = plan::envelope(&req, seq, ts, event);
        sqlx::query(
            "INSERT INTO tidewire_events (room, seq, ts_ms, envelope) VALUES ($1, $2, $3, $4)",
        )
        .bind(&req.room)
        .bind(to_i64(seq))
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
        let oldest_ts: Option<i64> = sqlx::query_scalar(
            "SELECT ts_ms FROM tidewire_events WHERE room = $1 AND seq > $2 ORDER BY seq LIMIT 1",
        )
        .bind(&req.room)
        .bind(to_i64(new_trimmed))
        .fetch_optional(&mut *tx)
        .await?;
        if oldest_ts.is_some_and(|ts| ts < cutoff) {
            let old: Option<i64> = sqlx::query_scalar(
                "SELECT MAX(seq) FROM tidewire_events WHERE room = $1 AND ts_ms < $2",
            )
            .bind(&req.room)
            .bind(cutoff)
            .fetch_one(&mut *tx)
            .await?;
            if let Some(old) = old {
                new_trimmed = new_trimmed.max(to_u64(old));
            }
        }
        if new_trimmed > trimmed_through {
            sqlx::query("DELETE FROM tidewire_events WHERE room = $1 AND seq <= $2")
                .bind(&req.room)
                .bind(to_i64(new_trimmed))
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("UPDATE tidewire_rooms SET head = $1, trimmed_through = $2 WHERE room = $3")
            .bind(to_i64(seq))
            .bind(to_i64(new_trimmed))
            .bind(&req.room)
            .execute(&mut *tx)
            .await?;

        if let (Some(key), Some(fp)) = (&req.key, &fingerprint) {
            sqlx::query(
                "INSERT INTO tidewire_idempotency (room, key, fingerprint, status, response, created_ms)
                 VALUES ($1, $2, $3, 200, $4, $5)
                 ON CONFLICT (room, key) DO UPDATE SET fingerprint = excluded.fingerprint,
                   status = excluded.status, response = excluded.response,
                   created_ms = excluded.created_ms",
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
        let mut tx = self.snapshot_tx().await?;
        let head: Option<i64> =
            sqlx::query_scalar("SELECT head FROM tidewire_rooms WHERE room = $1")
                .bind(room)
                .fetch_optional(&mut *tx)
                .await?;
        let rows = sqlx::query(
            "SELECT id, value, version, updated_at FROM tidewire_items
             WHERE room = $1 AND value IS NOT NULL ORDER BY id",
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
                    version: to_u64(r.get(2)),
                    updated_at: r.get(3),
                },
            );
        }
        Ok(Snapshot {
            room: room.to_owned(),
            seq: head.map_or(0, to_u64),
            items,
        })
    }

    async fn head(&self, room: &str) -> Result<u64> {
        let head: Option<i64> =
            sqlx::query_scalar("SELECT head FROM tidewire_rooms WHERE room = $1")
                .bind(room)
                .fetch_optional(&self.pool)
                .await?;
        Ok(head.map_or(0, to_u64))
    }

    async fn read(&self, room: &str, after: u64, limit: usize) -> Result<Vec<StoredEvent>> {
        let mut tx = self.snapshot_tx().await?;
        let row = sqlx::query("SELECT head, trimmed_through FROM tidewire_rooms WHERE room = $1")
            .bind(room)
            .fetch_optional(&mut *tx)
            .await?;
        let (head, trimmed) = row
            .map(|r| (to_u64(r.get(0)), to_u64(r.get(1))))
            .unwrap_or((0, 0));
        if after > 0 && after < trimmed && after < head {
            return Err(Error::HistoryTrimmed { after, head });
        }
        let rows = sqlx::query(
            "SELECT seq, envelope FROM tidewire_events WHERE room = $1 AND seq > $2
             ORDER BY seq LIMIT $3",
        )
        .bind(room)
        .bind(to_i64(after.max(trimmed)))
        .bind(limit.min(i64::MAX as usize) as i64)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows
            .into_iter()
            .map(|r| StoredEvent {
                seq: to_u64(r.get(0)),
                json: r.get(1),
            })
            .collect())
    }

    async fn trim_expired(&self, cutoff_unix_ms: i64) -> Result<u64> {
        let (_, now_ms) = now();
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "SELECT room, MAX(seq) FROM tidewire_events WHERE ts_ms < $1 GROUP BY room ORDER BY room",
        )
        .bind(cutoff_unix_ms)
        .fetch_all(&mut *tx)
        .await?;
        let mut removed = 0;
        for r in rows {
            let room: String = r.get(0);
            let max: i64 = r.get(1);
            // Lock the room first, as writers do, so the two never wait on each other in turn.
            sqlx::query("SELECT head FROM tidewire_rooms WHERE room = $1 FOR UPDATE")
                .bind(&room)
                .execute(&mut *tx)
                .await?;
            removed += sqlx::query("DELETE FROM tidewire_events WHERE room = $1 AND seq <= $2")
                .bind(&room)
                .bind(max)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            sqlx::query(
                "UPDATE tidewire_rooms SET trimmed_through = GREATEST(trimmed_through, $1)
                 WHERE room = $2",
            )
            .bind(max)
            .bind(&room)
            .execute(&mut *tx)
            .await?;
        }
        let ttl_ms = (self.retention.idempotency_secs as i64).saturating_mul(1000);
        sqlx::query("DELETE FROM tidewire_idempotency WHERE created_ms < $1")
            .bind(now_ms.saturating_sub(ttl_ms))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(removed)
    }
}

/// Test helpers: a throwaway database on the local PostgreSQL.
#[cfg(test)]
pub(crate) mod testing {
    use sqlx::Connection;

    /// The server the tests use: `TIDEWIRE_TEST_POSTGRES` or the local default.
    pub fn admin_url() -> String {
        std::env::var("TIDEWIRE_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/postgres".into())
    }

    async fn reachable(url: &str) -> bool {
        matches!(
            tokio::time::timeout(
                std::time::Duration::from_secs(3),
                sqlx::PgConnection::connect(url)
            )
            .await,
            Ok(Ok(_))
        )
    }

    /// Makes sure PostgreSQL answers: starts the local cluster when it does not (as root),
    /// and panics loudly when it still does not, unless `TIDEWIRE_SKIP_SERVICES=1`, in which
    /// case it prints `SKIPPED: …` and answers `false`.
    pub async fn ensure() -> bool {
        let url = admin_url();
        crate::testing::ensure_service(
            "PostgreSQL",
            &url,
            "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
            || reachable(&url),
        )
        .await
    }

    /// A fresh database; answers its URL. Drop it with [`drop_database`].
    pub async fn create_database() -> (String, String) {
        let admin = admin_url();
        let name = format!(
            "tidewire_test_{}",
            ulid::Ulid::generate().to_string().to_lowercase()
        );
        let mut conn = sqlx::PgConnection::connect(&admin).await.expect("connect");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create database");
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        (name.clone(), format!("{base}/{name}"))
    }

    /// Drops a database made by [`create_database`].
    pub async fn drop_database(name: &str) {
        let mut conn = sqlx::PgConnection::connect(&admin_url())
            .await
            .expect("connect");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await
        .expect("drop database");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::test_suite;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn suite_on_postgres() {
        if !testing::ensure().await {
            return;
        }
        let (name, url) = testing::create_database().await;
        let store = PostgresStore::open(&url, test_suite::RETENTION)
            .await
            .unwrap();
        test_suite::run(&store).await;
        store.pool.close().await;
        // Two "nodes" on one database: the concurrency test against each, interleaved.
        let a = PostgresStore::open(&url, Retention::default())
            .await
            .unwrap();
        test_suite::run_concurrent(Arc::new(a)).await;
        testing::drop_database(&name).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_nodes_keep_seq_contiguous_and_keys_once() {
        if !testing::ensure().await {
            return;
        }
        let (name, url) = testing::create_database().await;
        let (a, b) = tokio::join!(
            PostgresStore::open(&url, Retention::default()),
            PostgresStore::open(&url, Retention::default())
        );
        let (a, b) = (Arc::new(a.unwrap()), Arc::new(b.unwrap()));
        let mut tasks = Vec::new();
        for i in 0..40u32 {
            let s = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move {
                // Every fifth write is one request with one key, sent to both nodes.
                let req = if i % 5 == 0 {
                    WriteRequest::new(
                        "r",
                        WriteOp::Put {
                            id: "k".into(),
                            value: serde_json::json!("once"),
                        },
                    )
                    .key("same")
                    .if_match(0)
                } else {
                    WriteRequest::new(
                        "r",
                        WriteOp::Put {
                            id: format!("i{}", i % 4),
                            value: serde_json::json!(i),
                        },
                    )
                };
                s.write(req).await
            }));
        }
        let mut appended = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(w) if !w.replayed => appended += 1,
                Ok(_) => {}
                Err(e) => panic!("{e}"),
            }
        }
        let events = a.read("r", 0, 1000).await.unwrap();
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=appended).collect::<Vec<u64>>());
        assert_eq!(b.head("r").await.unwrap(), appended);
        let keyed = events
            .iter()
            .filter(|e| e.envelope().unwrap().key.as_deref() == Some("same"))
            .count();
        assert_eq!(keyed, 1, "one key, one event, across nodes");
        a.pool.close().await;
        b.pool.close().await;
        testing::drop_database(&name).await;
    }

    #[tokio::test]
    async fn a_bad_url_is_a_config_error() {
        let err = PostgresStore::open("postgres://[bad", Retention::default())
            .await
            .err()
            .unwrap();
        assert!(matches!(err, Error::Config(_)), "{err}");
    }
}
