//! The reads, run on the reader's thread (the writer's, in memory): a room's snapshot (live
//! items and the head they reflect, read in one transaction), its head, and a page of its
//! log after a position (refused with `history_trimmed` when the log no longer reaches back
//! that far).
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use tidewire_server::store::{sqlite::SqliteStore, Retention, Store};
//! let store = SqliteStore::open("sqlite::memory:", Retention::default()).await.unwrap();
//! assert!(store.read("r", 0, 100).await.unwrap().is_empty());
//! assert_eq!(store.snapshot("r").await.unwrap().seq, 0);
//! # });
//! ```

use rusqlite::{params, OptionalExtension};
use tidewire_protocol::{ItemState, Snapshot};

use super::super::{to_i64, to_u64, StoredEvent};
use super::connection::Db;
use crate::{Error, Result};

/// The reads, run on the reader's thread (the writer's, in memory).
impl Db {
    pub(super) fn snapshot(&mut self, room: &str) -> Result<Snapshot> {
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

    pub(super) fn head(&mut self, room: &str) -> Result<u64> {
        let head: Option<i64> = self
            .conn
            .prepare_cached("SELECT head FROM rooms WHERE room = ?")?
            .query_row([room], |r| r.get(0))
            .optional()?;
        Ok(head.map_or(0, to_u64))
    }

    pub(super) fn read(
        &mut self,
        room: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>> {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::test_support::{file_store, publish};
    use crate::store::Retention;
    use crate::Store;

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
