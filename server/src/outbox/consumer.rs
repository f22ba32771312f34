//! The ingest loop of one node.
//!
//! On one dedicated connection (`locks`) the node holds session advisory locks on the
//! partitions it works: every poll interval it heartbeats in `tidewire.consumers`, releases
//! partitions beyond its share (`⌈16 / live nodes⌉`; a released partition is left alone for
//! three intervals so another node can take it) and tries every free partition, so a
//! partition whose node died (its session, and so its locks, ended) is taken over within one
//! interval. Per held partition it reads a batch in id order, writes each room's rows one
//! after the other through the [`Sink`] (rooms side by side), then deletes the rows it wrote
//! and moves the refused ones to `tidewire.dead_letters`, in one statement. A store failure
//! stops that room's rows (the later ones are not tried) and backs off; the database going
//! away ends the session (locks released) and the loop reconnects with backoff.
//!
//! A `LISTEN tidewire_outbox` connection wakes the loop at once; the poll interval catches
//! notifications lost while it was disconnected.
//!
//! ```no_run
//! # async fn f(sink: std::sync::Arc<tidewire_server::service::Service>) {
//! use std::sync::Arc;
//! use tidewire_server::outbox::{consumer::{Consumer, Options}, Health, Sink};
//! let pg = "postgres://postgres@127.0.0.1/app".parse().unwrap();
//! let weak = Arc::downgrade(&sink) as std::sync::Weak<dyn Sink>;
//! let consumer = Consumer::new(pg, Options::default(), weak, Health::default());
//! tokio::spawn(consumer.run(None)); // stops when the sink is dropped
//! # }
//! ```

use std::collections::{BTreeSet, HashMap};
use std::sync::Weak;
use std::time::Duration;

use futures::StreamExt;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Row};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};

use super::ingest::{self, OutboxRow, Outcome};
use super::{install, Db, Health, Limits, Sink, CHANNEL, PARTITIONS};
use crate::{metrics, Error, Result};

/// The first key of the partitions' session advisory locks (the second is the partition).
/// The SQL functions' per-room transaction locks use `1953980018`.
pub const PARTITION_LOCK_CLASS: i32 = 1_953_980_019;

/// Longest time one round (a tick or one batch per partition) may take before the session is
/// considered broken.
const ROUND_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest time connecting and installing may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait between two attempts after a failure.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Intervals a released partition is not tried again by the node that released it.
const COOLDOWN_TICKS: u32 = 3;

const SELECT_BATCH: &str = "SELECT id, room, op, event_type, item_id, data::text, key
     FROM tidewire.outbox WHERE partition = $1 ORDER BY id LIMIT $2";

/// Deletes the rows done and moves the refused ones (`$2`, with reasons `$3`) to the dead
/// letters, atomically. Only the node whose DELETE removed a row records its dead letter.
const FINISH_BATCH: &str = "WITH gone AS (
        DELETE FROM tidewire.outbox WHERE id = ANY($1) RETURNING *
     ), why AS (
        SELECT * FROM unnest($2::bigint[], $3::text[]) AS w(id, reason)
     )
     INSERT INTO tidewire.dead_letters
        (id, partition, room, op, event_type, item_id, data, key, created_at, reason)
     SELECT g.id, g.partition, g.room, g.op, g.event_type, g.item_id, g.data, g.key,
            g.created_at, why.reason
     FROM gone g JOIN why ON why.id = g.id
     ON CONFLICT (id) DO NOTHING";

/// How a consumer works.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// The poll interval (`--outbox-poll-ms`): rebalancing, metrics, and the longest a row
    /// whose notification was lost waits.
    pub poll: Duration,
    /// Rows read per partition and batch.
    pub batch: i64,
    /// Rooms of one batch written side by side.
    pub rooms_in_flight: usize,
    /// What the server refuses.
    pub limits: Limits,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            poll: Duration::from_secs(1),
            batch: 500,
            rooms_in_flight: 32,
            limits: Limits {
                max_item_bytes: 262_144,
                max_data_bytes: 1_048_576,
            },
        }
    }
}

/// One node's consumer of one outbox.
pub struct Consumer {
    pg: PgConnectOptions,
    opts: Options,
    sink: Weak<dyn Sink>,
    health: Health,
    node: String,
}

/// A connected consumer: the lock connection, a small pool, the wake-ups.
pub struct Session {
    locks: PgConnection,
    pool: PgPool,
    install_id: String,
    wake: mpsc::Receiver<()>,
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// What one round did.
#[derive(Debug, Default)]
struct Round {
    /// Rows finished (ingested or dead-lettered).
    finished: usize,
    /// Some partition had a full batch: read again at once.
    full: bool,
    /// A store failure stopped some room.
    retry: Option<String>,
}

/// The partitions this node holds, and the ones it released lately.
#[derive(Debug, Default)]
struct Held {
    held: BTreeSet<i32>,
    cooldown: HashMap<i32, u32>,
}

impl Consumer {
    /// A consumer of the outbox at `pg`, writing into `sink`, reporting into `health`.
    pub fn new(pg: PgConnectOptions, opts: Options, sink: Weak<dyn Sink>, health: Health) -> Self {
        Consumer {
            pg,
            opts,
            sink,
            health,
            node: ulid::Ulid::generate().to_string(),
        }
    }

    /// Connects, installs the schema (idempotent) and starts listening.
    pub async fn connect(&self) -> Result<Session> {
        let connecting = async {
            let mut locks = PgConnection::connect_with(&self.pg).await.db()?;
            let install_id = install::install(&mut locks, self.opts.limits).await?;
            let pool = PgPoolOptions::new()
                .max_connections(6)
                .acquire_timeout(CONNECT_TIMEOUT)
                .connect_with(self.pg.clone())
                .await
                .db()?;
            let (tx, wake) = mpsc::channel(1);
            let listener = tokio::spawn(listen(pool.clone(), tx));
            Ok(Session {
                locks,
                pool,
                install_id,
                wake,
                listener,
            })
        };
        timeout(CONNECT_TIMEOUT, connecting).await.map_err(|_| {
            Error::Outbox(format!(
                "the outbox database did not answer within {} s",
                CONNECT_TIMEOUT.as_secs()
            ))
        })?
    }

    /// Consumes until the sink is dropped, reconnecting with backoff. `first` is a session
    /// already connected.
    pub async fn run(self, mut first: Option<Session>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            if self.sink.strong_count() == 0 {
                return;
            }
            let session = match first.take() {
                Some(s) => Ok(s),
                None => self.connect().await,
            };
            let result = match session {
                Ok(s) => {
                    self.health.set(None);
                    backoff = Duration::from_millis(100);
                    self.serve(s).await
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => return,
                Err(err) => {
                    tracing::warn!(%err, "outbox: database unreachable, retrying");
                    self.health.set(Some(err.to_string()));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Works the held partitions until the session breaks (an error) or the sink is gone.
    async fn serve(&self, mut s: Session) -> Result<()> {
        let mut held = Held::default();
        let mut next_tick = Instant::now();
        let mut notified = false;
        let mut store_backoff = Duration::from_millis(50);
        loop {
            if self.sink.strong_count() == 0 {
                return Ok(());
            }
            if Instant::now() >= next_tick {
                bounded(self.tick(&mut s, &mut held)).await?;
                next_tick = Instant::now() + self.opts.poll;
            }
            let round = bounded(self.drain(&s, &held.held)).await?;
            if round.finished > 0 && !notified {
                metrics::outbox_wakeup("poll");
            }
            if let Some(err) = round.retry {
                tracing::warn!(%err, "outbox: the store failed; retrying");
                tokio::time::sleep(store_backoff).await;
                store_backoff = (store_backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            store_backoff = Duration::from_millis(50);
            if round.full {
                continue;
            }
            notified = tokio::select! {
                woke = s.wake.recv(), if !s.wake.is_closed() => woke.is_some(),
                _ = tokio::time::sleep_until(next_tick) => false,
            };
            if notified {
                metrics::outbox_wakeup("notify");
            }
        }
    }

    /// Heartbeat, rebalance, metrics.
    async fn tick(&self, s: &mut Session, held: &mut Held) -> Result<()> {
        let window = (self.opts.poll * 3).max(Duration::from_secs(3));
        let conn = &mut s.locks;
        sqlx::query(
            "INSERT INTO tidewire.consumers (node, seen_at) VALUES ($1, clock_timestamp())
             ON CONFLICT (node) DO UPDATE SET seen_at = excluded.seen_at",
        )
        .bind(&self.node)
        .execute(&mut *conn)
        .await
        .db()?;
        sqlx::query(
            "DELETE FROM tidewire.consumers
             WHERE seen_at < clock_timestamp() - make_interval(secs => $1)",
        )
        .bind(window.as_secs_f64())
        .execute(&mut *conn)
        .await
        .db()?;
        let live: i64 = sqlx::query_scalar("SELECT count(*) FROM tidewire.consumers")
            .fetch_one(&mut *conn)
            .await
            .db()?;
        // What this session holds, as PostgreSQL sees it.
        let now_held: Vec<i32> = sqlx::query_scalar(
            "SELECT objid::bigint::int FROM pg_locks
             WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted
               AND objsubid = 2 AND classid::bigint = $1",
        )
        .bind(i64::from(PARTITION_LOCK_CLASS))
        .fetch_all(&mut *conn)
        .await
        .db()?;
        held.held = now_held.into_iter().collect();
        held.cooldown.retain(|_, ticks| {
            *ticks -= 1;
            *ticks > 0
        });
        let share = share(live);
        while held.held.len() > share {
            let Some(p) = held.held.pop_last() else { break };
            sqlx::query("SELECT pg_advisory_unlock($1, $2)")
                .bind(PARTITION_LOCK_CLASS)
                .bind(p)
                .execute(&mut *conn)
                .await
                .db()?;
            held.cooldown.insert(p, COOLDOWN_TICKS);
            tracing::info!(
                partition = p,
                live,
                "outbox: released a partition to another node"
            );
        }
        let free: Vec<i32> = (0..PARTITIONS)
            .filter(|p| !held.held.contains(p) && !held.cooldown.contains_key(p))
            .collect();
        if !free.is_empty() {
            let got: Vec<i32> = sqlx::query_scalar(
                "SELECT p FROM unnest($2::int[]) AS p WHERE pg_try_advisory_lock($1, p)",
            )
            .bind(PARTITION_LOCK_CLASS)
            .bind(&free)
            .fetch_all(&mut *conn)
            .await
            .db()?;
            if !got.is_empty() {
                tracing::debug!(?got, "outbox: took partitions");
            }
            held.held.extend(got);
        }
        let row = sqlx::query(
            "SELECT count(*),
                    coalesce(extract(epoch FROM clock_timestamp() - min(created_at)), 0)::float8
             FROM tidewire.outbox",
        )
        .fetch_one(&mut *conn)
        .await
        .db()?;
        metrics::outbox_pending(row.get::<i64, _>(0), row.get::<f64, _>(1));
        Ok(())
    }

    /// One batch of every held partition, side by side.
    async fn drain(&self, s: &Session, held: &BTreeSet<i32>) -> Result<Round> {
        let rounds = futures::future::join_all(held.iter().map(|&p| self.batch(s, p))).await;
        let mut all = Round::default();
        for round in rounds {
            let round = round?;
            all.finished += round.finished;
            all.full |= round.full;
            all.retry = all.retry.or(round.retry);
        }
        Ok(all)
    }

    /// Reads, writes and finishes one batch of `partition`.
    async fn batch(&self, s: &Session, partition: i32) -> Result<Round> {
        let rows: Vec<OutboxRow> = sqlx::query(SELECT_BATCH)
            .bind(partition)
            .bind(self.opts.batch)
            .fetch_all(&s.pool)
            .await
            .db()?
            .into_iter()
            .map(|r| OutboxRow {
                id: r.get(0),
                room: r.get(1),
                op: r.get(2),
                event_type: r.get(3),
                item_id: r.get(4),
                data: r.get(5),
                key: r.get(6),
            })
            .collect();
        if rows.is_empty() {
            return Ok(Round::default());
        }
        let full = rows.len() as i64 >= self.opts.batch;
        // Each room's rows, in id order; rooms in order of their first row.
        let mut rooms: Vec<Vec<OutboxRow>> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for row in rows {
            let i = *index.entry(row.room.clone()).or_insert_with(|| {
                rooms.push(Vec::new());
                rooms.len() - 1
            });
            rooms[i].push(row);
        }
        let outcomes: Vec<Vec<(i64, Outcome)>> = futures::stream::iter(rooms)
            .map(|rows| self.room(rows, &s.install_id))
            .buffer_unordered(self.opts.rooms_in_flight.max(1))
            .collect()
            .await;
        let (mut finished, mut dead, mut reasons, mut retry) =
            (Vec::new(), Vec::new(), Vec::new(), None);
        for (id, outcome) in outcomes.into_iter().flatten() {
            match outcome {
                Outcome::Done => finished.push(id),
                Outcome::Dead(reason) => {
                    tracing::warn!(id, %reason, "outbox: row moved to the dead letters");
                    finished.push(id);
                    dead.push(id);
                    reasons.push(reason);
                }
                Outcome::Retry(err) => retry = Some(err),
            }
        }
        if !finished.is_empty() {
            sqlx::query(FINISH_BATCH)
                .bind(&finished)
                .bind(&dead)
                .bind(&reasons)
                .execute(&s.pool)
                .await
                .db()?;
            metrics::outbox_ingested((finished.len() - dead.len()) as u64);
            metrics::outbox_dead_letters(dead.len() as u64);
        }
        Ok(Round {
            finished: finished.len(),
            full: full && retry.is_none(),
            retry,
        })
    }

    /// One room's rows of a batch, in order, each written once its predecessor is answered;
    /// stops at the first store failure (the rest wait for the retry).
    async fn room(&self, rows: Vec<OutboxRow>, install_id: &str) -> Vec<(i64, Outcome)> {
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let outcome = match ingest::request(&row, install_id, self.opts.limits) {
                Err(reason) => Outcome::Dead(reason),
                Ok(req) => match self.sink.upgrade() {
                    None => Outcome::Retry("the server stopped".into()),
                    Some(sink) => {
                        let is_delete = matches!(req.op, crate::store::WriteOp::Delete { .. });
                        match sink.write(req).await {
                            Ok(_) => Outcome::Done,
                            Err(err) => ingest::outcome(is_delete, &err),
                        }
                    }
                },
            };
            let stop = matches!(outcome, Outcome::Retry(_));
            out.push((row.id, outcome));
            if stop {
                break;
            }
        }
        out
    }
}

/// A node's fair share of the partitions when `live` nodes consume.
fn share(live: i64) -> usize {
    let live = live.max(1) as usize;
    (PARTITIONS as usize).div_ceil(live)
}

async fn bounded<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    timeout(ROUND_TIMEOUT, f).await.map_err(|_| {
        Error::Outbox(format!(
            "an outbox round took longer than {} s",
            ROUND_TIMEOUT.as_secs()
        ))
    })?
}

/// Forwards notifications on [`CHANNEL`] as wake-ups (one pending at most: a full channel
/// already means "look"), reconnecting when the connection drops (and waking then too: what
/// was notified meanwhile is lost). Ends when the consumer's session does.
async fn listen(pool: PgPool, wake: mpsc::Sender<()>) {
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(err) => {
                tracing::debug!(%err, "outbox: LISTEN connection");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if listener.listen(CHANNEL).await.is_err() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        loop {
            match listener.try_recv().await {
                Ok(_) => {
                    let _ = wake.try_send(());
                }
                Err(err) => {
                    tracing::debug!(%err, "outbox: LISTEN connection lost");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
            }
            if wake.is_closed() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_every_partition() {
        assert_eq!(share(0), 16);
        assert_eq!(share(1), 16);
        assert_eq!(share(3), 6);
        assert_eq!(share(16), 1);
        assert_eq!(share(40), 1);
        for live in 1..=20 {
            assert!(share(live) * live as usize >= PARTITIONS as usize);
        }
    }
}
