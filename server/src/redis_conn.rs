//! The Redis connection code the Redis bus, presence and ticket ledger share: one way to
//! open a client and its auto-reconnecting connection manager, and one mapping of Redis
//! errors to the crate's error.
//!
//! ```no_run
//! # async fn f() -> tidewire_server::Result<()> {
//! let (_client, _manager) = tidewire_server::redis_conn::connect_manager("redis://127.0.0.1/").await?;
//! # Ok(()) }
//! ```

use std::time::Duration;

use redis::aio::ConnectionManager;

use crate::{Error, Result};

/// A redis error as the crate's error.
pub fn redis_error(e: redis::RedisError) -> Error {
    Error::Internal(format!("redis: {e}"))
}

/// A client and its auto-reconnecting connection manager, tuned to fail fast while Redis is
/// away (a write must not wait on a lossy bus) and to come back quickly.
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
