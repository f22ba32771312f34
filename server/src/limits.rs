//! Per-client limits: concurrent streaming connections and write rate (a token bucket), both
//! counted against the [`ClientIdentity`](crate::identity::ClientIdentity) key. Body, item
//! and room-count limits are checked where the input is parsed.
//!
//! One node counts on its own. With `--redis` the limits count **across the cluster**
//! ([`Cluster`], implemented by [`redis::RedisLimits`]): the node's own counters stay the fast
//! path (a client over its budget on this node alone is refused without asking Redis), and
//! only what they allow is checked against the cluster-wide counters. When Redis cannot
//! answer, the node's own limit decides (the write or connection is not refused because the
//! limiter is away) and `tidewire_limits_cluster_errors_total` counts it.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use tidewire_server::limits::Limits;
//! let limits = Limits::new(1, 1, 2);
//! let guard = limits.connect("1.2.3.4").await.unwrap();
//! assert!(limits.connect("1.2.3.4").await.is_err());
//! drop(guard);
//! assert!(limits.connect("1.2.3.4").await.is_ok());
//! assert!(limits.check_write("1.2.3.4").await.is_ok());
//! assert!(limits.check_write("1.2.3.4").await.is_ok());
//! assert!(limits.check_write("1.2.3.4").await.is_err());
//! # });
//! ```

#[cfg(feature = "redis")]
pub mod redis;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;

use crate::{Error, Result};

/// Limits counted across the nodes of a deployment.
///
/// Contract: [`connect`](Cluster::connect) answers `Ok(true)` and holds a slot for `conn`
/// only while fewer than `max` slots of `key` are held cluster-wide; a slot is freed by
/// [`release`](Cluster::release) (which never waits) or, when its node dies, by expiry
/// after a bounded time. [`take_token`](Cluster::take_token) takes one token of `key`'s
/// cluster-wide bucket (`rate` per second, at most `burst`), or answers the seconds to wait.
/// An `Err` means the cluster could not tell; the caller decides on its own.
#[async_trait]
pub trait Cluster: Send + Sync {
    /// Takes a slot for connection `conn` of `key` if fewer than `max` are held.
    async fn connect(&self, key: &str, conn: &str, max: usize) -> Result<bool>;
    /// Frees connection `conn`'s slot of `key` (in the background).
    fn release(&self, key: &str, conn: &str);
    /// Takes one write token of `key`: `None` when taken, `Some(seconds to wait)` when not.
    async fn take_token(&self, key: &str, rate: f64, burst: f64) -> Result<Option<f64>>;
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The limit counters of one server.
pub struct Limits {
    max_connections: usize,
    rate: f64,
    burst: f64,
    connections: Arc<Mutex<HashMap<String, usize>>>,
    buckets: Mutex<HashMap<String, Bucket>>,
    cluster: Option<Arc<dyn Cluster>>,
}

/// Holds one connection slot until dropped.
pub struct ConnectionGuard {
    key: String,
    connections: Arc<Mutex<HashMap<String, usize>>>,
    cluster: Option<(Arc<dyn Cluster>, String)>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if let Some((cluster, conn)) = &self.cluster {
            cluster.release(&self.key, conn);
        }
        let mut map = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

impl Limits {
    /// `max_connections` per key; `rate` writes per second with bursts of `burst`.
    pub fn new(max_connections: usize, rate: u32, burst: u32) -> Self {
        Limits {
            max_connections,
            rate: f64::from(rate.max(1)),
            burst: f64::from(burst.max(1)),
            connections: Arc::new(Mutex::new(HashMap::new())),
            buckets: Mutex::new(HashMap::new()),
            cluster: None,
        }
    }

    /// The same limits, also counted across the cluster by `cluster`.
    pub fn with_cluster(mut self, cluster: Arc<dyn Cluster>) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// Takes a connection slot for `key` (on this node, then across the cluster), or
    /// `too_many_connections`.
    pub async fn connect(&self, key: &str) -> Result<ConnectionGuard> {
        let mut guard = self.connect_local(key)?;
        if let Some(cluster) = &self.cluster {
            let conn = ulid::Ulid::generate().to_string();
            match cluster.connect(key, &conn, self.max_connections).await {
                Ok(true) => guard.cluster = Some((cluster.clone(), conn)),
                Ok(false) => return Err(Error::TooManyConnections(self.max_connections)),
                Err(err) => {
                    crate::metrics::limits_cluster_error();
                    tracing::warn!(%err, "cluster-wide connection limit; counting on this node only");
                }
            }
        }
        Ok(guard)
    }

    /// Takes one write token for `key` (on this node, then across the cluster), or
    /// `rate_limited` with the seconds to wait.
    pub async fn check_write(&self, key: &str) -> Result<()> {
        self.check_write_local(key)?;
        if let Some(cluster) = &self.cluster {
            match cluster.take_token(key, self.rate, self.burst).await {
                Ok(None) => {}
                Ok(Some(wait)) => {
                    return Err(Error::RateLimited {
                        retry_after: wait.ceil().max(1.0) as u64,
                    })
                }
                Err(err) => {
                    crate::metrics::limits_cluster_error();
                    tracing::warn!(%err, "cluster-wide write rate; counting on this node only");
                }
            }
        }
        Ok(())
    }

    /// Takes a connection slot for `key` on this node only, or `too_many_connections`.
    pub fn connect_local(&self, key: &str) -> Result<ConnectionGuard> {
        let mut map = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(key.to_owned()).or_insert(0);
        if *n >= self.max_connections {
            return Err(Error::TooManyConnections(self.max_connections));
        }
        *n += 1;
        Ok(ConnectionGuard {
            key: key.to_owned(),
            connections: self.connections.clone(),
            cluster: None,
        })
    }

    /// Takes one write token for `key` on this node only, or `rate_limited` with the seconds
    /// to wait.
    pub fn check_write_local(&self, key: &str) -> Result<()> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > 100_000 {
            // Forget clients whose bucket has refilled: they are indistinguishable from new.
            let full = self.burst / self.rate;
            buckets.retain(|_, b| now.duration_since(b.at).as_secs_f64() < full);
        }
        let b = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - b.tokens) / self.rate;
            Err(Error::RateLimited {
                retry_after: wait.ceil().max(1.0) as u64,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_counted_separately() {
        let l = Limits::new(1, 1, 1);
        let _a = l.connect_local("a").unwrap();
        let _b = l.connect_local("b").unwrap();
        assert!(matches!(
            l.connect_local("a").err(),
            Some(Error::TooManyConnections(1))
        ));
        l.check_write_local("a").unwrap();
        l.check_write_local("b").unwrap();
        match l.check_write_local("a") {
            Err(Error::RateLimited { retry_after }) => assert_eq!(retry_after, 1),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tokens_refill() {
        let l = Limits::new(1, 1000, 1);
        l.check_write_local("a").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        l.check_write_local("a").unwrap();
    }
}
