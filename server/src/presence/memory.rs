//! The in-memory [`Presence`] for one node, with TTL and reconnect grace.
//!
//! ```
//! use std::time::Duration;
//! let p = tidewire_server::presence::memory::MemoryPresence::new(Duration::from_secs(5), Duration::from_secs(60));
//! # let _ = p;
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tidewire_protocol::Member;

use super::Presence;
use crate::Result;

struct Entry {
    member: Member,
    conns: HashSet<String>,
    gone_since: Option<Instant>,
    last_seen: Instant,
}

/// The presence table and its index by connection.
#[derive(Default)]
struct Table {
    rooms: HashMap<String, BTreeMap<String, Entry>>,
    /// Which `(room, client_id)` members each connection holds, so `touch` visits only those.
    by_conn: HashMap<String, HashSet<(String, String)>>,
}

impl Table {
    fn unindex(&mut self, conn: &str, room: &str, client_id: &str) {
        if let Some(held) = self.by_conn.get_mut(conn) {
            held.remove(&(room.to_owned(), client_id.to_owned()));
            if held.is_empty() {
                self.by_conn.remove(conn);
            }
        }
    }
}

/// In-memory presence.
pub struct MemoryPresence {
    grace: Duration,
    ttl: Duration,
    table: Mutex<Table>,
}

impl MemoryPresence {
    /// Members leave `grace` after their last connection, or `ttl` after they were last seen.
    pub fn new(grace: Duration, ttl: Duration) -> Self {
        MemoryPresence {
            grace,
            ttl,
            table: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Presence for MemoryPresence {
    async fn join(&self, room: &str, conn: &str, member: Member) -> Result<bool> {
        let mut table = self.lock();
        table
            .by_conn
            .entry(conn.to_owned())
            .or_default()
            .insert((room.to_owned(), member.client_id.clone()));
        let members = table.rooms.entry(room.to_owned()).or_default();
        let now = Instant::now();
        match members.get_mut(&member.client_id) {
            Some(e) => {
                e.conns.insert(conn.to_owned());
                e.gone_since = None;
                e.last_seen = now;
                let changed = e.member != member;
                e.member = member;
                Ok(changed)
            }
            None => {
                members.insert(
                    member.client_id.clone(),
                    Entry {
                        member,
                        conns: HashSet::from([conn.to_owned()]),
                        gone_since: None,
                        last_seen: now,
                    },
                );
                Ok(true)
            }
        }
    }

    async fn leave(&self, room: &str, conn: &str, client_id: &str) -> Result<()> {
        let mut table = self.lock();
        table.unindex(conn, room, client_id);
        if let Some(e) = table.rooms.get_mut(room).and_then(|m| m.get_mut(client_id)) {
            e.conns.remove(conn);
            if e.conns.is_empty() && e.gone_since.is_none() {
                e.gone_since = Some(Instant::now());
            }
        }
        Ok(())
    }

    async fn touch(&self, conn: &str) -> Result<()> {
        let now = Instant::now();
        let mut table = self.lock();
        let Table { rooms, by_conn } = &mut *table;
        for (room, client_id) in by_conn.get(conn).into_iter().flatten() {
            if let Some(e) = rooms.get_mut(room).and_then(|m| m.get_mut(client_id)) {
                e.last_seen = now;
            }
        }
        Ok(())
    }

    async fn members(&self, room: &str) -> Result<Vec<Member>> {
        Ok(self
            .lock()
            .rooms
            .get(room)
            .map(|m| m.values().map(|e| e.member.clone()).collect())
            .unwrap_or_default())
    }

    async fn reap(&self) -> Result<Vec<(String, Member)>> {
        let now = Instant::now();
        let mut gone = Vec::new();
        let mut unheld = Vec::new();
        let mut table = self.lock();
        for (room, members) in table.rooms.iter_mut() {
            members.retain(|_, e| {
                let expired = e.gone_since.is_some_and(|t| now >= t + self.grace)
                    || now >= e.last_seen + self.ttl;
                if expired {
                    gone.push((room.clone(), e.member.clone()));
                    let id = &e.member.client_id;
                    unheld.extend(e.conns.drain().map(|c| (c, room.clone(), id.clone())));
                }
                !expired
            });
        }
        table.rooms.retain(|_, m| !m.is_empty());
        for (conn, room, client_id) in &unheld {
            table.unindex(conn, room, client_id);
        }
        Ok(gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn member(id: &str, meta: serde_json::Value) -> Member {
        Member {
            client_id: id.into(),
            user: None,
            meta,
        }
    }

    #[tokio::test]
    async fn quick_reconnect_is_not_leave_and_join() {
        let p = MemoryPresence::new(Duration::from_millis(200), Duration::from_secs(60));
        assert!(p.join("r", "c1", member("ada", json!({}))).await.unwrap());
        p.leave("r", "c1", "ada").await.unwrap();
        assert!(p.reap().await.unwrap().is_empty(), "within grace");
        assert!(!p.join("r", "c2", member("ada", json!({}))).await.unwrap());
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(p.reap().await.unwrap().is_empty(), "held by c2");
        assert_eq!(p.members("r").await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn leave_after_grace_and_meta_updates() {
        let p = MemoryPresence::new(Duration::from_millis(50), Duration::from_secs(60));
        p.join("r", "c1", member("ada", json!({}))).await.unwrap();
        assert!(p
            .join("r", "c1", member("ada", json!({"n": 1})))
            .await
            .unwrap());
        p.leave("r", "c1", "ada").await.unwrap();
        tokio::time::sleep(Duration::from_millis(80)).await;
        let gone = p.reap().await.unwrap();
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].1.meta, json!({"n": 1}));
        assert!(p.members("r").await.unwrap().is_empty());
        assert!(p.reap().await.unwrap().is_empty(), "reported once");
    }

    #[tokio::test]
    async fn ttl_expires_untouched_members() {
        let p = MemoryPresence::new(Duration::from_secs(5), Duration::from_millis(50));
        p.join("r", "c1", member("ada", json!({}))).await.unwrap();
        p.join("r", "c2", member("bob", json!({}))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(40)).await;
        p.touch("c2").await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        let gone = p.reap().await.unwrap();
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].1.client_id, "ada");
    }
}
