//! Cluster-wide limits in Redis: connections per client and the write rate, counted across
//! every node that shares `--redis`.
//!
//! - **Connections**: per client key a sorted set `<prefix>limits:conn:{<key>}` of connection
//!   ids, each scored by the Unix millisecond its slot runs out. Taking a slot is one Lua
//!   script (drop run-out slots, count, add when below the limit), so two nodes can never
//!   both take the last slot. A node refreshes the slots of its live connections every third
//!   of the TTL and removes a closed connection's slot at once (batched in the background);
//!   a node that dies stops refreshing, so its connections' slots run out after the TTL.
//! - **Write rate**: per client key a hash `<prefix>limits:rate:{<key>}` holding a token
//!   bucket (tokens, last refill), updated by one Lua script per write, expiring once full.
//!
//! The `{<key>}` hash tag keeps each client's keys in one slot of a Redis Cluster. Times are
//! the nodes' wall clocks (assumed within a second of each other, far below the TTL).
//!
//! ```no_run
//! # async fn f() -> tidewire_server::Result<()> {
//! use std::time::Duration;
//! use tidewire_server::limits::{redis::RedisLimits, Limits};
//! let cluster = RedisLimits::connect("redis://127.0.0.1:6379", "app1:", Duration::from_secs(30)).await?;
//! let limits = Limits::new(3, 50, 200).with_cluster(cluster);
//! let _slot = limits.connect("client-1").await?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use super::Cluster;
use crate::redis_conn::{self, redis_error, Conn};
use crate::Result;

const CONNECT: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
";

const BUCKET: &str = r"
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[1], 't', 'a')
local tokens = tonumber(b[1]) or burst
local at = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) / 1000 * rate)
local ok = tokens >= 1
if ok then tokens = tokens - 1 end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'a', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
if ok then return -1 end
return math.ceil((1 - tokens) / rate * 1000)
";

/// Slots of this node's live connections, and those closed but not yet removed.
#[derive(Default)]
struct Local {
    /// connection id → client key.
    live: HashMap<String, String>,
    /// (client key, connection id) closed since the last flush.
    released: Vec<(String, String)>,
}

/// The Redis-backed [`Cluster`] limits.
pub struct RedisLimits {
    conn: Conn,
    prefix: String,
    ttl: Duration,
    local: Mutex<Local>,
    released: Arc<Notify>,
    connect: redis::Script,
    bucket: redis::Script,
}

fn now_ms() -> i64 {
    crate::clock::now_ms()
}

impl RedisLimits {
    /// Connects to `spec` (one Redis or a cluster); keys are named with `prefix`; a slot of a
    /// node that stops refreshing runs out after `ttl`. Starts the refresher.
    pub async fn connect(spec: &str, prefix: &str, ttl: Duration) -> Result<Arc<RedisLimits>> {
        let conn = redis_conn::connect(spec).await?;
        let limits = Arc::new(RedisLimits {
            conn,
            prefix: prefix.to_owned(),
            ttl: ttl.max(Duration::from_millis(300)),
            local: Mutex::new(Local::default()),
            released: Arc::new(Notify::new()),
            connect: redis::Script::new(CONNECT),
            bucket: redis::Script::new(BUCKET),
        });
        tokio::spawn(refresher(Arc::downgrade(&limits)));
        Ok(limits)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn conn_key(&self, key: &str) -> String {
        format!("{}limits:conn:{{{key}}}", self.prefix)
    }

    fn rate_key(&self, key: &str) -> String {
        format!("{}limits:rate:{{{key}}}", self.prefix)
    }

    fn ttl_ms(&self) -> i64 {
        self.ttl.as_millis() as i64
    }

    /// Removes the released slots and pushes the live ones' expiry forward.
    async fn flush(&self, refresh: bool) -> Result<()> {
        let (released, live) = {
            let mut local = self.lock();
            let released = std::mem::take(&mut local.released);
            let live: Vec<(String, String)> = if refresh {
                local
                    .live
                    .iter()
                    .map(|(c, k)| (k.clone(), c.clone()))
                    .collect()
            } else {
                Vec::new()
            };
            (released, live)
        };
        if released.is_empty() && live.is_empty() {
            return Ok(());
        }
        let until = now_ms() + self.ttl_ms();
        // Bounded pipelines: a node with many connections sends several.
        let mut all: Vec<(bool, String, String)> =
            released.into_iter().map(|(k, c)| (false, k, c)).collect();
        all.extend(live.into_iter().map(|(k, c)| (true, k, c)));
        let mut commands = Vec::with_capacity(all.len() * 2);
        for (alive, key, conn) in all {
            let zkey = self.conn_key(&key);
            if alive {
                let mut zadd = redis::cmd("ZADD");
                zadd.arg(&zkey).arg("XX").arg(until).arg(&conn);
                let mut expire = redis::cmd("PEXPIRE");
                expire.arg(&zkey).arg(self.ttl_ms() * 2);
                commands.push((zkey.clone(), zadd));
                commands.push((zkey, expire));
            } else {
                let mut zrem = redis::cmd("ZREM");
                zrem.arg(&zkey).arg(&conn);
                commands.push((zkey, zrem));
            }
        }
        redis_conn::run_all(&self.conn, commands).await?;
        Ok(())
    }
}

async fn refresher(limits: Weak<RedisLimits>) {
    let (period, released) = match limits.upgrade() {
        Some(l) => (l.ttl / 3, l.released.clone()),
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    loop {
        let refresh = tokio::select! {
            _ = tick.tick() => true,
            () = released.notified() => false,
        };
        let Some(l) = limits.upgrade() else { return };
        if let Err(err) = l.flush(refresh).await {
            tracing::warn!(%err, "cluster-wide connection slots");
        }
    }
}

#[async_trait]
impl Cluster for RedisLimits {
    async fn connect(&self, key: &str, conn: &str, max: usize) -> Result<bool> {
        let now = now_ms();
        let mut c = self.conn.clone();
        let taken: i64 = self
            .connect
            .key(self.conn_key(key))
            .arg(now)
            .arg(max)
            .arg(now + self.ttl_ms())
            .arg(conn)
            .arg(self.ttl_ms() * 2)
            .invoke_async(&mut c)
            .await
            .map_err(redis_error)?;
        if taken == 1 {
            self.lock().live.insert(conn.to_owned(), key.to_owned());
        }
        Ok(taken == 1)
    }

    fn release(&self, key: &str, conn: &str) {
        let mut local = self.lock();
        if local.live.remove(conn).is_some() {
            local.released.push((key.to_owned(), conn.to_owned()));
            drop(local);
            self.released.notify_one();
        }
    }

    async fn take_token(&self, key: &str, rate: f64, burst: f64) -> Result<Option<f64>> {
        let mut c = self.conn.clone();
        let wait_ms: i64 = self
            .bucket
            .key(self.rate_key(key))
            .arg(rate)
            .arg(burst)
            .arg(now_ms())
            .invoke_async(&mut c)
            .await
            .map_err(redis_error)?;
        Ok((wait_ms >= 0).then(|| wait_ms as f64 / 1000.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Limits;
    use crate::Error;

    async fn nodes(n: usize, ttl: Duration) -> Option<(String, Vec<Arc<RedisLimits>>)> {
        if !crate::testing::redis::ensure().await {
            return None;
        }
        let prefix = format!("tw-test-{}:", ulid::Ulid::generate());
        let url = crate::testing::redis::url();
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(RedisLimits::connect(&url, &prefix, ttl).await.unwrap());
        }
        Some((prefix, out))
    }

    #[tokio::test]
    async fn connections_count_across_nodes_and_a_closed_one_frees_its_slot() {
        let Some((prefix, cluster)) = nodes(3, Duration::from_secs(30)).await else {
            return;
        };
        let limits: Vec<Limits> = cluster
            .iter()
            .map(|c| Limits::new(3, 100, 100).with_cluster(c.clone()))
            .collect();
        let mut held = Vec::new();
        for l in &limits {
            held.push(l.connect("ada").await.unwrap());
        }
        for l in &limits {
            assert!(matches!(
                l.connect("ada").await.err(),
                Some(Error::TooManyConnections(3))
            ));
        }
        assert!(limits[0].connect("bob").await.is_ok(), "keys are apart");
        held.pop();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let again = limits[0].connect("ada").await;
        assert!(again.is_ok(), "the released slot is free on another node");
        crate::testing::redis::clean(&prefix).await;
    }

    #[tokio::test]
    async fn a_silent_node_s_slots_run_out() {
        let Some((prefix, cluster)) = nodes(2, Duration::from_millis(600)).await else {
            return;
        };
        let (a, b) = (&cluster[0], &cluster[1]);
        assert!(a.connect("ada", "c1", 1).await.unwrap());
        assert!(!b.connect("ada", "c2", 1).await.unwrap());
        // b keeps refreshing its own; a's slot, if a died, would run out: simulate by taking
        // it out of a's live set (a stops refreshing it) without releasing it.
        a.lock().live.clear();
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert!(b.connect("ada", "c2", 1).await.unwrap());
        // Held by a live node, a slot does not run out.
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert!(!a.connect("ada", "c3", 1).await.unwrap());
        crate::testing::redis::clean(&prefix).await;
    }

    #[tokio::test]
    async fn the_write_rate_counts_across_nodes() {
        let Some((prefix, cluster)) = nodes(3, Duration::from_secs(30)).await else {
            return;
        };
        let limits: Vec<Limits> = cluster
            .iter()
            .map(|c| Limits::new(10, 1, 4).with_cluster(c.clone()))
            .collect();
        let mut ok = 0;
        for round in 0..3 {
            for l in &limits {
                if l.check_write("ada").await.is_ok() {
                    ok += 1;
                }
                let _ = round;
            }
        }
        assert_eq!(ok, 4, "a burst of 4 across the cluster, not 4 per node");
        match limits[2].check_write("ada").await {
            Err(Error::RateLimited { retry_after }) => assert_eq!(retry_after, 1),
            other => panic!("{other:?}"),
        }
        crate::testing::redis::clean(&prefix).await;
    }
}
