//! One SQLite connection and how to open it again: where the database lives ([`Location`],
//! parsed from the `sqlite:` URL), what the connection is for ([`Role`]: the writer gets the
//! WAL journal, the reader is query-only), and [`Db::transaction`], which always leaves the
//! connection outside any transaction, even when a full disk fails the rollback.
//!
//! A [`Db`] is owned by one worker thread (see the `worker` module); nothing here is shared.
//!
//! The URL forms, as [`SqliteStore::open`](super::SqliteStore::open) sees them:
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use tidewire_server::store::{sqlite::SqliteStore, Retention};
//! use tidewire_server::Error;
//! assert!(SqliteStore::open("sqlite::memory:", Retention::default()).await.is_ok());
//! let err = SqliteStore::open("postgres://x", Retention::default()).await.err().unwrap();
//! assert!(matches!(err, Error::Config(_)));
//! # });
//! ```

use std::time::Duration;

use rusqlite::Connection;

use crate::{Error, Result};

/// How long a connection waits for a lock held by another connection (the reader's
/// checkpoint, another process) before failing with `database is locked`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Prepared statements kept per connection: every statement the store runs, with room to spare.
const STATEMENT_CACHE: usize = 64;

/// Where the database lives.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Location {
    /// One in-memory database, living as long as its one connection.
    Memory,
    /// A file: a path, or a `file:` URI when the URL carried query parameters.
    File(String),
}

impl Location {
    /// `sqlite://path`, `sqlite:path`, `sqlite::memory:`; query parameters (`?mode=ro`) are
    /// passed on to SQLite as a `file:` URI, `mode=memory` means in memory.
    pub(super) fn parse(url: &str) -> Result<Location> {
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
pub(super) enum Role {
    /// Writes, migrations, trimming (and everything, in memory).
    Writer,
    /// `read`, `head`, `snapshot` of a file database.
    Reader,
}

/// A connection and how to open it again; owned by its thread.
pub(super) struct Db {
    pub(super) conn: Connection,
    location: Location,
    role: Role,
}

impl Db {
    pub(super) fn open(location: Location, role: Role) -> Result<Db> {
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
    pub(super) fn transaction<T>(
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
    pub(super) fn settle(&mut self) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// A failure inside a transaction rolls it back: the connection is back in autocommit
    /// and what the failed transaction wrote is gone.
    #[test]
    fn a_failed_transaction_is_rolled_back() {
        let mut db = Db::open(Location::Memory, Role::Writer).unwrap();
        db.conn.execute_batch("CREATE TABLE t (x INTEGER)").unwrap();
        let err = db
            .transaction("BEGIN IMMEDIATE", |conn| {
                conn.execute("INSERT INTO t VALUES (1)", [])?;
                Err::<(), _>(Error::Internal("refused".into()))
            })
            .unwrap_err();
        assert!(matches!(err, Error::Internal(_)), "{err}");
        assert!(db.conn.is_autocommit());
        let n: i64 = db
            .conn
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
        let n = db
            .transaction("BEGIN", |conn| {
                conn.execute("INSERT INTO t VALUES (2)", [])?;
                Ok(conn.query_row("SELECT COUNT(*) FROM t", [], |r| r.get::<_, i64>(0))?)
            })
            .unwrap();
        assert_eq!(n, 1, "the next transaction commits");
    }
}
