//! Per-client limits: concurrent streaming connections and write rate (a token bucket), both
//! counted against the [`ClientIdentity`](crate::identity::ClientIdentity) key. Body, item
//! and room-count limits are checked where the input is parsed.
//!
//! ```
//! use tidewire_server::limits::Limits;
//! let limits = Limits::new(1, 1, 2);
//! let guard = limits.connect("1.2.3.4").unwrap();
//! assert!(limits.connect("1.2.3.4").is_err());
//! drop(guard);
//! assert!(limits.connect("1.2.3.4").is_ok());
//! assert!(limits.check_write("1.2.3.4").is_ok());
//! assert!(limits.check_write("1.2.3.4").is_ok());
//! assert!(limits.check_write("1.2.3.4").is_err());
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::{Error, Result};

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
}

/// Holds one connection slot until dropped.
pub struct ConnectionGuard {
    key: String,
    connections: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
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
        }
    }

    /// Takes a connection slot for `key`, or `too_many_connections`.
    pub fn connect(&self, key: &str) -> Result<ConnectionGuard> {
        let mut map = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(key.to_owned()).or_insert(0);
        if *n >= self.max_connections {
            return Err(Error::TooManyConnections(self.max_connections));
        }
        *n += 1;
        Ok(ConnectionGuard {
            key: key.to_owned(),
            connections: self.connections.clone(),
        })
    }

    /// Takes one write token for `key`, or `rate_limited` with the seconds to wait.
    pub fn check_write(&self, key: &str) -> Result<()> {
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
        let _a = l.connect("a").unwrap();
        let _b = l.connect("b").unwrap();
        assert!(matches!(
            l.connect("a").err(),
            Some(Error::TooManyConnections(1))
        ));
        l.check_write("a").unwrap();
        l.check_write("b").unwrap();
        match l.check_write("a") {
            Err(Error::RateLimited { retry_after }) => assert_eq!(retry_after, 1),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tokens_refill() {
        let l = Limits::new(1, 1000, 1);
        l.check_write("a").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        l.check_write("a").unwrap();
    }
}
