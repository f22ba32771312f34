//! # tidewire-server
//!
//! A complete real-time backend in one process: durable rooms (SQLite), live fan-out over
//! SSE, WebSocket and long-poll with exact resume, presence, limits, graceful shutdown and
//! metrics. It is an axum [`Router`](axum::Router::new) you can mount in your own app, and the
//! `tidewire` binary (`tidewire serve`).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = tidewire_server::Config::default();
//! config.database = "sqlite::memory:".into();
//! let server = tidewire_server::Server::new(config).await?;
//! let app = axum::Router::new().nest("/realtime", server.router());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! Architecture: [`store`] (durable log + items) → [`service`] (write path: store, then
//! publish) → [`bus`] → [`hub`] (fan-out to local connections) → [`transport`] (one bounded
//! queue per connection, drained by SSE, WebSocket or long-poll). [`presence`] is ephemeral
//! state; [`limits`], [`identity`] and [`shutdown`] are cross-cutting.
//!
//! The app's own PostgreSQL: `--outbox postgres://…` starts the [`outbox`] consumer, which
//! appends what the app's committed transactions published (`docs/outbox.md`).
//!
//! Several nodes: `--database postgres://…` selects [`store::postgres`] and `--redis redis://…`
//! the Redis [`bus`] and [`presence`] (see `docs/scaling.md`); without them a node runs on
//! SQLite with the in-process bus.

pub mod auth;
pub mod bus;
pub mod config;
pub mod error;
pub mod hub;
pub mod identity;
pub mod limits;
pub mod metrics;
pub mod outbox;
pub mod presence;
pub mod routes;
pub mod serve;
pub mod service;
pub mod shutdown;
pub mod store;
#[cfg(test)]
mod testing;
pub mod transport;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;

pub use config::Config;
pub use error::{Error, Result};
pub use store::Store;

use crate::bus::redis::RedisBus;
use crate::bus::{memory::MemoryBus, Bus};
use crate::hub::Hub;
use crate::limits::Limits;
use crate::presence::memory::MemoryPresence;
use crate::presence::{redis::RedisPresence, Presence};
use crate::service::Service;
use crate::shutdown::Shutdown;
use crate::store::{postgres::PostgresStore, sqlite::SqliteStore, Retention};

/// Everything a request handler needs, shared by all connections.
pub struct Shared {
    /// The configuration.
    pub config: Config,
    /// The write path and backends (shared with the outbox consumer).
    pub service: Arc<Service>,
    /// Local fan-out.
    pub hub: Arc<Hub>,
    /// Per-client limits.
    pub limits: Limits,
    /// The draining flag.
    pub shutdown: Shutdown,
    /// The metrics page.
    pub metrics: PrometheusHandle,
    /// JWT auth, when a secret is configured (`None`: open access).
    pub auth: Option<Arc<auth::Auth>>,
    /// Backend API keys (`--api-key`), accepted with or without JWT auth.
    pub api_keys: auth::api_key::ApiKeys,
    /// Whether the app's outbox database answers (`--outbox`; `None` without it).
    pub outbox: Option<outbox::Health>,
}

/// The state type of every route.
pub type AppState = Arc<Shared>;

/// A configured server: backends opened, background tasks running.
#[derive(Clone)]
pub struct Server {
    shared: AppState,
}

/// The store, bus and presence the configuration asks for: SQLite or PostgreSQL by the
/// database URL; Redis bus and presence with `--redis`, in-process ones without.
async fn open_backends(
    config: &Config,
) -> Result<(Arc<dyn Store>, Arc<dyn Bus>, Arc<dyn Presence>)> {
    let db = config.database.as_str();
    let retention = Retention {
        events: config.retention_events.max(1),
        secs: config.retention_secs,
        idempotency_secs: config.idempotency_ttl_secs,
    };
    let store: Arc<dyn Store> = if db.starts_with("postgres://") || db.starts_with("postgresql://")
    {
        Arc::new(PostgresStore::open(db, retention).await?)
    } else if db.starts_with("sqlite:") {
        Arc::new(SqliteStore::open(db, retention).await?)
    } else {
        return Err(Error::Config(format!(
            "unknown database URL `{db}`: use sqlite://path, sqlite::memory: or postgres://…"
        )));
    };
    let grace = Duration::from_millis(config.presence_grace_ms);
    let ttl = config.idle_timeout() + grace;
    let (bus, presence): (Arc<dyn Bus>, Arc<dyn Presence>) = match config.redis.as_deref() {
        Some(url) => (
            Arc::new(RedisBus::connect(url, &config.redis_prefix, config.bus_drop_every).await?),
            Arc::new(RedisPresence::connect(url, &config.redis_prefix, grace, ttl).await?),
        ),
        None => (
            Arc::new(MemoryBus::new()),
            Arc::new(MemoryPresence::new(grace, ttl)),
        ),
    };
    Ok((store, bus, presence))
}

/// With a lossy bus, a room whose *last* event was lost has no later event to reveal the gap:
/// every second, compare each locally followed room's head in the store with what the hub
/// delivered, and deliver the head (the hub fills the gap before it from the store).
fn spawn_head_check(hub: std::sync::Weak<Hub>, store: Arc<dyn Store>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let Some(hub) = hub.upgrade() else { return };
            for (room, last) in hub.followed() {
                let head = match store.head(&room).await {
                    Ok(h) => h,
                    Err(err) => {
                        tracing::warn!(%room, %err, "head check");
                        continue;
                    }
                };
                if head == 0 || last.is_some_and(|l| l >= head) {
                    continue;
                }
                match store.read(&room, head - 1, 1).await {
                    Ok(events) => {
                        for ev in events {
                            hub.deliver(bus::BusMessage::durable(&room, ev.seq, ev.json.into()))
                                .await;
                        }
                    }
                    Err(err) => tracing::warn!(%room, %err, "head check"),
                }
            }
        }
    });
}

impl Server {
    /// Opens the store (creating and migrating it), starts the hub, the presence reaper and
    /// retention. Must run inside a Tokio runtime.
    pub async fn new(config: Config) -> Result<Server> {
        let auth = match (config.jwt_secret.as_deref(), config.redis.as_deref()) {
            (Some(""), _) => return Err(Error::Config("--jwt-secret must not be empty".into())),
            (Some(secret), None) => Some(Arc::new(auth::Auth::new(secret))),
            (Some(secret), Some(url)) => {
                let ledger = auth::ledger::RedisLedger::connect(url, &config.redis_prefix).await?;
                Some(Arc::new(auth::Auth::with_ledger(secret, Arc::new(ledger))))
            }
            (None, _) => None,
        };
        let api_keys = auth::api_key::ApiKeys::new(&config.api_key)?;
        let (store, bus, presence) = open_backends(&config).await?;
        let hub = Hub::new(store.clone());
        tokio::spawn(hub.clone().run(bus.subscribe()));
        if config.redis.is_some() {
            spawn_head_check(Arc::downgrade(&hub), store.clone());
        }
        let service = Arc::new(Service::new(store, bus, presence));
        let outbox = outbox::spawn(&config, &service).await?;
        let shared = Arc::new(Shared {
            limits: Limits::new(
                config.max_connections_per_client,
                config.write_rate,
                config.write_burst,
            ),
            shutdown: Shutdown::new(config.drain_window()),
            metrics: metrics::install(),
            auth,
            api_keys,
            outbox,
            service,
            hub,
            config,
        });
        spawn_maintenance(Arc::downgrade(&shared));
        Ok(Server { shared })
    }

    /// The routes, ready to serve or to mount. Serve with
    /// `into_make_service_with_connect_info::<SocketAddr>()` so limits are per peer address.
    pub fn router(&self) -> Router {
        routes::router(self.shared.clone())
    }

    /// Starts draining: `/healthz` answers 503, every connection is told to reconnect.
    pub fn begin_shutdown(&self) {
        self.shared.shutdown.begin();
    }

    /// The shared state (for embedding and tests).
    pub fn state(&self) -> &AppState {
        &self.shared
    }
}

/// Builds a server and answers its router.
pub async fn router(config: Config) -> Result<Router> {
    Ok(Server::new(config).await?.router())
}

fn spawn_maintenance(shared: std::sync::Weak<Shared>) {
    tokio::spawn(async move {
        let mut reap = tokio::time::interval(Duration::from_millis(250));
        let mut ticks: u64 = 0;
        loop {
            reap.tick().await;
            let Some(s) = shared.upgrade() else { return };
            if let Err(err) = s.service.reap_presence().await {
                tracing::warn!(%err, "presence reaper");
            }
            // Retention by age, once a minute (and at start).
            if ticks.is_multiple_of(240) {
                let cutoff = store::now()
                    .1
                    .saturating_sub((s.config.retention_secs as i64).saturating_mul(1000));
                match s.service.store.trim_expired(cutoff).await {
                    Ok(n) if n > 0 => tracing::info!(removed = n, "retention trimmed events"),
                    Ok(_) => {}
                    Err(err) => tracing::warn!(%err, "retention"),
                }
            }
            ticks += 1;
        }
    });
}
