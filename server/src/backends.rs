//! The backends a configuration asks for, opened in one place: the store by the database
//! URL's scheme, the Redis bus, presence and ticket ledger with `--redis`, the in-process
//! ones without. A backend whose Cargo feature is off is a clear configuration error.
//!
//! ```text
//! --database sqlite://tidewire.db   → store::sqlite   (feature `sqlite`)
//! --database postgres://…           → store::postgres (feature `postgres`)
//! --redis redis://…                 → bus::redis, presence::redis, auth::ledger,
//!                                      limits::redis (feature `redis`)
//! --redis redis+cluster://h1,h2,…    → the same on a Redis Cluster (sharded pub/sub)
//! ```

use std::sync::Arc;
use std::time::Duration;

use crate::auth::Auth;
use crate::bus::{memory::MemoryBus, Bus};
use crate::presence::{memory::MemoryPresence, Presence};
use crate::store::Retention;
use crate::{Config, Error, Result, Store};

/// The error for a backend this build leaves out.
#[cfg(not(all(feature = "sqlite", feature = "postgres", feature = "redis")))]
fn not_built(what: &str, feature: &str) -> Error {
    Error::Config(format!(
        "{what} is not built into this server: enable the `{feature}` feature of tidewire-server"
    ))
}

/// The store, bus and presence of `config`.
pub async fn open(config: &Config) -> Result<(Arc<dyn Store>, Arc<dyn Bus>, Arc<dyn Presence>)> {
    let store = open_store(config).await?;
    let (bus, presence) = open_fan_out(config).await?;
    Ok((store, bus, presence))
}

async fn open_store(config: &Config) -> Result<Arc<dyn Store>> {
    let db = config.database.as_str();
    let retention = Retention {
        events: config.retention_events.max(1),
        secs: config.retention_secs,
        idempotency_secs: config.idempotency_ttl_secs,
    };
    if db.starts_with("postgres://") || db.starts_with("postgresql://") {
        #[cfg(feature = "postgres")]
        return Ok(Arc::new(
            crate::store::postgres::PostgresStore::open(db, retention).await?,
        ));
        #[cfg(not(feature = "postgres"))]
        return Err(not_built("the PostgreSQL store", "postgres"));
    }
    if db.starts_with("sqlite:") {
        #[cfg(feature = "sqlite")]
        return Ok(Arc::new(
            crate::store::sqlite::SqliteStore::open(db, retention).await?,
        ));
        #[cfg(not(feature = "sqlite"))]
        return Err(not_built("the SQLite store", "sqlite"));
    }
    let _ = retention;
    Err(Error::Config(format!(
        "unknown database URL `{db}`: use sqlite://path, sqlite::memory: or postgres://…"
    )))
}

/// Redis key names put the room (or client) in a `{…}` hash tag, so the prefix must not
/// hold braces of its own.
fn check_prefix(config: &Config) -> Result<()> {
    if config.redis.is_some() && config.redis_prefix.contains(['{', '}']) {
        return Err(Error::Config(format!(
            "--redis-prefix `{}` must not contain `{{` or `}}` (they would pick the Redis Cluster slot)",
            config.redis_prefix
        )));
    }
    Ok(())
}

/// The cluster-wide limits with `--redis`; none without.
pub async fn open_limits(config: &Config) -> Result<Option<Arc<dyn crate::limits::Cluster>>> {
    match config.redis.as_deref() {
        #[cfg(feature = "redis")]
        Some(url) => Ok(Some(
            crate::limits::redis::RedisLimits::connect(
                url,
                &config.redis_prefix,
                Duration::from_millis(config.cluster_limits_ttl_ms),
            )
            .await?,
        )),
        #[cfg(not(feature = "redis"))]
        Some(_) => Err(not_built("the Redis limits", "redis")),
        None => Ok(None),
    }
}

async fn open_fan_out(config: &Config) -> Result<(Arc<dyn Bus>, Arc<dyn Presence>)> {
    let grace = Duration::from_millis(config.presence_grace_ms);
    let ttl = config.idle_timeout() + grace;
    check_prefix(config)?;
    match config.redis.as_deref() {
        #[cfg(feature = "redis")]
        Some(url) => Ok((
            Arc::new(
                crate::bus::redis::RedisBus::connect(
                    url,
                    &config.redis_prefix,
                    config.bus_drop_every,
                )
                .await?,
            ),
            Arc::new(
                crate::presence::redis::RedisPresence::connect(
                    url,
                    &config.redis_prefix,
                    grace,
                    ttl,
                )
                .await?,
            ),
        )),
        #[cfg(not(feature = "redis"))]
        Some(_) => Err(not_built("the Redis bus", "redis")),
        None => Ok((
            Arc::new(MemoryBus::new()),
            Arc::new(MemoryPresence::new(grace, ttl)),
        )),
    }
}

/// JWT auth when a secret is configured; tickets single-use across nodes through Redis with
/// `--redis`.
pub async fn open_auth(config: &Config) -> Result<Option<Arc<Auth>>> {
    match (config.jwt_secret.as_deref(), config.redis.as_deref()) {
        (Some(""), _) => Err(Error::Config("--jwt-secret must not be empty".into())),
        (Some(secret), None) => Ok(Some(Arc::new(Auth::new(secret)))),
        #[cfg(feature = "redis")]
        (Some(secret), Some(url)) => {
            let ledger =
                crate::auth::ledger::RedisLedger::connect(url, &config.redis_prefix).await?;
            Ok(Some(Arc::new(Auth::with_ledger(secret, Arc::new(ledger)))))
        }
        #[cfg(not(feature = "redis"))]
        (Some(_), Some(_)) => Err(not_built("the Redis ticket ledger", "redis")),
        (None, _) => Ok(None),
    }
}
