//! The Redis connection code the Redis bus, presence, limits and ticket ledger share: one way
//! to read `--redis` (a single Redis or a Redis Cluster), to open a connection to it, and one
//! mapping of Redis errors to the crate's error.
//!
//! `--redis` is either one URL (`redis://host:6379`: a single Redis, the default) or a
//! **Redis Cluster** given by its seed nodes, in either spelling:
//!
//! ```text
//! redis://10.0.0.1:6379                              one Redis
//! redis://10.0.0.1:7000,redis://10.0.0.2:7000        a cluster (comma-separated seed URLs)
//! redis+cluster://10.0.0.1:7000,10.0.0.2:7000        a cluster (one scheme, comma-separated hosts)
//! ```
//!
//! A cluster client learns every shard from any seed, follows `MOVED`/`ASK` redirects and
//! reconnects on its own.
//!
//! ```no_run
//! # async fn f() -> tidewire_server::Result<()> {
//! use tidewire_server::redis_conn::{connect, Topology};
//! assert!(matches!(Topology::parse("redis+cluster://127.0.0.1:7000,127.0.0.1:7001")?, Topology::Cluster(_)));
//! let mut conn = connect("redis://127.0.0.1/").await?;
//! let _: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
//! # Ok(()) }
//! ```

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::{Error, Result};

/// A redis error as the crate's error.
pub fn redis_error(e: redis::RedisError) -> Error {
    Error::Internal(format!("redis: {e}"))
}

/// What `--redis` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// One Redis (`redis://…` or `rediss://…`).
    Single(String),
    /// A Redis Cluster, by its seed node URLs.
    Cluster(Vec<String>),
}

impl Topology {
    /// Reads a `--redis` value: one URL, several comma-separated URLs, or
    /// `redis+cluster://host:port,host:port`.
    pub fn parse(spec: &str) -> Result<Topology> {
        let bad = |why: &str| Error::Config(format!("bad --redis `{spec}`: {why}"));
        let spec = spec.trim();
        if spec.is_empty() {
            return Err(bad("empty"));
        }
        let seeds: Vec<String> = if let Some(hosts) = spec.strip_prefix("redis+cluster://") {
            hosts
                .split(',')
                .map(|h| format!("redis://{}", h.trim()))
                .collect()
        } else if spec.contains(',') {
            spec.split(',').map(|u| u.trim().to_owned()).collect()
        } else {
            redis::Client::open(spec).map_err(|e| bad(&e.to_string()))?;
            return Ok(Topology::Single(spec.to_owned()));
        };
        for seed in &seeds {
            if seed == "redis://" || seed.is_empty() {
                return Err(bad("an empty seed address"));
            }
            redis::Client::open(seed.as_str()).map_err(|e| bad(&format!("{seed}: {e}")))?;
        }
        Ok(Topology::Cluster(seeds))
    }

    /// Whether it is a cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Topology::Cluster(_))
    }
}

/// A cluster client (for the connection that subscribes, which needs its own push sender).
pub fn cluster_builder(seeds: &[String]) -> redis::cluster::ClusterClientBuilder {
    redis::cluster::ClusterClientBuilder::new(seeds.to_vec())
        .connection_timeout(Duration::from_secs(1))
        .response_timeout(Duration::from_secs(1))
        .retries(2)
}

/// A connection to a single Redis or to a cluster; cheap to clone, reconnects on its own.
#[derive(Clone)]
pub enum Conn {
    /// One Redis.
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Opens a connection to what `spec` (a `--redis` value) names.
pub async fn connect(spec: &str) -> Result<Conn> {
    match Topology::parse(spec)? {
        Topology::Single(url) => Ok(Conn::Single(connect_manager(&url).await?.1)),
        Topology::Cluster(seeds) => {
            let client = cluster_builder(&seeds)
                .build()
                .map_err(|e| Error::Config(format!("bad Redis Cluster `{spec}`: {e}")))?;
            let conn = tokio::time::timeout(Duration::from_secs(10), client.get_async_connection())
                .await
                .map_err(|_| Error::Config(format!("Redis Cluster `{spec}` did not answer")))?
                .map_err(redis_error)?;
            Ok(Conn::Cluster(conn))
        }
    }
}

/// A client and its auto-reconnecting connection manager (single Redis), tuned to fail fast
/// while Redis is away (a write must not wait on a lossy bus) and to come back quickly.
pub async fn connect_manager(url: &str) -> Result<(redis::Client, ConnectionManager)> {
    let client = redis::Client::open(url)
        .map_err(|e| Error::Config(format!("bad Redis URL `{url}`: {e}")))?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(1)))
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500));
    let manager = tokio::time::timeout(
        Duration::from_secs(10),
        client.get_connection_manager_with_config(config),
    )
    .await
    .map_err(|_| Error::Config(format!("Redis at `{url}` did not answer")))?
    .map_err(redis_error)?;
    Ok((client, manager))
}

/// Runs `commands` (each with the key it routes by) for their effect, pipelined: one
/// pipeline of up to 1000 on a single Redis; on a cluster one pipeline per hash slot (a
/// cluster pipeline must stay in one slot), 16 at a time. Replies are ignored.
pub async fn run_all(conn: &Conn, commands: Vec<(String, Cmd)>) -> Result<()> {
    use futures::{StreamExt, TryStreamExt};
    let groups: Vec<Vec<Cmd>> = match conn {
        Conn::Single(_) => {
            let mut all: Vec<Cmd> = commands.into_iter().map(|(_, c)| c).collect();
            let mut groups = Vec::new();
            while !all.is_empty() {
                let rest = all.split_off(all.len().min(1000));
                groups.push(std::mem::replace(&mut all, rest));
            }
            groups
        }
        Conn::Cluster(_) => {
            let mut by_slot: std::collections::HashMap<u16, Vec<Cmd>> =
                std::collections::HashMap::new();
            for (key, cmd) in commands {
                by_slot.entry(slot(&key)).or_default().push(cmd);
            }
            by_slot.into_values().collect()
        }
    };
    futures::stream::iter(groups)
        .map(|cmds| {
            let mut c = conn.clone();
            async move {
                let mut pipe = redis::pipe();
                for cmd in cmds {
                    pipe.add_command(cmd).ignore();
                }
                pipe.query_async::<()>(&mut c).await.map_err(redis_error)
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// The Redis Cluster hash slot of `key` (CRC16 of the hash tag, or of the key, mod 16384):
/// commands that name several keys or channels must keep them in one slot.
pub fn slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &bytes[open + 1..];
            rest.iter()
                .position(|&b| b == b'}')
                .filter(|&close| close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(bytes);
    crc16_xmodem(tagged) % 16384
}

fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_redis_flag_reads_one_redis_or_a_cluster() {
        assert_eq!(
            Topology::parse("redis://127.0.0.1:6379").unwrap(),
            Topology::Single("redis://127.0.0.1:6379".into())
        );
        assert_eq!(
            Topology::parse("redis+cluster://127.0.0.1:7000, 127.0.0.1:7001").unwrap(),
            Topology::Cluster(vec![
                "redis://127.0.0.1:7000".into(),
                "redis://127.0.0.1:7001".into()
            ])
        );
        assert!(Topology::parse("redis://a:1,redis://b:2")
            .unwrap()
            .is_cluster());
        for bad in ["", "nope", "redis+cluster://", "redis://a:1,"] {
            assert!(
                matches!(Topology::parse(bad), Err(Error::Config(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT`.
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("123456789"), 12739);
        assert_eq!(slot("a{foo}b"), slot("foo"));
        assert_eq!(slot("{}x"), slot("{}x"));
        assert_ne!(slot("{}foo"), slot("foo"));
    }
}
