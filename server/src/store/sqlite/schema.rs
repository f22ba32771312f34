//! The SQLite schema: the tables of rooms, events, items and idempotency keys, as a list of
//! migrations. The database's `user_version` says how many have run; opening the writer runs
//! the rest, in order, so a database made by an older version is brought up to date and a
//! current one is left alone.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use tidewire_server::store::{sqlite::SqliteStore, Retention, Store, WriteOp, WriteRequest};
//! let dir = tempfile::tempdir().unwrap();
//! let url = format!("sqlite://{}", dir.path().join("t.db").display());
//! let store = SqliteStore::open(&url, Retention::default()).await.unwrap(); // creates
//! store.write(WriteRequest::new("r", WriteOp::Delete { id: "x".into() })).await.unwrap_err();
//! drop(store);
//! let store = SqliteStore::open(&url, Retention::default()).await.unwrap(); // up to date
//! assert_eq!(store.head("r").await.unwrap(), 0);
//! # });
//! ```

use super::connection::Db;
use crate::Result;

/// The migrations, oldest first; migration `i` brings `user_version` to `i + 1`.
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

impl Db {
    /// Runs the migrations the database has not run yet.
    pub(super) fn migrate(&mut self) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::super::connection::{Location, Role};
    use super::*;

    fn user_version(db: &Db) -> i64 {
        db.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    }

    /// Migrating creates every table and records the version; migrating again changes
    /// nothing and keeps the data.
    #[test]
    fn migrating_twice_is_harmless() {
        let mut db = Db::open(Location::Memory, Role::Writer).unwrap();
        assert_eq!(user_version(&db), 0);
        db.migrate().unwrap();
        assert_eq!(user_version(&db), MIGRATIONS.len() as i64);
        let tables: Vec<String> = db
            .conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(tables, ["events", "idempotency", "items", "rooms"]);
        db.conn
            .execute("INSERT INTO rooms (room, head) VALUES ('r', 7)", [])
            .unwrap();
        db.migrate().unwrap();
        assert_eq!(user_version(&db), MIGRATIONS.len() as i64);
        let head: i64 = db
            .conn
            .query_row("SELECT head FROM rooms WHERE room = 'r'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(head, 7);
    }
}
