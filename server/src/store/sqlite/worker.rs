//! The thread that owns a connection: every store call is one job sent to it, run there
//! synchronously (SQLite's API blocks), and answered once through its own channel. Jobs run
//! one at a time in the order sent, so the writer's thread serialises writes without a lock.
//! A job that panics loses its answer (its caller gets an error) but not the thread: the
//! connection is settled and the next job runs.
//!
//! Writes sent at once are run one after the other on the writer's thread:
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use tidewire_server::store::{sqlite::SqliteStore, Retention, Store, WriteOp, WriteRequest};
//! let store = SqliteStore::open("sqlite::memory:", Retention::default()).await.unwrap();
//! let put = |id: &str| WriteRequest::new("r", WriteOp::Put { id: id.into(), value: 1.into() });
//! let (a, b) = tokio::join!(store.write(put("a")), store.write(put("b")));
//! let mut seqs = [a.unwrap().envelope.seq, b.unwrap().envelope.seq];
//! seqs.sort();
//! assert_eq!(seqs, [Some(1), Some(2)]);
//! # });
//! ```

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;

use tokio::sync::oneshot;

use super::connection::Db;
use crate::{Error, Result};

/// A job for a connection's thread. It answers through its own channel.
type Job = Box<dyn FnOnce(&mut Db) + Send>;

/// The sending end of a connection's thread. The thread stops when every sender is gone
/// (the store dropped), closing its connection.
#[derive(Clone)]
pub(super) struct Worker {
    jobs: mpsc::Sender<Job>,
}

/// The error a caller gets when its job was not answered: the thread has stopped, or the
/// job panicked.
pub(super) fn stopped() -> Error {
    Error::Internal("the SQLite thread stopped".into())
}

impl Worker {
    /// Starts a thread named `name` that opens its connection with `open`, then runs jobs in
    /// the order sent. Answers once the connection is open (or with why it is not).
    pub(super) async fn spawn(
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
    pub(super) async fn run<T: Send + 'static>(
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

#[cfg(test)]
mod tests {
    use super::super::connection::{Location, Role};
    use super::*;

    async fn memory_worker() -> Worker {
        Worker::spawn("tidewire-sqlite-test", || {
            Db::open(Location::Memory, Role::Writer)
        })
        .await
        .unwrap()
    }

    /// Jobs run in the order sent, on the one named thread, each answered once.
    #[tokio::test]
    async fn jobs_run_in_order_on_the_thread() {
        let worker = memory_worker().await;
        worker
            .run(|db| db.conn.execute_batch("CREATE TABLE t (x INTEGER)"))
            .await
            .unwrap()
            .unwrap();
        let sent: Vec<_> = (0..10)
            .map(|i| {
                worker.run(move |db| {
                    db.conn.execute("INSERT INTO t VALUES (?)", [i]).unwrap();
                    std::thread::current().name().map(str::to_owned)
                })
            })
            .collect();
        for answer in futures::future::join_all(sent).await {
            assert_eq!(answer.unwrap().as_deref(), Some("tidewire-sqlite-test"));
        }
        let xs: Vec<i64> = worker
            .run(|db| {
                db.conn
                    .prepare("SELECT x FROM t ORDER BY rowid")?
                    .query_map([], |r| r.get(0))?
                    .collect::<rusqlite::Result<Vec<i64>>>()
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(xs, (0..10).collect::<Vec<_>>());
    }

    /// A job that panics answers an error; the thread and its connection stay, and a
    /// transaction the job left open is rolled back.
    #[tokio::test]
    async fn a_panicking_job_fails_alone() {
        let worker = memory_worker().await;
        worker
            .run(|db| db.conn.execute_batch("CREATE TABLE t (x INTEGER)"))
            .await
            .unwrap()
            .unwrap();
        let err = worker
            .run(|db| {
                db.conn
                    .execute_batch("BEGIN; INSERT INTO t VALUES (1);")
                    .unwrap();
                panic!("a bug in a job");
            })
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Internal(_)), "{err}");
        let (autocommit, n) = worker
            .run(|db| {
                let n: i64 = db
                    .conn
                    .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
                    .unwrap();
                (db.conn.is_autocommit(), n)
            })
            .await
            .unwrap();
        assert!(autocommit, "the panicked job's transaction was rolled back");
        assert_eq!(n, 0);
    }

    /// A connection that cannot be opened is the spawn's error, not a later job's.
    #[tokio::test]
    async fn an_open_that_fails_is_the_spawn_s_error() {
        let err = Worker::spawn("tidewire-sqlite-test", || {
            Err(Error::Config("no database".into()))
        })
        .await
        .err()
        .unwrap();
        assert!(matches!(err, Error::Config(_)), "{err}");
    }
}
