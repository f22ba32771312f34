//! Where redeemed tickets are remembered, so each ticket is used once: in this process
//! ([`MemoryLedger`], one node) or in Redis ([`RedisLedger`], every node sharing that Redis
//! and key prefix), so a ticket redeemed on one node is refused on all the others.
//!
//! ```
//! # tokio_test_block(async {
//! use tidewire_server::auth::ledger::{MemoryLedger, TicketLedger};
//! let ledger = MemoryLedger::default();
//! let until = u64::MAX;
//! assert!(ledger.first_use("ticket-1", until).await.unwrap());
//! assert!(!ledger.first_use("ticket-1", until).await.unwrap(), "second use");
//! # });
//! # fn tokio_test_block(f: impl std::future::Future<Output = ()>) {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
//! # }
//! ```

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::now_secs;
#[cfg(feature = "redis")]
use crate::redis_conn::{self, Conn};
#[cfg(feature = "redis")]
use crate::Error;
use crate::Result;

/// Remembers which ticket ids have been redeemed.
///
/// Contract: [`first_use`](TicketLedger::first_use) answers `Ok(true)` exactly once per `id`
/// among all callers sharing the ledger, for as long as the id is remembered (at least until
/// `until`, in Unix seconds), and `Ok(false)` for every other call. When the ledger cannot
/// tell (its backend is down) it answers an error, never `Ok(true)`: a ticket is refused
/// rather than accepted twice.
#[async_trait]
pub trait TicketLedger: Send + Sync {
    /// Marks `id` as used until `until`; `true` when no one had used it before.
    async fn first_use(&self, id: &str, until: u64) -> Result<bool>;
}

/// The ledger of one process: single use per node.
#[derive(Debug, Default)]
pub struct MemoryLedger {
    /// Redeemed ids until their expiry (Unix seconds).
    used: Mutex<HashMap<String, u64>>,
}

#[async_trait]
impl TicketLedger for MemoryLedger {
    async fn first_use(&self, id: &str, until: u64) -> Result<bool> {
        let now = now_secs();
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        used.retain(|_, u| *u > now);
        Ok(used.insert(id.to_owned(), until).is_none())
    }
}

/// The ledger in Redis: `SET <prefix>ticket:<id> 1 NX EXAT <until>`, atomic across nodes, and
/// the key expires with the ticket.
#[cfg(feature = "redis")]
pub struct RedisLedger {
    conn: Conn,
    prefix: String,
}

#[cfg(feature = "redis")]
impl std::fmt::Debug for RedisLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLedger")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "redis")]
impl RedisLedger {
    /// Connects to `url`; keys start with `prefix` (the server's `--redis-prefix`).
    pub async fn connect(url: &str, prefix: &str) -> Result<RedisLedger> {
        let conn = redis_conn::connect(url).await?;
        Ok(RedisLedger {
            conn,
            prefix: prefix.to_owned(),
        })
    }
}

#[cfg(feature = "redis")]
#[async_trait]
impl TicketLedger for RedisLedger {
    async fn first_use(&self, id: &str, until: u64) -> Result<bool> {
        let mut conn = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(format!("{}ticket:{id}", self.prefix))
            .arg(1)
            .arg("NX")
            .arg("EXAT")
            .arg(until.max(now_secs() + 1))
            .query_async(&mut conn)
            .await
            .map_err(|e| Error::Unavailable(format!("the ticket ledger (Redis): {e}")))?;
        Ok(set.is_some())
    }
}

#[cfg(all(test, feature = "redis"))]
mod tests {
    use super::*;
    use crate::testing::redis as testing;

    #[tokio::test]
    async fn memory_ledger_answers_true_once() {
        let ledger = MemoryLedger::default();
        let later = now_secs() + 60;
        assert!(ledger.first_use("a", later).await.unwrap());
        assert!(!ledger.first_use("a", later).await.unwrap());
        assert!(ledger.first_use("b", later).await.unwrap());
    }

    #[tokio::test]
    async fn redis_ledger_is_shared_by_every_node_and_expires() {
        if !testing::ensure().await {
            return;
        }
        let prefix = format!("tw-ledger-{:016x}:", rand::random::<u64>());
        let a = RedisLedger::connect(&testing::url(), &prefix)
            .await
            .unwrap();
        let b = RedisLedger::connect(&testing::url(), &prefix)
            .await
            .unwrap();
        let until = now_secs() + 60;
        assert!(a.first_use("t1", until).await.unwrap(), "first use, node a");
        assert!(
            !b.first_use("t1", until).await.unwrap(),
            "node b sees a's use"
        );
        assert!(!a.first_use("t1", until).await.unwrap());
        // Another prefix is another deployment.
        let other = RedisLedger::connect(&testing::url(), &format!("{prefix}x:"))
            .await
            .unwrap();
        assert!(other.first_use("t1", until).await.unwrap());
        // The key lives as long as the ticket, not forever.
        let client = redis::Client::open(testing::url()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let ttl: i64 = redis::cmd("TTL")
            .arg(format!("{prefix}ticket:t1"))
            .query_async(&mut c)
            .await
            .unwrap();
        assert!((1..=60).contains(&ttl), "TTL {ttl}");
        testing::clean(&prefix).await;
    }

    #[tokio::test]
    async fn redis_ledger_down_refuses_instead_of_accepting() {
        // Nothing listens on port 1: connecting fails fast, and the ledger never says `true`.
        match RedisLedger::connect("redis://127.0.0.1:1", "x:").await {
            Err(_) => {}
            Ok(ledger) => assert!(ledger.first_use("t", now_secs() + 60).await.is_err()),
        }
    }
}
