//! The writes, run on the writer's thread: a batch of writes as one `BEGIN IMMEDIATE`
//! transaction (each room's row read once, each write checked then applied, retention and the
//! new head written once per room, one `COMMIT`), the write-by-write retry when the database
//! fails a batch, and the trimming of expired events and idempotency keys.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use tidewire_server::store::{sqlite::SqliteStore, Retention, Store, WriteOp, WriteRequest};
//! let store = SqliteStore::open("sqlite::memory:", Retention::default()).await.unwrap();
//! let put = |id: &str| WriteRequest::new("r", WriteOp::Put { id: id.into(), value: 1.into() });
//! let out = store.write_batch(vec![put("a"), put("b")]).await;
//! assert_eq!(out[1].as_ref().unwrap().envelope.seq, Some(2));
//! # });
//! ```

use rusqlite::{params, Connection, OptionalExtension};
use tidewire_protocol::Envelope;

use super::super::plan::{self, ItemChange, StoredItem};
use super::super::{to_i64, to_u64, Retention, WriteOp, WriteRequest, Written};
use super::connection::Db;
use crate::clock::now;
use crate::{Error, Result};

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
    pub(super) fn write_batch(
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
    pub(super) fn write_one(
        &mut self,
        retention: &Retention,
        req: &WriteRequest,
    ) -> Result<Written> {
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
    pub(super) fn trim_expired(
        &mut self,
        retention: &Retention,
        cutoff_unix_ms: i64,
    ) -> Result<u64> {
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use serde_json::json;

    use super::super::test_support::{file_store, publish, put};
    use super::super::SqliteStore;
    use super::*;
    use crate::store::test_suite;
    use crate::Store;

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
            assert!(matches!(out[1], Err(Error::Store(_))), "{:?}", out[1]);
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fifty_concurrent_retries_append_one_event() {
        let (_dir, store) = file_store(Retention::default()).await;
        test_suite::run_concurrent(Arc::new(store)).await;
        let mem = SqliteStore::open("sqlite::memory:", Retention::default())
            .await
            .unwrap();
        test_suite::run_concurrent(Arc::new(mem)).await;
    }

    /// Batches sent at the same time each get a contiguous run of seqs (one transaction
    /// each, never interleaved), the runs tile 1..=n per room, and the log holds exactly the
    /// answered events.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_batches_get_contiguous_seqs() {
        let (_dir, store) = file_store(Retention::default()).await;
        let store = Arc::new(store);
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
                            WriteOp::Publish(tidewire_protocol::RawAppEvent {
                                event_type: "e".into(),
                                data: json!({ "t": t, "i": i }),
                            }),
                        )
                    })
                    .collect();
                store.write_batch(reqs).await
            }));
        }
        let mut seqs: BTreeMap<String, Vec<u64>> = Default::default();
        for t in tasks {
            let mut per_room: BTreeMap<String, Vec<u64>> = Default::default();
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
