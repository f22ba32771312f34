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
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use tidewire_server::store::{sqlite::SqliteStore, Retention, Store};
//! let store = SqliteStore::open("sqlite::memory:", Retention::default()).await.unwrap();
//! assert_eq!(store.head("r").await.unwrap(), 0);
//! # });
//! ```

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use tidewire_protocol::{Envelope, ItemState, Snapshot};
use tokio::sync::oneshot;

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

/// How long a connection waits for a lock held by another connection (the reader's
/// checkpoint, another process) before failing with `database is locked`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Prepared statements kept per connection: every statement the store runs, with room to spare.
const STATEMENT_CACHE: usize = 64;

/// Where the database lives.
#[derive(Debug, Clone, PartialEq)]
enum Location {
    /// One in-memory database, living as long as its one connection.
    Memory,
    /// A file: a path, or a `file:` URI when the URL carried query parameters.
    File(String),
}

impl Location {
    /// `sqlite://path`, `sqlite:path`, `sqlite::memory:`; query parameters (`?mode=ro`) are
    /// passed on to SQLite as a `file:` URI, `mode=memory` means in memory.
    fn parse(url: &str) -> Result<Location> {
        let rest = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .ok_or_else(|| Error::Config(format!("bad database URL `{url}`: not sqlite:")))?;
        let (path, query) = match rest.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (rest, None),
        };
        let memory_mode = query.is_some_and(|q| q.split('&').any(|kv| kv == "mode=memory"));
        if path == ":memory:" || memory_mode {
            return Ok(Location::Memory);
        }
        if path.is_empty() {
            return Err(Error::Config(format!("bad database URL `{url}`: no path")));
        }
        Ok(Location::File(match query {
            Some(query) => format!("file:{path}?{query}"),
            None => path.to_owned(),
        }))
    }
}

/// What a connection is for.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    /// Writes, migrations, trimming (and everything, in memory).
    Writer,
    /// `read`, `head`, `snapshot` of a file database.
    Reader,
}

/// A connection and how to open it again; owned by its thread.
struct Db {
    conn: Connection,
    location: Location,
    role: Role,
}

impl Db {
    fn open(location: Location, role: Role) -> Result<Db> {
        let conn = Self::connect(&location, role)?;
        Ok(Db {
            conn,
            location,
            role,
        })
    }

    fn connect(location: &Location, role: Role) -> Result<Connection> {
        let conn = match location {
            Location::Memory => Connection::open_in_memory()?,
            Location::File(path) => Connection::open(path)?,
        };
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        conn.pragma_update(None, "foreign_keys", false)?;
        if matches!(location, Location::File(_)) {
            match role {
                Role::Writer => {
                    let mode: String =
                        conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
                    if !mode.eq_ignore_ascii_case("wal") {
                        tracing::warn!(%mode, "SQLite did not switch to the WAL journal");
                    }
                    conn.pragma_update(None, "synchronous", "NORMAL")?;
                }
                Role::Reader => conn.pragma_update(None, "query_only", true)?,
            }
        }
        Ok(conn)
    }

    /// Runs `f` inside a transaction opened by `begin` (`BEGIN` or `BEGIN IMMEDIATE`) and
    /// commits when it succeeds. On any failure (of `f` or of the commit) the transaction is
    /// rolled back, and the connection is left outside any transaction.
    fn transaction<T>(
        &mut self,
        begin: &str,
        f: impl FnOnce(&Connection) -> Result<T>,
    ) -> Result<T> {
        self.settle();
        self.conn.prepare_cached(begin)?.execute([])?;
        let out = f(&self.conn).and_then(|v| {
            self.conn.prepare_cached("COMMIT")?.execute([])?;
            Ok(v)
        });
        if out.is_err() {
            self.settle();
        }
        out
    }

    /// Leaves the connection outside any transaction: rolls back one left open by a failure,
    /// and when even the rollback fails (a full disk can fail it), replaces the connection by
    /// a fresh one (closing the old one ends its transaction). In memory there is nothing to
    /// reopen: the database is the connection.
    fn settle(&mut self) {
        if self.conn.is_autocommit() {
            return;
        }
        if let Err(err) = self.conn.execute_batch("ROLLBACK") {
            tracing::warn!(%err, "SQLite rollback failed");
        }
        if self.conn.is_autocommit() || self.location == Location::Memory {
            return;
        }
        match Self::connect(&self.location, self.role) {
            Ok(fresh) => {
                let old = std::mem::replace(&mut self.conn, fresh);
                if let Err((_, err)) = old.close() {
                    tracing::warn!(%err, "closing a SQLite connection stuck in a transaction");
                }
                tracing::warn!("replaced a SQLite connection stuck in a failed transaction");
            }
            Err(err) => tracing::warn!(%err, "could not reopen the SQLite database"),
        }
    }

    fn migrate(&mut self) -> Result<()> {
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
            self.conn.execute_batch(sql)?;
            self.conn
                .pragma_update(None, "user_version", (i + 1) as i64)?;
        }
        Ok(())
    }
}

/// A job for a connection's thread. It answers through its own channel.
type Job = Box<dyn FnOnce(&mut Db) + Send>;

/// The sending end of a connection's thread. The thread stops when every sender is gone
/// (the store dropped), closing its connection.
#[derive(Clone)]
struct Worker {
    jobs: mpsc::Sender<Job>,
}

fn stopped() -> Error {
    Error::Internal("the SQLite thread stopped".into())
}

impl Worker {
    /// Starts a thread named `name` that opens its connection with `open`, then runs jobs in
    /// the order sent. Answers once the connection is open (or with why it is not).
    async fn spawn(
        name: &str,
        open: impl FnOnce() -> Result<Db> + Send + 'static,
    ) -> Result<Worker> {
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (ready, opened) = oneshot::channel();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let mut db = match open() {
                    Ok(db) => {
                        let _ = ready.send(Ok(()));
                        db
                    }
                    Err(err) => {
                        let _ = ready.send(Err(err));
                        return;
                    }
                };
                while let Ok(job) = inbox.recv() {
                    // A panicking job drops its answer (its caller gets an error); the thread
                    // and its connection stay for the next job.
                    if catch_unwind(AssertUnwindSafe(|| job(&mut db))).is_err() {
                        tracing::error!("a SQLite job panicked");
                        db.settle();
                    }
                }
            })
            .map_err(|e| Error::Internal(format!("cannot start the SQLite thread: {e}")))?;
        opened.await.map_err(|_| stopped())??;
        Ok(Worker { jobs })
    }

    /// Runs `job` on the thread: one hop there, one answer back.
    async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Db) -> T + Send + 'static,
    ) -> Result<T> {
        let (answer, answered) = oneshot::channel();
        self.jobs
            .send(Box::new(move |db: &mut Db| {
                let _ = answer.send(job(db));
            }))
            .map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())
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

fn to_u64(v: i64) -> u64 {
    v.max(0) as u64
}

fn to_i64(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

/// A room's row as a batch found it and as the batch leaves it.
struct RoomHead {
    room: String,
    head: u64,
    trimmed_through: u64,
    appended: bool,
}

/// The writes, run on the writer's thread.
impl Db {
    /// One transaction and one commit for the whole batch. When the database fails it (a full
    /// disk, say) each write is tried again alone, so one bad write fails only itself.
    fn write_batch(
        &mut self,
        retention: &Retention,
        reqs: &[WriteRequest],
    ) -> Vec<Result<Written>> {
        match self.write_all(retention, reqs) {
            Ok(out) => out,
            Err(err) if reqs.len() == 1 => vec![Err(err)],
            Err(_) => reqs
                .iter()
                .map(|req| self.write_one(retention, req))
                .collect(),
        }
    }

    /// One write in its own transaction.
    fn write_one(&mut self, retention: &Retention, req: &WriteRequest) -> Result<Written> {
        self.write_all(retention, std::slice::from_ref(req))?
            .pop()
            .unwrap_or_else(|| Err(Error::Internal("a write answered nothing".into())))
    }

    /// Applies `reqs` in order inside one `BEGIN IMMEDIATE` transaction and commits once.
    /// The outer error is a database failure that spoils the whole transaction (nothing was
    /// committed); the inner results are each write's own outcome. Every check a write makes
    /// (idempotency, If-Match, not found) happens before it changes anything, so a refused
    /// write leaves nothing behind in the transaction.
    fn write_all(
        &mut self,
        retention: &Retention,
        reqs: &[WriteRequest],
    ) -> Result<Vec<Result<Written>>> {
        // IMMEDIATE takes the write lock up front, so a busy database waits (busy timeout)
        // instead of failing when a deferred transaction upgrades from read to write.
        self.transaction("BEGIN IMMEDIATE", |conn| {
            let (ts, now_ms) = now();
            let mut rooms: Vec<RoomHead> = Vec::new();
            let mut out = Vec::with_capacity(reqs.len());
            for req in reqs {
                let i = match rooms.iter().position(|r| r.room == req.room) {
                    Some(i) => i,
                    None => {
                        let (head, trimmed_through) = conn
                            .prepare_cached(
                                "SELECT head, trimmed_through FROM rooms WHERE room = ?",
                            )?
                            .query_row([&req.room], |r| {
                                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
                            })
                            .optional()?
                            .map_or((0, 0), |(h, t)| (to_u64(h), to_u64(t)));
                        rooms.push(RoomHead {
                            room: req.room.clone(),
                            head,
                            trimmed_through,
                            appended: false,
                        });
                        rooms.len() - 1
                    }
                };
                let result = apply(conn, retention, req, &ts, now_ms, rooms[i].head)?;
                if let Ok(w) = &result {
                    if !w.replayed {
                        rooms[i].head += 1;
                        rooms[i].appended = true;
                        conn.prepare_cached(
                            "INSERT INTO events (room, seq, ts_ms, envelope) VALUES (?, ?, ?, ?)",
                        )?
                        .execute(params![
                            req.room,
                            to_i64(rooms[i].head),
                            now_ms,
                            w.json
                        ])?;
                    }
                }
                out.push(result);
            }
            for room in rooms.iter().filter(|r| r.appended) {
                finish_room(conn, retention, room, now_ms)?;
            }
            Ok(out)
        })
    }

    /// Removes events older than the cutoff in every room and expired idempotency keys.
    fn trim_expired(&mut self, retention: &Retention, cutoff_unix_ms: i64) -> Result<u64> {
        self.transaction("BEGIN IMMEDIATE", |conn| {
            let (_, now_ms) = now();
            let expired: Vec<(String, i64)> = conn
                .prepare_cached("SELECT room, MAX(seq) FROM events WHERE ts_ms < ? GROUP BY room")?
                .query_map([cutoff_unix_ms], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let mut removed = 0;
            for (room, max) in expired {
                removed += conn
                    .prepare_cached("DELETE FROM events WHERE room = ? AND seq <= ?")?
                    .execute(params![room, max])? as u64;
                conn.prepare_cached(
                    "UPDATE rooms SET trimmed_through = MAX(trimmed_through, ?) WHERE room = ?",
                )?
                .execute(params![max, room])?;
            }
            let ttl_ms = (retention.idempotency_secs as i64).saturating_mul(1000);
            conn.prepare_cached("DELETE FROM idempotency WHERE created_ms < ?")?
                .execute([now_ms.saturating_sub(ttl_ms)])?;
            Ok(removed)
        })
    }
}

/// One write inside the batch's transaction, the room's head being `head`: checks, the item
/// row and the idempotency key (the caller inserts the event itself).
fn apply(
    conn: &Connection,
    retention: &Retention,
    req: &WriteRequest,
    ts: &str,
    now_ms: i64,
    head: u64,
) -> Result<Result<Written>> {
    let fingerprint = req.key.as_ref().map(|_| req.fingerprint());
    if let (Some(key), Some(fp)) = (&req.key, &fingerprint) {
        let ttl_ms = (retention.idempotency_secs as i64).saturating_mul(1000);
        let row: Option<(String, String)> = conn
            .prepare_cached(
                "SELECT fingerprint, response FROM idempotency
                 WHERE room = ? AND key = ? AND created_ms >= ?",
            )?
            .query_row(params![req.room, key, now_ms.saturating_sub(ttl_ms)], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        if let Some((stored_fp, json)) = row {
            if &stored_fp != fp {
                return Ok(Err(Error::IdempotencyKeyReused(key.clone())));
            }
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
        WriteOp::Put { id, .. } | WriteOp::Delete { id } => conn
            .prepare_cached("SELECT value, version FROM items WHERE room = ? AND id = ?")?
            .query_row(params![req.room, id], |r| {
                Ok(StoredItem {
                    value: r.get(0)?,
                    version: to_u64(r.get(1)?),
                })
            })
            .optional()?,
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
            conn.prepare_cached(
                "INSERT INTO items (room, id, value, version, updated_at)
                 VALUES (?, ?, ?, ?, ?)
                 ON CONFLICT (room, id) DO UPDATE SET
                   value = excluded.value, version = excluded.version,
                   updated_at = excluded.updated_at",
            )?
            .execute(params![req.room, id, value_json, to_i64(*version), ts])?;
        }
        ItemChange::Tombstone { id, version } => {
            conn.prepare_cached(
                "UPDATE items SET value = NULL, version = ?, updated_at = ?
                 WHERE room = ? AND id = ?",
            )?
            .execute(params![to_i64(*version), ts, req.room, id])?;
        }
        ItemChange::None => {}
    }
    let (envelope, json) = plan::envelope(req, seq, ts.to_owned(), event);
    if let (Some(key), Some(fp)) = (&req.key, &fingerprint) {
        conn.prepare_cached(
            "INSERT OR REPLACE INTO idempotency (room, key, fingerprint, status, response, created_ms)
             VALUES (?, ?, ?, 200, ?, ?)",
        )?
        .execute(params![req.room, key, fp, json, now_ms])?;
    }
    Ok(Ok(Written {
        envelope,
        json,
        replayed: false,
    }))
}

/// After a batch appended to `room`: retention (at most `events`, nothing older than `secs`)
/// and the new head.
fn finish_room(
    conn: &Connection,
    retention: &Retention,
    room: &RoomHead,
    now_ms: i64,
) -> Result<()> {
    let mut new_trimmed = room.trimmed_through;
    if room.head > retention.events {
        new_trimmed = new_trimmed.max(room.head - retention.events);
    }
    let cutoff = now_ms.saturating_sub((retention.secs as i64).saturating_mul(1000));
    // Cheap check first: only when the oldest retained event expired, find how many did.
    let oldest_ts: Option<i64> = conn
        .prepare_cached("SELECT ts_ms FROM events WHERE room = ? AND seq > ? ORDER BY seq LIMIT 1")?
        .query_row(params![room.room, to_i64(new_trimmed)], |r| r.get(0))
        .optional()?;
    if oldest_ts.is_some_and(|ts| ts < cutoff) {
        let old: Option<i64> = conn
            .prepare_cached("SELECT MAX(seq) FROM events WHERE room = ? AND ts_ms < ?")?
            .query_row(params![room.room, cutoff], |r| r.get(0))?;
        if let Some(old) = old {
            new_trimmed = new_trimmed.max(to_u64(old));
        }
    }
    if new_trimmed > room.trimmed_through {
        conn.prepare_cached("DELETE FROM events WHERE room = ? AND seq <= ?")?
            .execute(params![room.room, to_i64(new_trimmed)])?;
    }
    conn.prepare_cached(
        "INSERT INTO rooms (room, head, trimmed_through) VALUES (?, ?, ?)
         ON CONFLICT (room) DO UPDATE SET head = excluded.head,
           trimmed_through = excluded.trimmed_through",
    )?
    .execute(params![room.room, to_i64(room.head), to_i64(new_trimmed)])?;
    Ok(())
}

/// The reads, run on the reader's thread (the writer's, in memory).
impl Db {
    fn snapshot(&mut self, room: &str) -> Result<Snapshot> {
        let (head, rows) = self.transaction("BEGIN", |conn| {
            let head: Option<i64> = conn
                .prepare_cached("SELECT head FROM rooms WHERE room = ?")?
                .query_row([room], |r| r.get(0))
                .optional()?;
            let rows: Vec<(String, String, i64, String)> = conn
                .prepare_cached(
                    "SELECT id, value, version, updated_at FROM items
                     WHERE room = ? AND value IS NOT NULL ORDER BY id",
                )?
                .query_map([room], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect::<rusqlite::Result<_>>()?;
            Ok((head, rows))
        })?;
        let mut items = std::collections::BTreeMap::new();
        for (id, value, version, updated_at) in rows {
            items.insert(
                id,
                ItemState {
                    value: serde_json::from_str(&value)
                        .map_err(|e| Error::Internal(format!("stored item is not JSON: {e}")))?,
                    version: to_u64(version),
                    updated_at,
                },
            );
        }
        Ok(Snapshot {
            room: room.to_owned(),
            seq: head.map_or(0, to_u64),
            items,
        })
    }

    fn head(&mut self, room: &str) -> Result<u64> {
        let head: Option<i64> = self
            .conn
            .prepare_cached("SELECT head FROM rooms WHERE room = ?")?
            .query_row([room], |r| r.get(0))
            .optional()?;
        Ok(head.map_or(0, to_u64))
    }

    fn read(&mut self, room: &str, after: u64, limit: usize) -> Result<Vec<StoredEvent>> {
        self.transaction("BEGIN", |conn| {
            let (head, trimmed) = conn
                .prepare_cached("SELECT head, trimmed_through FROM rooms WHERE room = ?")?
                .query_row([room], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
                .optional()?
                .map_or((0, 0), |(h, t)| (to_u64(h), to_u64(t)));
            if after > 0 && after < trimmed && after < head {
                return Err(Error::HistoryTrimmed { after, head });
            }
            let events = conn
                .prepare_cached(
                    "SELECT seq, envelope FROM events WHERE room = ? AND seq > ? ORDER BY seq LIMIT ?",
                )?
                .query_map(
                    params![room, to_i64(after.max(trimmed)), to_i64(limit as u64)],
                    |r| {
                        Ok(StoredEvent {
                            seq: to_u64(r.get(0)?),
                            json: r.get(1)?,
                        })
                    },
                )?
                .collect::<rusqlite::Result<_>>()?;
            Ok(events)
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
        f: impl FnOnce(&Connection) -> T + Send + 'static,
    ) -> T {
        self.writer.run(move |db| f(&db.conn)).await.unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_suite;
    use serde_json::json;
    use tidewire_protocol::RawAppEvent;

    async fn file_store(retention: Retention) -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        (dir, SqliteStore::open(&url, retention).await.unwrap())
    }

    fn put(room: &str, id: &str, value: serde_json::Value) -> WriteRequest {
        WriteRequest::new(
            room,
            WriteOp::Put {
                id: id.into(),
                value,
            },
        )
    }

    fn publish(room: &str) -> WriteRequest {
        WriteRequest::new(
            room,
            WriteOp::Publish(RawAppEvent {
                event_type: "e".into(),
                data: json!({"n": 1}),
            }),
        )
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

    #[test]
    fn database_urls() {
        assert_eq!(
            Location::parse("sqlite::memory:").unwrap(),
            Location::Memory
        );
        assert_eq!(
            Location::parse("sqlite:x?mode=memory&cache=shared").unwrap(),
            Location::Memory
        );
        assert_eq!(
            Location::parse("sqlite://tidewire.db").unwrap(),
            Location::File("tidewire.db".into())
        );
        assert_eq!(
            Location::parse("sqlite:///var/lib/t.db").unwrap(),
            Location::File("/var/lib/t.db".into())
        );
        assert_eq!(
            Location::parse("sqlite:t.db?mode=ro").unwrap(),
            Location::File("file:t.db?mode=ro".into())
        );
        assert!(matches!(
            Location::parse("sqlite://"),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            Location::parse("postgres://x"),
            Err(Error::Config(_))
        ));
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
        assert!(matches!(err, Error::Config(_) | Error::Sqlite(_)), "{err}");
    }

    /// A batch whose transaction the database fails is not committed in part: the writes
    /// before the failing one are applied once (by the write-by-write retry), the failing
    /// write leaves neither its item, its event nor its key, and the connection is usable
    /// again. Checked on a file and in memory.
    #[tokio::test]
    async fn a_failed_transaction_leaves_nothing_and_the_connection_usable() {
        let (_dir, file) = file_store(Retention::default()).await;
        let memory = SqliteStore::open("sqlite::memory:", Retention::default())
            .await
            .unwrap();
        for store in [file, memory] {
            store
                .on_writer(|c| {
                    c.execute_batch(
                        "CREATE TRIGGER poison BEFORE INSERT ON events
                         WHEN NEW.envelope LIKE '%poison%'
                         BEGIN SELECT RAISE(ABORT, 'poisoned event'); END",
                    )
                })
                .await
                .unwrap();
            let out = store
                .write_batch(vec![
                    put("r", "a", json!(1)).key("k-a"),
                    put("r", "p", json!("poison")).key("k-p"),
                    publish("r"),
                ])
                .await;
            assert_eq!(out[0].as_ref().unwrap().envelope.seq, Some(1));
            assert!(matches!(out[1], Err(Error::Sqlite(_))), "{:?}", out[1]);
            assert_eq!(out[2].as_ref().unwrap().envelope.seq, Some(2));
            // A single write that fails, then one that must not find a transaction open.
            assert!(store.write(put("r", "p", json!("poison"))).await.is_err());
            assert_eq!(
                store.write(publish("r")).await.unwrap().envelope.seq,
                Some(3)
            );

            let log = store.read("r", 0, 100).await.unwrap();
            assert_eq!(log.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
            assert!(log.iter().all(|e| !e.json.contains("poison")));
            let snap = store.snapshot("r").await.unwrap();
            assert_eq!(snap.seq, 3);
            assert_eq!(snap.items["a"].version, 1, "`a` applied once");
            assert!(
                !snap.items.contains_key("p"),
                "the failed put left its item"
            );

            store
                .on_writer(|c| c.execute_batch("DROP TRIGGER poison"))
                .await
                .unwrap();
            let retry = store
                .write(put("r", "p", json!("poison")).key("k-p"))
                .await
                .unwrap();
            assert!(!retry.replayed, "the failed write's key was not recorded");
            assert_eq!(retry.envelope.seq, Some(4));
            let again = store
                .write(put("r", "a", json!(1)).key("k-a"))
                .await
                .unwrap();
            assert!(again.replayed);
            assert_eq!(again.envelope.seq, Some(1));
        }
    }

    /// On a file, reads have their own connection: they are answered while the writer's
    /// thread is busy.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_do_not_wait_for_the_writer() {
        let (_dir, store) = file_store(Retention::default()).await;
        store.write(publish("r")).await.unwrap();
        let store = std::sync::Arc::new(store);
        let busy = {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .on_writer(|_| std::thread::sleep(Duration::from_millis(1500)))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = std::time::Instant::now();
        assert_eq!(store.read("r", 0, 10).await.unwrap().len(), 1);
        assert_eq!(store.head("r").await.unwrap(), 1);
        assert_eq!(store.snapshot("r").await.unwrap().seq, 1);
        assert!(
            started.elapsed() < Duration::from_millis(1000),
            "reads waited for the writer: {:?}",
            started.elapsed()
        );
        busy.await.unwrap();
    }
}

#[cfg(test)]
mod concurrency_tests {
    use super::*;
    use std::sync::Arc;
    use tidewire_protocol::RawAppEvent;

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

    /// Batches sent at the same time each get a contiguous run of seqs (one transaction
    /// each, never interleaved), the runs tile 1..=n per room, and the log holds exactly the
    /// answered events.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_batches_get_contiguous_seqs() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("b.db").display());
        let store = Arc::new(SqliteStore::open(&url, Retention::default()).await.unwrap());
        let rooms = ["b1", "b2"];
        let mut tasks = Vec::new();
        for t in 0..16 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                // Mostly one room per batch, some batches mixing both.
                let reqs = (0..10)
                    .map(|i| {
                        let room = if t % 4 == 0 {
                            rooms[i % 2]
                        } else {
                            rooms[t % 2]
                        };
                        WriteRequest::new(
                            room,
                            WriteOp::Publish(RawAppEvent {
                                event_type: "e".into(),
                                data: serde_json::json!({ "t": t, "i": i }),
                            }),
                        )
                    })
                    .collect();
                store.write_batch(reqs).await
            }));
        }
        let mut seqs: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
        for t in tasks {
            let mut per_room: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
            for w in t.await.unwrap() {
                let w = w.unwrap();
                per_room
                    .entry(w.envelope.room.clone())
                    .or_default()
                    .push(w.envelope.seq.unwrap());
            }
            for (room, run) in per_room {
                let first = run[0];
                assert_eq!(
                    run,
                    (first..first + run.len() as u64).collect::<Vec<_>>(),
                    "a batch's seqs in {room} are contiguous"
                );
                seqs.entry(room).or_default().extend(run);
            }
        }
        for room in rooms {
            let mut got = seqs.remove(room).unwrap();
            got.sort_unstable();
            let n = got.len() as u64;
            assert_eq!(got, (1..=n).collect::<Vec<_>>(), "{room}: 1..=n, once each");
            let log = store.read(room, 0, 1000).await.unwrap();
            assert_eq!(log.len() as u64, n);
            for (ev, want) in log.iter().zip(1..) {
                assert_eq!(ev.envelope().unwrap().seq, Some(want));
            }
            assert_eq!(store.head(room).await.unwrap(), n);
        }
    }
}
